"""Faults around the pipeline: a failing or hanging LLM, an unreachable LLM server, broken model folders, and an
evaluation killed with SIGKILL.

* LLM faults (a backend that raises, one that hangs past its timeout and ignores it, an OpenAI-compatible
  endpoint on a closed port, and one that accepts the connection but never answers): the result still holds
  the caption and the VQA candidates, the answer falls back to the VQA top-1 and ``error`` says what happened —
  through ``run``, ``stream``, ``run_batch`` and, for the closed port, the app's ``/answer`` API.
* A model folder whose weights file is missing, garbage or cut short → ModelUnavailableError naming the file
  when the pipeline loads, and ``python -m vqa_llm ask`` exits with status 2 and no traceback.
* ``python -m vqa_llm.evaluate`` killed with SIGKILL after some batches are on disk, then ``--resume``: the
  predictions equal an uninterrupted run's (timings aside), none lost, none answered twice.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import easy_vqa
import pytest
from gradio_client import Client, handle_file

from app_testing import free_port
from llm import ChatLLM, OpenAIChatLLM
from robustness_testing import QUESTION, pipeline_like, profile_from_argv, serve_pipeline, tiny_pipeline_fixtures
from tiny_models import build_tiny_blip, build_tiny_chat_lm, single_thread_fixture
from tiny_vle import build_tiny_vle_vqa
from vqa_llm import ModelUnavailableError, VQALLMPipeline
from vqa_llm.cli import EXIT_USER_ERROR
from vqa_llm.cli import main as cli_main
from vqa_llm.evaluate import main as evaluate_main
from vqa_llm.evaluation.store import read_records

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 0.4  # the LLM timeout of the hanging cases


# ------------------------------------------------------------------------------------- fake LLMs
class RaisingLLM(ChatLLM):
    """A backend with a bug: every call raises."""

    model_id = "raising-llm"

    def _generate(self, messages, opts):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def _stream(self, messages, opts):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


class HangingLLM(ChatLLM):
    """A backend that ignores its timeout and blocks until released (a stuck server, a deadlock)."""

    model_id = "hanging-llm"

    def __init__(self):
        self.release = threading.Event()

    def _generate(self, messages, opts):
        self.release.wait(60)
        return "Answer: too late"

    def _stream(self, messages, opts):
        yield "Answer: "
        self.release.wait(60)
        yield "too late"


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never answers them."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.clients: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.clients.append(conn)

    def close(self):
        self.sock.close()
        for conn in self.clients:
            conn.close()


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused


# ----------------------------------------------------------------------------------------- fixtures
one_thread = single_thread_fixture()
argv, base = tiny_pipeline_fixtures(use_llm=False)


@pytest.fixture(scope="module")
def image():
    return easy_vqa.get_test_image_paths()[3]


@pytest.fixture
def hanging():
    llm = HangingLLM()
    yield llm
    llm.release.set()


@pytest.fixture
def silent():
    server = SilentServer()
    yield server
    server.close()


def faulty_llm(kind: str, hanging: HangingLLM, silent: SilentServer) -> ChatLLM:
    if kind == "raises":
        return RaisingLLM()
    if kind == "hangs":
        return hanging
    if kind == "refused":
        return OpenAIChatLLM(closed_port_url(), "some-model", max_retries=0)
    return OpenAIChatLLM(silent.url, "some-model", max_retries=0)  # "silent"


FAULTS = {
    "raises": "failed \\(RuntimeError: CUDA error",
    "hangs": f"did not answer within {TIMEOUT_S:g} s",
    "refused": "could not be reached",
    "silent": "did not answer within",
}


def assert_vqa_kept(result, message: str, top_k: int = 3) -> None:
    """The LLM failed, and the result says so, but lost nothing of the caption and the VQA answers."""
    assert result.caption and len(result.candidates) == top_k
    assert result.error and re.search(message, result.error), result.error
    assert result.llm_used and result.llm_fallback and not result.changed
    assert result.answer == result.vqa_answer == result.candidates[0][0]


# -------------------------------------------------------------------------------------- LLM faults
@pytest.mark.parametrize("kind", FAULTS)
def test_llm_fault_keeps_caption_and_vqa_answers(kind, base, image, hanging, silent):
    pipe = pipeline_like(base, llm=faulty_llm(kind, hanging, silent), llm_timeout=TIMEOUT_S)
    expected = base.run(image, QUESTION, top_k=3, use_llm=False)
    result = pipe.run(image, QUESTION, top_k=3)
    assert_vqa_kept(result, FAULTS[kind])
    assert result.caption == expected.caption and result.candidates == expected.candidates
    # streamed: the VQA update comes first, untouched by the later failure
    stages = [(u.stage, u.result.error) for u in pipe.stream(image, "which shape is it?", top_k=3)]
    assert stages[0] == ("vqa", None) and stages[-1][0] == "done" and stages[-1][1]


@pytest.mark.parametrize("kind", FAULTS)
def test_llm_fault_in_a_batch_keeps_every_vqa_answer(kind, base, hanging, silent):
    paths = easy_vqa.get_test_image_paths()
    images = [paths[i] for i in range(3)]
    pipe = pipeline_like(base, llm=faulty_llm(kind, hanging, silent), llm_timeout=TIMEOUT_S)
    results = pipe.run_batch(images, [QUESTION, "which shape is it?", "is there a circle?"], top_k=3)
    # a batch may take the timeout once per chat: 3 x 0.4 s
    message = f"did not answer within {3 * TIMEOUT_S:g} s" if kind == "hangs" else FAULTS[kind]
    for result in results:
        assert_vqa_kept(result, message)


def test_unreachable_llm_server_through_the_app_api(base, argv, image):
    pipe = pipeline_like(base, llm=OpenAIChatLLM(closed_port_url(), "some-model", max_retries=0))
    with serve_pipeline(pipe, argv) as (_, url):
        client = Client(url, verbose=False)
        out = client.predict(handle_file(image), QUESTION, 3, True, "short", api_name="/answer")
        assert out["stage"] == "done" and out["caption"] and len(out["candidates"]) == 3
        assert "could not be reached" in out["error"] and out["answer"] == out["candidates"][0][0]
        # and the next request is served the same way
        again = client.predict(handle_file(image), "which shape is it?", 2, False, "short", api_name="/answer")
        assert again["error"] is None and len(again["candidates"]) == 2


# ---------------------------------------------------------------------------------- broken models
def damage(folder: Path, how: str) -> Path:
    """Break the weights file of a saved model folder; return the file."""
    weights = folder / "model.safetensors"
    if how == "missing":
        weights.unlink()
    elif how == "garbage":
        weights.write_bytes(b"<html>404 Not Found</html>" * 40)
    else:  # "truncated": a download cut short
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return weights


COMPONENT_FLAG = {"vqa": "--vqa-model", "captioner": "--captioner", "llm": "--llm"}


def broken_argv(argv: list[str], tmp_path: Path, component: str, how: str) -> tuple[list[str], Path]:
    flag = COMPONENT_FLAG[component]
    at = argv.index(flag) + 1
    folder = Path(shutil.copytree(argv[at], tmp_path / f"{component}-{how}"))
    weights = damage(folder, how)
    return [*argv[:at], str(folder), *argv[at + 1:]], weights


@pytest.mark.parametrize("how", ["missing", "garbage", "truncated"])
@pytest.mark.parametrize("component", ["vqa", "captioner", "llm"])
def test_broken_weights_are_reported_at_start_naming_the_file(component, how, argv, tmp_path):
    bad_argv, weights = broken_argv(argv, tmp_path, component, how)
    profile, _ = profile_from_argv(bad_argv)
    with pytest.raises(ModelUnavailableError) as raised:
        VQALLMPipeline.from_profile(profile)
    message = str(raised.value)
    # a missing file is named by its folder and its expected name; a damaged one by its full path
    named = str(weights) if how != "missing" else weights.parent.as_posix()
    assert named in message and "model.safetensors" in message, message


@pytest.mark.parametrize("component", ["vqa", "captioner", "llm"])
def test_cli_exits_2_naming_the_damaged_file(component, argv, tmp_path, image, capsys):
    bad_argv, weights = broken_argv(argv, tmp_path, component, "garbage")
    models = [a for a in bad_argv if a not in ("--vle-pretrained", "none")]  # an app.py flag
    code = cli_main(["ask", image, QUESTION, "-q", *models])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR
    last = err.strip().splitlines()[-1]  # after the loading progress of the models before it
    assert last.startswith("Error: ") and str(weights) in last and "Traceback" not in err


# ------------------------------------------------------------------------------- killed evaluation
LIMIT = 12
SLOW_EVALUATE = """
import sys, time
from vqa_llm.pipeline import VQALLMPipeline
from vqa_llm.evaluate import main
real_run_batch = VQALLMPipeline.run_batch
def slow_run_batch(self, *args, **kwargs):  # leaves time to kill the run between or during batches
    results = real_run_batch(self, *args, **kwargs)
    time.sleep(0.3)
    return results
VQALLMPipeline.run_batch = slow_run_batch
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def eval_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_models")
    labels = ("red", "no", "green", "blue", "yes", "circle", "rectangle", "triangle")
    return ["--profile", "bundled", "--vqa-model", build_tiny_vle_vqa(root / "vle", labels=labels),
            "--captioner", build_tiny_blip(root / "blip"),
            "--llm", build_tiny_chat_lm(root / "chat", max_position_embeddings=2048)]


def eval_args(models, out, *extra):
    return ["-q", "--dataset", "easy-vqa", "--limit", str(LIMIT), "--seed", "5", "--max-new-tokens", "6",
            "--batch-size", "2", "--out", str(out), *models, *extra]


def without_timings(record: dict) -> dict:
    record = {k: v for k, v in record.items() if k != "timings"}
    record["candidates"] = [answer for answer, _ in record["candidates"]]  # scores: compared with a tolerance
    return record


def test_evaluation_killed_with_sigkill_resumes_without_loss_or_duplicates(eval_models, tmp_path):
    reference = tmp_path / "reference"
    assert evaluate_main(eval_args(eval_models, reference)) == 0
    want = read_records(reference / "predictions.jsonl")

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_EVALUATE, *eval_args(eval_models, out)], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    predictions = out / "predictions.jsonl"
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if len(read_records(predictions)) >= 4:  # two batches are on disk
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        proc.wait(30)
        log.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    partial = read_records(predictions)
    assert 4 <= len(partial) < LIMIT and not (out / "summary.json").exists()

    assert evaluate_main(eval_args(eval_models, out, "--resume")) == 0
    got = read_records(predictions)
    ids = [r["question_id"] for r in got]
    assert len(ids) == len(set(ids)) == LIMIT  # nothing lost, nothing twice
    assert [without_timings(r) for r in got] == [without_timings(r) for r in want]
    for a, b in zip(got, want):
        assert [s for _, s in a["candidates"]] == pytest.approx([s for _, s in b["candidates"]], abs=1e-5)
    # the records written before the kill were kept as they were (not answered again) ...
    by_id = {r["question_id"]: r for r in got}
    assert all(by_id[r["question_id"]] == r for r in partial)
    # ... and the resumed session answered only the rest
    sessions = json.loads((out / "run.json").read_text())["sessions"]
    assert [s["answered"] for s in sessions] == [LIMIT - len(partial)]
    summary, expected = (json.loads((d / "summary.json").read_text())["overall"] for d in (out, reference))
    assert summary["n"] == expected["n"] == LIMIT and summary["raw_accuracy"] == expected["raw_accuracy"]
