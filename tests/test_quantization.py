"""The VLE int8 fast mode: quantize_int8 keeps the bundled model's answers, and --vqa-precision /
VQA_LLM_VQA_PRECISION reach the loaded model through profiles and loading, with clear errors for bad values."""

import argparse
import io
import json

import pytest
import torch
from PIL import Image

from vle import VLEForVQA, VLEProcessor, quantize_int8
from vle.errors import VLEError
from vle.quantization import PRECISIONS, check_precision, is_quantized
from vle.vqa_data import image_for, load_easy_vqa
from vqa_llm.cli import main
from vqa_llm.errors import BadSettingError
from vqa_llm.evaluate import main as evaluate_main
from vqa_llm.loading import load_captioner, load_vqa_model
from vqa_llm.profiles import (
    BUNDLED_CAPTIONER_DIR,
    BUNDLED_VQA_DIR,
    ENV_VARS,
    VQA_PRECISIONS,
    add_profile_arguments,
    overrides_from_args,
    resolve_profile,
)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _top1(model: VLEForVQA, processor: VLEProcessor, examples) -> list[int]:
    images = [image_for(e) for e in examples]
    inputs = processor(images=images, text=[e.question for e in examples], padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**inputs).logits.argmax(-1).tolist()


@pytest.mark.parametrize("backend", ["auto", "torch.ao"])
def test_int8_bundled_model_keeps_its_top1_answers(backend):
    processor = VLEProcessor.from_pretrained(BUNDLED_VQA_DIR, local_files_only=True)
    fp32 = VLEForVQA.from_pretrained(BUNDLED_VQA_DIR, local_files_only=True).eval()
    int8 = quantize_int8(VLEForVQA.from_pretrained(BUNDLED_VQA_DIR, local_files_only=True), backend=backend)
    assert is_quantized(int8) and not is_quantized(fp32)
    examples = load_easy_vqa("test")[:24]
    assert _top1(int8, processor, examples) == _top1(fp32, processor, examples)


def test_precision_names_and_bad_values():
    assert VQA_PRECISIONS == ("auto", *PRECISIONS) and PRECISIONS == ("fp32", "int8")
    assert check_precision(" INT8 ") == "int8"
    with pytest.raises(VLEError, match="use fp32 .* or int8"):
        check_precision("int4")
    with pytest.raises(VLEError, match="backend"):
        quantize_int8(torch.nn.Linear(2, 2), backend="onnx")


def test_load_vqa_model_in_int8_and_its_errors(monkeypatch):
    monkeypatch.setenv("VQA_LLM_INT8_RUNTIME", "torch.ao")  # the OpenVINO mode: tests/test_openvino_vqa.py
    model, _ = load_vqa_model(str(BUNDLED_VQA_DIR), "cpu", local_files_only=True, precision="int8")
    assert is_quantized(model)
    fp32, _ = load_vqa_model(str(BUNDLED_VQA_DIR), "cpu", local_files_only=True)
    assert not is_quantized(fp32)
    with pytest.raises(BadSettingError, match="CPU only.*--vqa-precision fp32"):
        load_vqa_model(str(BUNDLED_VQA_DIR), "cuda", local_files_only=True, precision="int8")
    with pytest.raises(BadSettingError, match="Unknown VQA precision 'bf16'"):
        load_vqa_model(str(BUNDLED_VQA_DIR), "cpu", local_files_only=True, precision="bf16")


def test_precision_from_flag_and_environment():
    assert ENV_VARS["vqa_precision"] == "VQA_LLM_VQA_PRECISION"
    assert resolve_profile("bundled", {}, {})[0].vqa_precision == "auto"
    profile, reason = resolve_profile("bundled", {}, {"VQA_LLM_VQA_PRECISION": "INT8"})
    assert profile.vqa_precision == "int8" and "VQA_LLM_VQA_PRECISION" in reason
    parser = add_profile_arguments(argparse.ArgumentParser())
    flag = overrides_from_args(parser.parse_args(["--vqa-precision", "fp32"]))
    assert flag["vqa_precision"] == "fp32"
    profile, _ = resolve_profile("bundled", flag, {"VQA_LLM_VQA_PRECISION": "int8"})
    assert profile.vqa_precision == "fp32"  # the flag wins over the environment
    assert "vqa_precision" not in overrides_from_args(parser.parse_args([]))


def test_bad_precision_values_are_refused_with_the_choices(capsys):
    with pytest.raises(BadSettingError, match="VQA_LLM_VQA_PRECISION: use auto .* fp32 .* or int8"):
        resolve_profile("bundled", {}, {"VQA_LLM_VQA_PRECISION": "int4"})
    with pytest.raises(BadSettingError, match="Unknown VQA precision 'half'"):
        resolve_profile("bundled", {"vqa_precision": "half"}, {})
    parser = add_profile_arguments(argparse.ArgumentParser())
    with pytest.raises(SystemExit):
        parser.parse_args(["--vqa-precision", "int4"])
    assert "invalid choice: 'int4'" in capsys.readouterr().err


def test_int8_runs_the_captioner_in_int8_too_with_the_same_captions():
    distinct = {example.image_path: example for example in load_easy_vqa("test")[:200]}
    images = [image_for(example) for example in list(distinct.values())[:8]]  # 8 different test images
    fp32 = load_captioner(str(BUNDLED_CAPTIONER_DIR), "cpu", local_files_only=True)
    int8 = load_captioner(str(BUNDLED_CAPTIONER_DIR), "cpu", local_files_only=True, precision="int8")
    assert is_quantized(int8.model) and not is_quantized(fp32.model)
    same = sum(a == b for a, b in zip(fp32.caption(images), int8.caption(images)))
    assert same >= 7  # 770 of the 772 checkable test images keep their caption (docs/speed.md)
    with pytest.raises(BadSettingError, match="CPU only"):
        load_captioner(str(BUNDLED_CAPTIONER_DIR), "cuda", local_files_only=True, precision="int8")


def test_cli_answers_in_int8(tmp_path):
    picture = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (200, 0, 0)).save(picture)
    out = io.StringIO()
    code = main(["ask", str(picture), "What color is the shape?", "--profile", "bundled", "--no-llm",
                 "--vqa-precision", "int8", "--device", "cpu", "--json", "-q"], out=out)
    assert code == 0
    data = json.loads(out.getvalue())
    assert data["candidates"] and data["error"] is None


def test_app_parser_has_the_flag():
    import app

    overrides = overrides_from_args(app.build_parser().parse_args(["--vqa-precision", "int8"]))
    assert resolve_profile("bundled", overrides, {})[0].vqa_precision == "int8"


@pytest.mark.parametrize(("mode", "recorded", "other"), [("torch.ao", "int8", "openvino"),
                                                        ("openvino", "int8-openvino", "torch.ao")])
def test_evaluator_runs_in_int8_and_records_it(tmp_path, capsys, monkeypatch, mode, recorded, other):
    monkeypatch.setenv("VQA_LLM_INT8_RUNTIME", mode)
    out = tmp_path / "run"
    code = evaluate_main(["-q", "--dataset", "easy-vqa", "--limit", "12", "--no-llm", "--profile", "bundled",
                          "--device", "cpu", "--vqa-precision", "int8", "--out", str(out)])
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["models"]["vqa_precision"] == recorded
    monkeypatch.setenv("VQA_LLM_INT8_RUNTIME", other)
    code = evaluate_main(["-q", "--dataset", "easy-vqa", "--limit", "12", "--no-llm", "--profile", "bundled",
                          "--device", "cpu", "--vqa-precision", "int8", "--out", str(out), "--resume"])
    assert code == 2 and "models" in capsys.readouterr().err  # the other int8 mode's answers differ too
    assert json.loads((out / "summary.json").read_text())["overall"]["n"] == 12
    code = evaluate_main(["-q", "--dataset", "easy-vqa", "--limit", "12", "--no-llm", "--profile", "bundled",
                          "--device", "cpu", "--out", str(out), "--resume"])
    assert code == 2 and "models" in capsys.readouterr().err  # fp32 answers must not join an int8 run
