"""Upload this checkout's tracked files to a Hugging Face Space (the engine behind ``scripts/deploy_space.sh``).

    bash scripts/deploy_space.sh OWNER/NAME [--dry-run] [--allow-dirty]

Only ``git ls-files`` of the repository holding this script is sent (never untracked or ignored files such as
``.venv``), from the repository root whatever the current folder. Without ``--dry-run`` and with a token (``HF_TOKEN``
or ``huggingface_hub.get_token()``) the Space is created if missing (Gradio SDK) and the files go in one commit
through ``huggingface_hub``, which sends each file as a regular blob or through LFS/Xet as the Hub decides. Without a
token, or with ``--dry-run``, nothing touches the network: every file is listed with its size and the mode the Hub
will give it, then the totals. Uncommitted changes to tracked files refuse the upload unless ``--allow-dirty``; a
dry run only warns.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

SCRIPT_ROOT = Path(__file__).resolve().parents[1]
SPACES_URL = "https://huggingface.co/spaces"
# The Hub decides a file's upload mode from its size and a sample of its first bytes: huggingface_hub sends the first
# 512 bytes (lfs.UploadInfo.from_path) to the "preupload" endpoint, which answers "lfs" for a file over 10 MiB or a
# sample holding a NUL byte (binary), "regular" otherwise; empty files always go regular (_commit_api).
SAMPLE_BYTES = 512
LFS_SIZE = 10 * 1024 * 1024
LFS_POINTER = b"version https://git-lfs.github.com/spec"
# OWNER/NAME: Hub names of 1-96 characters among letters, digits, "_", "-" and ".", not starting or ending with "-"
# or ".", without "--" or "..".
_NAME = r"(?!.*(?:--|\.\.))[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
REPO_ID = re.compile(rf"{_NAME}/{_NAME}")


@dataclass(frozen=True)
class TrackedFile:
    """A tracked file as it will be uploaded: path from the repository root, size, upload mode."""

    path: str
    size: int
    lfs: bool
    lfs_pointer: bool

    @property
    def mode(self) -> str:
        return "lfs/xet" if self.lfs else "regular"


class DeployError(Exception):
    """A refusal with a one-line reason (exit status 1)."""


def _git(root: Path, *args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, check=True).stdout


def repo_root(start: Path = SCRIPT_ROOT) -> Path:
    """The top of the git checkout holding ``start``."""
    try:
        return Path(_git(start, "rev-parse", "--show-toplevel").decode().strip())
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        raise DeployError(f"{start} is not inside a git checkout (git rev-parse failed)") from exc


def upload_mode_is_lfs(size: int, head: bytes) -> bool:
    """The Hub's rule: LFS/Xet for a file over 10 MiB or with a NUL byte in its sample; empty files are regular."""
    return size > 0 and (size > LFS_SIZE or b"\0" in head[:SAMPLE_BYTES])


def tracked_files(root: Path) -> tuple[list[TrackedFile], list[str]]:
    """The tracked files present on disk (in git's order) and the tracked paths missing from the working tree.

    Submodules are left out; a tracked symlink that leads outside the checkout is refused.
    """
    files: list[TrackedFile] = []
    missing: list[str] = []
    seen: set[str] = set()
    for entry in _git(root, "ls-files", "-s", "-z").decode().split("\0"):
        if not entry:
            continue
        meta, path = entry.split("\t", 1)
        if meta.startswith("160000") or path in seen:  # a submodule (a commit id), or another stage of a conflict
            continue
        seen.add(path)
        full = root / path
        if full.is_symlink() and not full.resolve().is_relative_to(root.resolve()):
            raise DeployError(f"tracked symlink {path} leads outside the checkout")
        if not full.is_file():
            missing.append(path)
            continue
        with open(full, "rb") as fh:
            head = fh.read(max(SAMPLE_BYTES, len(LFS_POINTER)))
        size = full.stat().st_size
        files.append(TrackedFile(path, size, upload_mode_is_lfs(size, head), head.startswith(LFS_POINTER)))
    return files, missing


def dirty_paths(root: Path) -> list[str]:
    """Tracked paths with uncommitted changes (staged or not); untracked files do not count."""
    items = iter(_git(root, "status", "--porcelain", "-z", "--untracked-files=no").decode().split("\0"))
    paths = []
    for item in items:
        if len(item) > 3:
            paths.append(item[3:])
            if item[0] in "RC":  # a rename or copy: its source path follows
                next(items, None)
    return paths


def hub_ignored(root: Path) -> list[str]:
    """Tracked paths matched by the root ``.gitignore``: the Hub skips them when it receives that file."""
    if not (root / ".gitignore").is_file():
        return []
    out = _git(root, "ls-files", "-z", "--cached", "--ignored", "--exclude-from=.gitignore").decode()
    return [p for p in out.split("\0") if p]


def find_token() -> str | None:
    """``HF_TOKEN`` or the token ``huggingface_hub`` finds (login); None when there is none."""
    try:
        from huggingface_hub import get_token
    except ImportError:
        return os.environ.get("HF_TOKEN") or None
    return get_token()


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


def print_plan(files: list[TrackedFile], space_url: str) -> None:
    """One line per file (mode, size in bytes, path), then the totals and the Space's URL."""
    for f in files:
        print(f"{f.mode:<8} {f.size:>12} {f.path}")
    lfs = [f for f in files if f.lfs]
    regular = [f for f in files if not f.lfs]
    for label, group in (("total", files), ("lfs/xet", lfs), ("regular", regular)):
        size = sum(f.size for f in group)
        print(f"{label}: {len(group)} files, {size} bytes ({_mb(size)})")
    print(f"space: {space_url}")


def upload(root: Path, repo_id: str, files: list[TrackedFile], token: str) -> str:
    """Create the Space if missing (Gradio SDK) and commit the files to it; returns the commit's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    head = _git(root, "rev-parse", "--short", "HEAD").decode().strip()
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio", exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(root / f.path)) for f in files]
    info = api.create_commit(repo_id, operations, commit_message=f"Deploy {head}", repo_type="space")
    return info.commit_url


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"Error: {message} (usage: deploy_space.sh OWNER/NAME [--dry-run] [--allow-dirty])\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="deploy_space.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("repo_id", nargs="?", metavar="OWNER/NAME", help="the Space, e.g. alice/vle-vqa-llm")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded; no network")
    parser.add_argument("--allow-dirty", action="store_true", help="upload even with uncommitted changes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.repo_id or not REPO_ID.fullmatch(args.repo_id):
        got = f"got {args.repo_id!r}" if args.repo_id else "none given"
        print(f"Error: the Space must be OWNER/NAME (letters, digits, '_', '-', '.'; {got})", file=sys.stderr)
        return 2
    space_url = f"{SPACES_URL}/{args.repo_id}"
    try:
        root = repo_root()
        files, missing = tracked_files(root)
        dirty = dirty_paths(root)
    except DeployError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    token = None if args.dry_run else find_token()
    dry_run = args.dry_run or not token
    if not args.dry_run and not token:
        print("Note: no Hugging Face token (HF_TOKEN or `hf auth login`): dry run, nothing uploaded", file=sys.stderr)
    warnings: list[str] = []
    if missing:
        warnings.append(f"{len(missing)} tracked files are missing from the working tree and are left out "
                        f"({', '.join(missing[:5])})")
    ignored = hub_ignored(root)
    if ignored:
        warnings.append(f"{len(ignored)} tracked files match .gitignore and the Hub skips them "
                        f"({', '.join(ignored[:5])})")
    problems: list[str] = []
    if dirty and not args.allow_dirty:
        problems.append(f"{len(dirty)} tracked files have uncommitted changes ({', '.join(dirty[:5])}); "
                        "commit them or pass --allow-dirty")
    pointers = [f.path for f in files if f.lfs_pointer]
    if pointers:
        problems.append(f"{len(pointers)} tracked files are Git LFS pointers, not content ({', '.join(pointers[:5])})")
    if dry_run:
        print_plan(files, space_url)
        for message in warnings + problems:
            print(f"Warning: {message}", file=sys.stderr)
        return 0
    for message in warnings:
        print(f"Warning: {message}", file=sys.stderr)
    if problems:
        print(f"Error: {problems[0]}", file=sys.stderr)
        return 1
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("", "0", "false", "no"):
        print("Error: HF_HUB_OFFLINE is set; unset it to upload (or use --dry-run)", file=sys.stderr)
        return 1
    commit_url = upload(root, args.repo_id, files, token)
    print(f"uploaded {len(files)} files: {commit_url}")
    print(f"space: {space_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
