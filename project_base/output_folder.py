"""The check of an output folder before a run does any work (evaluator, bundle build, training CLIs)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import BadSettingError


def check_output_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` as a Path; BadSettingError when it cannot be an output folder (a file is in its place or above
    it, or the nearest existing folder is not writable). Nothing is created: call it before any work starts."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise BadSettingError(f"{flag} {path} is a file, not a folder: choose a folder path.")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise BadSettingError(f"{flag} {path} lies under the file {existing}: choose a folder path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadSettingError(f"{flag} {path}: no permission to write in {existing}; choose another folder.")
    return path
