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
