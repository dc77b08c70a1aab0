"""How files that the project writes for others (committed banks, build logs) name paths on this machine."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def portable_path(path_or_id: str | Path | None) -> str | None:
    """An existing path inside this repository as a repo-relative POSIX path, so that committed files name no
    machine's folders; Hub ids, other paths and ``None`` unchanged (as strings)."""
    if path_or_id is None or not str(path_or_id) or not Path(path_or_id).exists():
        return None if path_or_id is None else str(path_or_id)
    try:
        return Path(path_or_id).resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path_or_id)
