"""The example images and questions the app's Ask tab offers (``assets/examples/examples.json``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from project_base.paths import REPO_ROOT

logger = logging.getLogger(__name__)

EXAMPLES_DIR = REPO_ROOT / "assets" / "examples"
EXAMPLES_FILE = "examples.json"


def load_examples(directory: str | Path = EXAMPLES_DIR) -> list[list[str]]:
    """``[[image_path, question], ...]`` from ``directory/examples.json``; ``[]`` when there is none.

    The file is a list of ``{"image": "file name relative to the folder", "question": "..."}`` objects (or
    ``{"examples": [...]}``). Entries whose image is missing or that are malformed are skipped with a warning,
    so a missing or half-written folder never stops the app.
    """
    path = Path(directory) / EXAMPLES_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        logger.warning("Ignoring the examples file %s: %s", path, exc)
        return []
    entries = data.get("examples", []) if isinstance(data, dict) else data
    examples: list[list[str]] = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) \
                or not isinstance(entry.get("question"), str):
            logger.warning("Ignoring a malformed example in %s: %r", path, entry)
            continue
        image = (Path(directory) / entry["image"]).resolve()
        if not image.is_file():
            logger.warning("Ignoring an example whose image is missing: %s", image)
            continue
        examples.append([str(image), entry["question"]])
    return examples
