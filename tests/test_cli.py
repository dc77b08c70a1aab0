"""``python -m vqa_llm ask``: JSON and streamed text output with tiny models, user errors (exit 2, no
traceback), and one end-to-end answer from the real bundled SmolLM2 GGUF."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tiny_models import build_tiny_blip, build_tiny_chat_lm
from tiny_vle import DEFAULT_LABELS, build_tiny_vle_vqa
from vqa_llm.cli import EXIT_USER_ERROR, main
from vqa_llm.result import STAGES

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    picture = root / "shape.png"
    Image.new("RGB", (48, 40), (0, 150, 0)).save(picture)
    return {
        "vqa": build_tiny_vle_vqa(root / "vle"),
        "captioner": build_tiny_blip(root / "blip"),
        "llm": build_tiny_chat_lm(root / "chat", max_position_embeddings=2048),
        "image": str(picture),
    }


def _models(dirs, llm=True):
    args = ["--profile", "bundled", "--vqa-model", dirs["vqa"], "--captioner", dirs["captioner"], "--device", "cpu"]
    return args + (["--llm", dirs["llm"]] if llm else [])


def _run(argv):
    out = io.StringIO()
    code = main(argv, out=out)
    return code, out.getvalue()


def test_json_output_with_tiny_models(dirs):
    code, out = _run(["ask", dirs["image"], "Which shape is green?", "--json", "--top-k", "3",
                      "--max-new-tokens", "5", "-q", *_models(dirs)])
    assert code == 0
    data = json.loads(out)
    assert data["question"] == "Which shape is green?" and data["top_k"] == 3
    assert len(data["candidates"]) == 3 and all(a in DEFAULT_LABELS for a, _ in data["candidates"])
    assert data["llm_used"] and data["error"] is None and data["messages"][-1]["role"] == "user"
    assert data["models"] == {"vqa": dirs["vqa"], "captioner": dirs["captioner"], "llm": dirs["llm"]}
    assert set(data["timings"]) == set(STAGES) and len(data["image_hash"]) == 64


def test_text_output_streams_the_llm_reply(dirs):
    code, out = _run(["ask", dirs["image"], "What colour is it?", "--max-new-tokens", "5", "-q", *_models(dirs)])
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("Caption: ") and lines[1].startswith("VQA: ")
    assert lines[1].count("(") == 5  # five candidates with their scores
    assert any(line.startswith("Answer: ") for line in lines)
    assert "LLM: " in out or "Answer: " in out


def test_no_llm_prints_the_vqa_answer(dirs):
    code, out = _run(["ask", dirs["image"], "Is it a circle?", "--no-llm", "--json", "-q", *_models(dirs, llm=False)])
    data = json.loads(out)
    assert code == 0 and not data["llm_used"] and data["answer"] == data["candidates"][0][0]


@pytest.mark.parametrize("question, extra, message", [
    ("   ", [], "question is empty"),
    ("Is it red?", ["--template", "sonnet"], "Unknown prompt template"),
    ("Is it red?", ["--profile", "bundled", "--top-k", "2"], "No image file at"),
])
def test_user_errors_exit_2_before_any_model_loads(dirs, tmp_path, capsys, question, extra, message):
    picture = str(tmp_path / "nope.jpg") if message == "No image file at" else dirs["image"]
    # the model folders do not exist: the input errors must be reported first
    code = main(["ask", picture, question, "-q", "--profile", "bundled", "--vqa-model", str(tmp_path / "none"),
                 "--no-llm", *extra], out=io.StringIO())
    assert code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert message in err and "VQA model" not in err


def test_module_entry_point_reports_a_missing_model_without_traceback(tmp_path, dirs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "vqa_llm", "ask", dirs["image"], "Is it red?", "--profile", "bundled",
         "--vqa-model", str(tmp_path / "no-model"), "--no-llm"],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300,
    )
    assert proc.returncode == EXIT_USER_ERROR
    assert f"No VQA model folder at {tmp_path / 'no-model'}" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.slow
def test_answers_with_the_real_bundled_smollm2(dirs):
    """Tiny VLE/BLIP with the real SmolLM2-135M-Instruct GGUF of the bundled profile (about 20 s)."""
    code, out = _run(["ask", dirs["image"], "What colour is the shape?", "--json", "--max-new-tokens", "16", "-q",
                      *_models(dirs, llm=False)])
    assert code == 0
    data = json.loads(out)
    assert data["error"] is None and data["llm_used"]
    assert data["models"]["llm"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf + smollm2-easyvqa-refiner")
    assert data["llm_reply"].strip() and data["llm_answer"]
    # the real model follows the template well enough for the parser to find an answer, or the parser says so
    assert data["llm_fallback"] or data["llm_answer"] != ""
