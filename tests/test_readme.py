"""The README as a newcomer meets it: short, its links resolve, and its code blocks run as written.

Python blocks run in a fresh interpreter from a folder outside the repository (the project on ``PYTHONPATH``
stands for ``pip install -e .``); the API block talks to an app served around tiny models. Shell blocks: the
bundled-profile command runs as written, a Hub-profile command fails fast and clean offline, and every flag of
every other command is one its ``--help`` lists. ``vqa-llm`` (the console script) is run as ``python -m
vqa_llm``, the entry point it names.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from robustness_testing import serve_pipeline, tiny_pipeline_fixtures
from tiny_models import single_thread_fixture

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
APP_URL = "http://127.0.0.1:7860/"
#: the two commands: one runs the suite that holds this test, the other serves until stopped
NOT_RUN = {"bash scripts/app.sh", "bash scripts/test.sh"}

argv, pipe = tiny_pipeline_fixtures(use_llm=True)
_single_thread = single_thread_fixture()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)


def shell_commands() -> list[str]:
    """The README's shell commands, continuation lines joined, comments dropped."""
    commands = []
    for block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def offline_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
            "PYTHONPATH": str(REPO), **extra}


def python_command(command: str) -> list[str]:
    """``python -m X ...``, ``vqa-llm ...`` or ``accelerate launch -m X ...`` as an argv for this interpreter."""
    words = shlex.split(command)
    if words[0] == "vqa-llm":
        return [sys.executable, "-m", "vqa_llm", *words[1:]]
    if words[:2] == ["accelerate", "launch"]:
        words = ["python", *words[2:]]
    assert words[0] == "python" and words[1] == "-m", f"README command of an unknown kind: {command}"
    return [sys.executable, *words[1:]]


def test_readme_is_at_most_15000_bytes():
    assert len(README.read_bytes()) <= 15_000


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", markdown, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_to_repository_files_resolve(page):
    text = page.read_text(encoding="utf-8")
    links = [link for link in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in link]
    assert links or page != README
    for link in links:
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.name}: link to missing {link}"
        assert REPO in target.parents, f"{page.name}: link outside the repository: {link}"
        if anchor:
            assert anchor in _anchors(target.read_text(encoding="utf-8")), f"{page.name}: no heading for {link}"


def test_readme_links_every_docs_page_and_docs_name_no_internal_targets():
    text = README.read_text(encoding="utf-8")
    assert DOCS, "docs/ holds no pages"
    for page in DOCS:
        assert f"docs/{page.name}" in text, f"README does not link docs/{page.name}"
    for page in [README, *DOCS]:
        assert not re.search(r"\btargets?\b", page.read_text(encoding="utf-8"), re.I), page.name


@pytest.mark.slow
def test_python_blocks_run_as_written_from_another_folder(tmp_path, pipe, argv):
    blocks = code_blocks("python")
    api = [b for b in blocks if APP_URL in b]
    assert len(api) == 1 and len(blocks) >= 2
    with serve_pipeline(pipe, argv) as (_demo, url):
        for i, block in enumerate(blocks):
            script = tmp_path / f"block{i}.py"
            script.write_text(block.replace(APP_URL, url), encoding="utf-8")
            proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=offline_env(),
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, f"README python block {i} failed:\n{block}\n{proc.stderr[-3000:]}"
            assert "Traceback" not in proc.stderr
            if block in api:
                assert "done" in proc.stdout.split()  # the streamed /answer reached its last stage
                # the tiny app has no VLE pretraining checkpoint: /itm answers with the reason, not a crash
                assert "need a VLE pretraining checkpoint" in proc.stdout
            else:
                assert "'answer'" in proc.stdout and "'score'" in proc.stdout


def cli_help(module: str, sub: list[str]) -> str:
    """The ``--help`` text of ``python -m module [sub]``, run as a reader runs it: in its own process (the
    suite's process has loaded many native libraries by then; a CLI's imports are checked on their own)."""
    proc = subprocess.run([sys.executable, "-m", module, *sub, "--help"], cwd=REPO, env=offline_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"python -m {module} {' '.join(sub)} --help failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_every_readme_command_is_known_and_its_flags_exist():
    commands = shell_commands()
    assert NOT_RUN <= set(commands)
    for command in sorted(set(commands) - NOT_RUN):
        words = python_command(command)
        sub = words[3:4] if len(words) > 3 and re.fullmatch(r"[a-z_]+", words[3]) else []
        text = cli_help(words[2], sub)
        for flag in (w.split("=")[0] for w in words if w.startswith("--")):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"{command}: no {flag}"


@pytest.mark.slow
def test_bundled_ask_runs_as_written_and_hub_ask_fails_fast_offline():
    asks = [c for c in shell_commands() if " ask " in f" {c} "]
    bundled = [c for c in asks if "--profile bundled" in c]
    hub = [c for c in asks if "--profile base" in c or "--profile large" in c]
    assert bundled and hub
    for command in bundled:
        proc = subprocess.run(python_command(command), cwd=REPO, env=offline_env(), capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
        assert proc.stdout.strip()
    for command in hub:
        proc = subprocess.run(python_command(command), cwd=REPO, env=offline_env(), capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2, f"{command}\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("Error:")
