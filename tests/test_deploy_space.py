"""``scripts/deploy_space.sh`` (issue 29): what a Space upload would send, offline.

The dry run runs through ``bash`` on a small git repository built here (text, binary, empty and >10 MiB files, an
untracked file and an ignored ``.venv``) and on this checkout; a bad OWNER/NAME exits 2; uncommitted changes and
Git LFS pointers refuse an upload before any network; the upload itself runs against a stand-in ``HfApi``. No test
reaches the Hub: ``HF_HUB_OFFLINE=1``, no ``HF_TOKEN`` and an empty ``HF_HOME`` (no saved login).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from script_modules import load_script

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("deploy_space.sh", "deploy_space.py")
LFS_POINTER = b"version https://git-lfs.github.com/spec"
MiB = 1024 * 1024


deploy_space = load_script("scripts/deploy_space.py")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user with no token, offline."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_TOKEN_PATH", "HF_OIDC_RESOURCE")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    return env


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false",
                           *args], cwd=root, capture_output=True, text=True, check=True).stdout


def _tracked(root: Path) -> set[str]:
    return {p for p in _git(root, "ls-files", "-z").split("\0") if p and (root / p).is_file()}


@pytest.fixture
def space_repo(tmp_path: Path) -> Path:
    """A small checkout holding the deploy scripts, one file of each upload mode, an untracked file and a .venv."""
    root = tmp_path / "space"
    (root / "scripts").mkdir(parents=True)
    for name in SCRIPTS:
        shutil.copy(REPO_ROOT / "scripts" / name, root / "scripts" / name)
    (root / ".gitignore").write_text(".venv/\n")
    (root / "app.py").write_text("import gradio\n")
    (root / "docs").mkdir()
    (root / "docs" / "notes.md").write_text("# Notes\n")
    (root / "weights.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(256)))
    (root / "big.txt").write_bytes(b"a" * (12 * MiB))  # text, but over 10 MiB
    (root / "empty.txt").write_bytes(b"")
    (root / "late-nul.txt").write_bytes(b"x" * 600 + b"\0")  # a NUL past the 512-byte sample the Hub sees
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "init")
    (root / "untracked.txt").write_text("not for the Space\n")
    venv_bin = root / ".venv" / "bin"  # ignored; runs this interpreter, as the checkout's .venv would
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (venv_bin / "python").chmod(0o755)
    (venv_bin / "secret.bin").write_bytes(b"\0" * 10)
    return root


def _deploy(root: Path, env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(root / "scripts" / "deploy_space.sh"), *args], cwd=cwd or root, env=env,
                          capture_output=True, text=True, timeout=120)


def _plan(stdout: str) -> tuple[dict[str, tuple[str, int]], dict[str, tuple[int, int]], str]:
    """The dry run's output: {path: (mode, size)} (each path once), {total|lfs/xet|regular: (files, bytes)}, URL."""
    files: dict[str, tuple[str, int]] = {}
    totals: dict[str, tuple[int, int]] = {}
    url = ""
    for line in stdout.splitlines():
        if line.startswith("space: "):
            url = line.removeprefix("space: ")
        elif line.startswith(("total: ", "lfs/xet: ", "regular: ")):
            label, rest = line.split(": ", 1)
            count, size = rest.split(" files, ")
            totals[label] = (int(count), int(size.split(" bytes")[0]))
        else:
            mode, size, path = line.split(maxsplit=2)
            assert path not in files, f"{path} listed twice"
            files[path] = (mode, int(size))
    return files, totals, url


def _check_totals(root: Path, files: dict[str, tuple[str, int]], totals: dict[str, tuple[int, int]]) -> None:
    sizes = {path: (root / path).stat().st_size for path in files}
    assert {path: size for path, (_, size) in files.items()} == sizes
    assert totals["total"] == (len(files), sum(sizes.values()))
    for mode in ("lfs/xet", "regular"):
        group = [p for p, (m, _) in files.items() if m == mode]
        assert totals[mode] == (len(group), sum(sizes[p] for p in group))


@pytest.mark.parametrize("args", [["--dry-run"], []], ids=["dry-run", "no-token"])
def test_dry_run_lists_the_tracked_files_with_the_hubs_upload_modes(space_repo, env, args):
    out = _deploy(space_repo, env, "alice/vqa-demo", *args, cwd=space_repo / "docs")  # any current folder
    assert out.returncode == 0, out.stderr
    files, totals, url = _plan(out.stdout)
    assert set(files) == _tracked(space_repo) == {
        ".gitignore", "app.py", "docs/notes.md", "weights.safetensors", "big.txt", "empty.txt", "late-nul.txt",
        "scripts/deploy_space.sh", "scripts/deploy_space.py"}
    assert not any(p.startswith(".venv") or p == "untracked.txt" for p in files)
    modes = {path: mode for path, (mode, _) in files.items()}
    assert modes["weights.safetensors"] == modes["big.txt"] == "lfs/xet"
    assert {modes[p] for p in files if p not in ("weights.safetensors", "big.txt")} == {"regular"}
    _check_totals(space_repo, files, totals)
    assert totals["lfs/xet"][0] == 2
    assert url == "https://huggingface.co/spaces/alice/vqa-demo"
    assert ("no Hugging Face token" in out.stderr) == (not args)
    assert "Warning" not in out.stderr


def test_upload_mode_rule_at_its_edges():
    lfs = deploy_space.upload_mode_is_lfs
    assert not lfs(10 * MiB, b"a" * 512) and lfs(10 * MiB + 1, b"a" * 512)
    assert lfs(512, b"a" * 511 + b"\0") and not lfs(513, b"a" * 512 + b"\0")
    assert not lfs(0, b"")  # empty files always go as regular blobs


def test_dry_run_of_this_checkout(env):
    out = _deploy(REPO_ROOT, env, "alice/vle-vqa-llm", "--dry-run", cwd=REPO_ROOT / "tests")
    assert out.returncode == 0, out.stderr
    files, totals, url = _plan(out.stdout)
    assert set(files) == _tracked(REPO_ROOT)
    assert not any(p.startswith((".venv/", ".git/")) or "__pycache__" in p for p in files)
    for path, (mode, _) in files.items():
        name = Path(path).name
        if name.endswith((".safetensors", ".png")) or name == "spm.model":
            assert mode == "lfs/xet", path
        elif name.endswith((".py", ".md", ".json", ".txt")):
            assert mode == "regular", path
    assert sum(1 for p in files if p.endswith(".safetensors")) >= 5
    _check_totals(REPO_ROOT, files, totals)
    assert url == "https://huggingface.co/spaces/alice/vle-vqa-llm"
    assert "LFS pointer" not in out.stderr and "missing" not in out.stderr


def test_no_tracked_file_of_this_checkout_is_a_git_lfs_pointer():
    pointers = []
    for path in _tracked(REPO_ROOT):
        with open(REPO_ROOT / path, "rb") as fh:
            if fh.read(len(LFS_POINTER)) == LFS_POINTER:
                pointers.append(path)
    assert pointers == [], "LFS belongs to the upload only: commit these files' content, not pointers"


@pytest.mark.parametrize("repo_id", [None, "", "alice", "alice/", "/demo", "a/b/c", "alice/my demo", "-alice/demo",
                                     "alice/demo.", "alice/de..mo", "alice/de--mo", "alice/" + "x" * 97])
def test_a_malformed_space_name_exits_2_with_one_line(space_repo, env, repo_id):
    out = _deploy(space_repo, env, *([] if repo_id is None else [repo_id]), "--dry-run")
    assert out.returncode == 2
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and "OWNER/NAME" in out.stderr


def test_uncommitted_changes_refuse_an_upload_and_only_warn_in_a_dry_run(space_repo, env):
    (space_repo / "app.py").write_text("import gradio  # edited\n")
    dry = _deploy(space_repo, env, "alice/demo", "--dry-run")
    assert dry.returncode == 0 and "Warning" in dry.stderr and "app.py" in dry.stderr
    with_token = {**env, "HF_TOKEN": "hf_not_a_real_token"}
    refused = _deploy(space_repo, with_token, "alice/demo")
    assert refused.returncode == 1 and "uncommitted changes (app.py)" in refused.stderr and refused.stdout == ""
    allowed = _deploy(space_repo, with_token, "alice/demo", "--allow-dirty")  # passes that check, stops offline
    assert allowed.returncode == 1 and "HF_HUB_OFFLINE" in allowed.stderr and "uncommitted" not in allowed.stderr


def test_a_tracked_git_lfs_pointer_refuses_an_upload(space_repo, env):
    (space_repo / "model.bin").write_bytes(LFS_POINTER + b"/v1\noid sha256:" + b"0" * 64 + b"\nsize 12\n")
    _git(space_repo, "add", "model.bin")
    _git(space_repo, "commit", "-q", "-m", "pointer")
    out = _deploy(space_repo, {**env, "HF_TOKEN": "hf_not_a_real_token"}, "alice/demo")
    assert out.returncode == 1 and "Git LFS pointers" in out.stderr and "model.bin" in out.stderr


def test_upload_creates_the_gradio_space_and_commits_exactly_the_tracked_files(space_repo, monkeypatch):
    import huggingface_hub

    calls: dict[str, object] = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, **kwargs):
            calls["create_repo"] = (repo_id, kwargs)

        def create_commit(self, repo_id, operations, **kwargs):
            calls["create_commit"] = (repo_id, list(operations), kwargs)
            return type("CommitInfo", (), {"commit_url": "https://hub.example/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    files, missing = deploy_space.tracked_files(space_repo)
    assert missing == []
    url = deploy_space.upload(space_repo, "alice/demo", files, "hf_not_a_real_token")
    assert url == "https://hub.example/commit/1" and calls["token"] == "hf_not_a_real_token"
    assert calls["create_repo"] == ("alice/demo", {"repo_type": "space", "space_sdk": "gradio", "exist_ok": True})
    repo_id, operations, kwargs = calls["create_commit"]
    assert repo_id == "alice/demo" and kwargs["repo_type"] == "space"
    assert all(isinstance(op, huggingface_hub.CommitOperationAdd) for op in operations)
    assert {op.path_in_repo for op in operations} == _tracked(space_repo)
    assert all(Path(op.path_or_fileobj) == space_repo / op.path_in_repo for op in operations)
