"""A local Hugging Face Hub cache folder for tests: repos look cached without any download."""

from __future__ import annotations

from pathlib import Path


def fake_hub_cache(root: Path, repos) -> Path:
    """A Hub cache folder in the huggingface_hub layout holding config.json + (empty) weights of ``repos``."""
    for repo in repos:
        folder = root / ("models--" + repo.replace("/", "--"))
        snapshot = folder / "snapshots" / "0123abcd"
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text("{}")
        (snapshot / "model.safetensors").write_bytes(b"")
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text("0123abcd")
    return root


#: the commit every :func:`add_hub_file` snapshot is filed under (40 hex digits, as the Hub names commits)
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def add_hub_file(root: Path, repo: str, filename: str, source: Path) -> Path:
    """Copy ``source`` into the Hub cache folder ``root`` as ``filename`` of ``repo`` (``refs/main`` pointing at
    :data:`FAKE_COMMIT`), where ``hf_hub_download`` finds it without a network; return the cached path."""
    folder = root / ("models--" + repo.replace("/", "--"))
    target = folder / "snapshots" / FAKE_COMMIT / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(Path(source).read_bytes())
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(FAKE_COMMIT)
    return target
