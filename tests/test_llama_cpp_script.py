"""``scripts/llama_cpp.sh``: the llama.cpp build runs once, in the background for the app, one build at a time.

Runs the real script in a scratch folder whose ``.venv/bin/python`` is a stand-in that records each pip call and
takes a moment, so no compiler is involved.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "pip $$" >> "$(dirname "$0")/../pip-calls"
  sleep 2
fi
exit 0
"""


def _scratch(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO_ROOT / "scripts" / "llama_cpp.sh", tmp_path / "scripts" / "llama_cpp.sh")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    return tmp_path


def _run(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VQA_LLM_SKIP_LLAMA_CPP"}
    return subprocess.run(["bash", str(root / "scripts" / "llama_cpp.sh"), *args], capture_output=True, text=True,
                          env=env, timeout=60, check=True)


def _pip_calls(root: Path) -> int:
    calls = root / ".venv" / "pip-calls"
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def _stamps(root: Path) -> list[Path]:
    return list((root / ".venv").glob(".llama-cpp-*"))


def test_background_build_returns_at_once_and_a_waiting_build_does_not_compile_again(tmp_path):
    root = _scratch(tmp_path)
    started = time.monotonic()
    out = _run(root, "--background")
    assert time.monotonic() - started < 1.5  # the stand-in pip alone takes 2 s
    assert "background" in out.stdout and "transformers" in out.stdout
    deadline = time.monotonic() + 20
    while _pip_calls(root) == 0 and time.monotonic() < deadline:  # the background build has begun
        time.sleep(0.05)
    out = _run(root)  # a foreground call (scripts/test.sh) meanwhile waits for it, then finds its stamp
    assert _pip_calls(root) == 1 and "Compiling" not in out.stdout
    assert [p.read_text().split()[0] for p in _stamps(root) if not p.name.endswith(".lock")] == ["ok"]
    _run(root)  # built: nothing to do
    assert _pip_calls(root) == 1


def test_foreground_build_compiles_once_and_skip_variable_skips(tmp_path):
    root = _scratch(tmp_path)
    env_skip = {**os.environ, "VQA_LLM_SKIP_LLAMA_CPP": "1"}
    subprocess.run(["bash", str(root / "scripts" / "llama_cpp.sh")], env=env_skip, check=True, timeout=60)
    assert _pip_calls(root) == 0
    out = _run(root)
    assert "built in" in out.stdout and _pip_calls(root) == 1
    _run(root)
    assert _pip_calls(root) == 1
