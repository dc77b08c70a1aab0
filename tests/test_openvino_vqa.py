"""The OpenVINO fast mode of VLE VQA (vle.openvino_vqa) and how --vqa-precision int8 picks it (vqa_llm.fast_vle).

A tiny random VLE is exported here: in fp32 the two OpenVINO graphs must give torch's numbers on padded batches of
other sizes than the traced one (a graph that ignored the mask or fixed a shape would not); in int8 the same
top-1 answers. The cache must serve a second load without exporting, re-export a damaged folder, and key on the
weights.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from tiny_vle import build_tiny_vle_vqa
from vle import VLEForVQA, VLEProcessor
from vle.openvino_vqa import (
    Calibration,
    OpenVINOVLEForVQA,
    calibration_inputs,
    cpu_has_int8_dot_product,
    is_complete,
    weights_key,
)
from vqa_llm import fast_vle
from vqa_llm.errors import BadSettingError
from vqa_llm.loading import load_vqa_model
from vqa_llm.pipeline import VQALLMPipeline

COLOURS = ("red", "blue", "green", "white", "black")
QUESTIONS = ("what color is it?", "is there a big blue square in the middle of the picture?", "shape?",
             "is there a red circle?", "how many shapes are there in this image today?")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = build_tiny_vle_vqa(tmp_path_factory.mktemp("tiny_vle"))
    return VLEForVQA.from_pretrained(folder).eval(), VLEProcessor.from_pretrained(folder), folder


def _images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (40, 40), COLOURS[i % len(COLOURS)]) for i in range(n)]


def _calibration(model, processor):
    return calibration_inputs(model, processor, _images(4), list(QUESTIONS[:4]))


def _both(model, fast, processor, n: int):
    """torch's and the fast model's (image encoding, logits, pooled vector) for ``n`` padded questions."""
    enc = processor(text=list(QUESTIONS[-n:]), images=_images(n), return_tensors="pt")
    text = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    with torch.inference_mode():
        embeds = model.encode_image(enc["pixel_values"])
        ref = model(**text, image_embeds=embeds)
    fast_embeds = fast.encode_image(enc["pixel_values"])
    out = fast(**text, image_embeds=fast_embeds)
    return enc, (embeds, ref.logits, ref.pooler_output), (fast_embeds, out.logits, out.pooler_output)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_fp32_export_gives_torchs_numbers_on_padded_batches_of_any_size(tiny, tmp_path, n):
    model, processor, _ = tiny
    fast = OpenVINOVLEForVQA.from_model(model, tmp_path, _calibration(model, processor), quantize=False)
    enc, ref, got = _both(model, fast, processor, n)
    if n > 1:
        assert not bool(enc["attention_mask"].all())  # the batch really is padded
    for expected, actual in zip(ref, got):
        assert actual.shape == expected.shape
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    # pixel_values instead of image_embeds: the image graph runs inside the call
    text = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    torch.testing.assert_close(fast(**text, pixel_values=enc["pixel_values"]).logits, ref[1], atol=1e-4, rtol=1e-4)


def test_int8_export_keeps_the_top_answers_and_is_cached(tiny, tmp_path, monkeypatch):
    model, processor, _ = tiny
    calibration = _calibration(model, processor)
    fast = OpenVINOVLEForVQA.from_model(model, tmp_path, calibration)
    _, ref, got = _both(model, fast, processor, 5)
    assert torch.equal(got[1].argmax(-1), ref[1].argmax(-1))
    assert not torch.equal(got[1], ref[1])  # it is quantised: not the fp32 numbers
    folder = fast.folder
    assert is_complete(folder, weights_key(model, calibration))

    calls = []
    monkeypatch.setattr("vle.openvino_vqa.export", lambda *a, **k: calls.append(a))
    again = OpenVINOVLEForVQA.from_model(model, tmp_path, calibration)
    assert again.folder == folder and calls == []  # served from the cache

    (folder / "fusion.bin").write_bytes(b"truncated")  # a damaged export is not served
    assert not is_complete(folder, weights_key(model, calibration))
    monkeypatch.undo()
    repaired = OpenVINOVLEForVQA.from_model(model, tmp_path, calibration)
    assert is_complete(repaired.folder, weights_key(model, calibration))
    _, _, fixed = _both(model, repaired, processor, 2)
    assert fixed[1].shape == (2, len(model.config.id2label))


def test_the_cache_key_follows_the_weights_and_the_calibration(tiny):
    model, processor, _ = tiny
    calibration = _calibration(model, processor)
    key = weights_key(model, calibration)
    assert weights_key(model, calibration) == key
    assert weights_key(model, calibration[:1] if len(calibration) > 1 else calibration * 2) != key
    changed = VLEForVQA(model.config).eval()
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.vqa_classifier[3].bias.add_(0.01)
    assert weights_key(changed, calibration) != key


def test_a_cached_export_is_served_without_building_the_calibration_inputs(tiny, tmp_path):
    model, processor, _ = tiny
    made = []

    def make():
        made.append(1)
        return _calibration(model, processor)

    lazy = Calibration("four questions of the test", make)
    first = OpenVINOVLEForVQA.from_model(model, tmp_path, lazy)
    assert made == [1] and is_complete(first.folder, weights_key(model, lazy))
    again = OpenVINOVLEForVQA.from_model(model, tmp_path, lazy)
    assert again.folder == first.folder and made == [1]  # the cache answered: no calibration built
    other = Calibration("other questions", make)
    assert weights_key(model, other) != weights_key(model, lazy)
    assert OpenVINOVLEForVQA.from_model(model, tmp_path, other).folder != first.folder and made == [1, 1]


def test_the_calibration_key_follows_the_processor(tiny):
    _, processor, _ = tiny
    key = fast_vle.calibration_key(processor)
    assert fast_vle.calibration_key(processor) == key and fast_vle.calibration_key(processor, count=8) != key
    settings = {**processor.image_processor.to_dict(), "size": {"shortest_edge": 17},
                "crop_size": {"height": 17, "width": 17}}
    resized = VLEProcessor(image_processor=type(processor.image_processor)(**settings), tokenizer=processor.tokenizer)
    assert fast_vle.calibration_key(resized) != key


def test_a_cache_that_cannot_be_written_exports_into_a_temporary_folder(tiny, tmp_path, monkeypatch):
    model, processor, _ = tiny
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    fast = fast_vle.openvino_int8(model, processor, environ={"VQA_LLM_CACHE": str(blocker)})
    assert not str(fast.folder).startswith(str(blocker))
    assert fast.folder.is_dir()


@pytest.mark.parametrize(("flags", "environ", "expected"), [
    ("fpu avx2 avx512f avx512_vnni", {}, "openvino"),
    ("fpu avx2 avx_vnni", {}, "openvino"),
    ("fpu avx2 amx_int8 amx_tile", {}, "openvino"),
    ("fpu avx2 fma", {}, "torch.ao"),  # no int8 dot product: static int8 gains little there
    ("fpu avx2 avx512_vnni", {"VQA_LLM_INT8_RUNTIME": "torch.ao"}, "torch.ao"),
    ("fpu avx2", {"VQA_LLM_INT8_RUNTIME": "OpenVINO"}, "openvino"),
])
def test_the_int8_mode_follows_the_cpu_features(flags, environ, expected):
    assert fast_vle.int8_runtime(environ, cpuinfo=f"processor\t: 0\nflags\t\t: {flags}\n") == expected


def test_cpu_features_and_bad_runtime_names():
    assert cpu_has_int8_dot_product("flags : sse avx512_vnni\n")
    assert not cpu_has_int8_dot_product("flags : sse avx2 avx512f\n")
    assert not cpu_has_int8_dot_product("")
    with pytest.raises(BadSettingError, match="VQA_LLM_INT8_RUNTIME='onnx': use auto, openvino, torch.ao"):
        fast_vle.int8_runtime({"VQA_LLM_INT8_RUNTIME": "onnx"})


def test_int8_loading_runs_the_pipeline_in_the_openvino_mode(tiny, monkeypatch):
    _, _, folder = tiny
    monkeypatch.setenv("VQA_LLM_INT8_RUNTIME", "openvino")
    model, processor = load_vqa_model(folder, "cpu", local_files_only=True, precision="int8")
    assert isinstance(model, OpenVINOVLEForVQA)
    reference, _ = load_vqa_model(folder, "cpu", local_files_only=True, precision="fp32")
    answers = {}
    for name, vqa in (("int8", model), ("fp32", reference)):
        pipe = VQALLMPipeline(vqa, processor, None, None)
        answers[name] = [pipe.run(image, question, use_llm=False).vqa_answer
                         for image, question in zip(_images(3), QUESTIONS)]
    assert answers["int8"] == answers["fp32"]


def test_a_failed_export_falls_back_to_pytorch_int8_unless_openvino_was_asked_for(tiny, tmp_path, monkeypatch):
    _, _, folder = tiny
    monkeypatch.setenv("VQA_LLM_CACHE", str(tmp_path))  # nothing exported yet

    def broken(*args, **kwargs):
        raise RuntimeError("conversion failed")

    monkeypatch.setattr("vle.openvino_vqa.export", broken)
    monkeypatch.setattr(fast_vle, "int8_runtime", lambda: "openvino")
    model, _ = load_vqa_model(folder, "cpu", local_files_only=True, precision="int8")
    assert isinstance(model, VLEForVQA)  # PyTorch's dynamic int8
    monkeypatch.setenv("VQA_LLM_INT8_RUNTIME", "openvino")
    with pytest.raises(BadSettingError, match="OpenVINO int8 mode failed: conversion failed"):
        load_vqa_model(folder, "cpu", local_files_only=True, precision="int8")
