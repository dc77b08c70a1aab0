"""The CUDA paths users run, checked on the CPU with faked GPUs (capabilities, devices, a missing bitsandbytes).

No GPU has run these tests; they pin the rules: bitsandbytes in the requirements, ``auto`` falling back to a
profile that can load, bf16 only on native support, the LLM on the requested device, the caller's batch size
and a deadline per sub-batch, VLE in half precision on CUDA (checked for top-1 agreement), TF32 on.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from packaging.requirements import Requirement
from PIL import Image

import llm.transformers_backend as backend
import vqa_llm.loading as loading
from fake_hub import fake_hub_cache
from llm import LLMTimeoutError, TransformersChatLLM
from tiny_models import build_tiny_chat_lm
from vqa_llm.profiles import BASE, LARGE, REPO_ROOT, resolve_profile

CHAT = [{"role": "user", "content": "What colour is the ball?"}]


@pytest.fixture
def fake_gpus(monkeypatch):
    """CUDA 'available' with per-device compute capabilities; ``current_device()`` is 0."""
    capabilities = {0: (8, 0), 1: (7, 5)}

    def capability(device=None):
        index = torch.device(device).index if isinstance(device, (str, torch.device)) else device
        return capabilities[0 if index is None else index]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    # torch's own answer counts emulation: a T4 says yes. The rule must not ask it.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    return capabilities


@pytest.fixture
def no_bitsandbytes(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "bitsandbytes" else real(name, *a, **k))


# ------------------------------------------------------------------------------------ 1. bitsandbytes
def test_requirements_install_bitsandbytes_where_it_has_wheels():
    lines = [line.split("#")[0].strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()]
    found = [Requirement(line) for line in lines if line.startswith("bitsandbytes")]
    assert len(found) == 1, "requirements.txt must list bitsandbytes (the large profile's 4-bit LLM needs it)"
    marker = found[0].marker
    linux = {"sys_platform": "linux", "platform_machine": "x86_64"}
    assert marker is None or marker.evaluate(linux)
    assert marker is None or marker.evaluate({"sys_platform": "win32", "platform_machine": "AMD64"})
    assert marker is not None and not marker.evaluate({"sys_platform": "darwin", "platform_machine": "x86_64"})
    # transformers' 4-bit loading needs bitsandbytes >= 0.46.1
    assert found[0].specifier.contains("0.50.2") and not found[0].specifier.contains("0.45.0")


def _fake_hub_env(root: Path, repos) -> dict[str, str]:
    """Environment of an offline run whose Hub cache holds ``repos``."""
    return {"HF_HUB_CACHE": str(fake_hub_cache(root, repos)), "HF_HUB_OFFLINE": "1"}


def _no_probe(environ):
    raise AssertionError("the Hub must not be probed here")


def test_auto_skips_large_without_bitsandbytes_and_says_why(tmp_path, no_bitsandbytes):
    env = _fake_hub_env(tmp_path / "hub", {LARGE.vqa_model, LARGE.captioner, LARGE.llm,
                                             BASE.vqa_model, BASE.captioner, BASE.llm})
    profile, reason = resolve_profile("auto", {}, env, hub_probe=_no_probe, cuda_available=True)
    assert profile.name == "base"
    assert "'large'" in reason and "bitsandbytes" in reason and "pip install bitsandbytes" in reason


def test_auto_without_bitsandbytes_and_without_base_falls_back_to_bundled(tmp_path, no_bitsandbytes):
    env = _fake_hub_env(tmp_path / "hub", {LARGE.vqa_model, LARGE.captioner, LARGE.llm})
    profile, reason = resolve_profile("auto", {}, env, hub_probe=_no_probe, cuda_available=True)
    assert profile.name == "bundled" and "bitsandbytes" in reason


def test_auto_keeps_large_when_bitsandbytes_is_there(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k:
                        SimpleNamespace(name=name) if name == "bitsandbytes" else real(name, *a, **k))
    env = _fake_hub_env(tmp_path / "hub", {LARGE.vqa_model, LARGE.captioner, LARGE.llm})
    profile, _ = resolve_profile("auto", {}, env, hub_probe=_no_probe, cuda_available=True)
    assert profile.name == "large"


# ------------------------------------------------------------------------------------------ 2. dtypes
def test_half_precision_is_bf16_only_on_native_support(fake_gpus):
    assert loading.resolve_dtype(None, "cuda:0") == torch.bfloat16  # A100-class, capability 8.0
    assert loading.resolve_dtype("auto", "cuda:1") == torch.float16  # T4-class 7.5: bf16 would be emulated
    assert loading.resolve_dtype("auto", "cuda") == torch.bfloat16  # the current device (0)
    fake_gpus[0] = (7, 0)  # V100
    assert loading.resolve_dtype("auto", "cuda") == torch.float16
    assert loading.resolve_dtype("auto", "cpu") == torch.float32


class _Recorder:
    """Stands in for a model class or loader: records the keyword arguments of each call."""

    def __init__(self, result=None):
        self.calls: list[dict] = []
        self.result = result

    def __call__(self, *args, **kwargs):
        self.calls.append({"args": args, **kwargs})
        return self.result if self.result is not None else _FakeModel(kwargs.get("dtype"))


class _FakeModel:
    def __init__(self, dtype):
        self.dtype, self.moved_to, self.vle = dtype, None, None

    def to(self, device=None, dtype=None):
        self.moved_to = device
        return self

    def eval(self):
        return self


@pytest.fixture
def recorded_loaders(monkeypatch):
    loaders = SimpleNamespace(vle=_Recorder(), processor=_Recorder(result=object()), blip=_Recorder(result=object()),
                              llm=_Recorder(result=SimpleNamespace(model_id="llm")))
    monkeypatch.setattr(loading.VLEForVQA, "from_pretrained", loaders.vle)
    monkeypatch.setattr(loading.VLEProcessor, "from_pretrained", loaders.processor)
    monkeypatch.setattr(loading.BlipCaptioner, "from_pretrained", loaders.blip)
    monkeypatch.setattr(TransformersChatLLM, "from_pretrained", loaders.llm)
    return loaders


@pytest.fixture
def restore_matmul_precision():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def test_the_app_loads_every_model_in_the_gpus_half_type_with_tf32_on(fake_gpus, recorded_loaders,
                                                                      restore_matmul_precision):
    """On a T4-class GPU (no native bf16) VLE and BLIP run in fp16, the LLM in fp32: instruct LLMs overflow in
    fp16 (Qwen2.5: NaN logits). On an A100-class GPU all three in bf16."""
    torch.set_float32_matmul_precision("highest")
    parts = loading.load_components(replace(BASE, device="cuda:1"))  # a T4-class GPU
    vle, blip, chat = recorded_loaders.vle.calls[0], recorded_loaders.blip.calls[0], recorded_loaders.llm.calls[0]
    assert vle["dtype"] == blip["dtype"] == torch.float16 and chat["dtype"] == torch.float32
    loading.load_components(replace(BASE, device="cuda:0"))  # A100-class
    assert recorded_loaders.llm.calls[1]["dtype"] == recorded_loaders.vle.calls[1]["dtype"] == torch.bfloat16
    loading.load_components(replace(LARGE, device="cuda:1"))  # 4-bit on a T4: computing in fp32, not fp16
    assert recorded_loaders.llm.calls[2]["dtype"] == torch.float32
    assert recorded_loaders.llm.calls[2]["quantization"] == "4bit"
    assert blip["device"] == chat["device"] == "cuda:1" and parts.vqa_model.moved_to == "cuda:1"
    assert torch.get_float32_matmul_precision() == "high"  # TF32 for what stays in fp32


def test_vle_in_fp32_is_an_option(fake_gpus, recorded_loaders, restore_matmul_precision):
    loading.load_components(replace(BASE, device="cuda:0"), use_llm=False, vqa_dtype="float32")
    assert recorded_loaders.vle.calls[0]["dtype"] == torch.float32
    assert recorded_loaders.blip.calls[0]["dtype"] == torch.bfloat16


def test_vqa_precision_fp32_keeps_the_vle_exact_on_cuda(fake_gpus, recorded_loaders, restore_matmul_precision):
    """--vqa-precision fp32 (the user-facing switch) loads VLE in fp32 on a GPU; auto, the default, in half."""
    loading.load_components(replace(BASE, device="cuda:0", vqa_precision="fp32"), use_llm=False)
    loading.load_components(replace(BASE, device="cuda:0"), use_llm=False)
    assert [call["dtype"] for call in recorded_loaders.vle.calls] == [torch.float32, torch.bfloat16]
    assert BASE.vqa_precision == "auto"


def test_vle_task_heads_load_in_half_precision_on_cuda(fake_gpus, monkeypatch):
    """The pretraining heads (image-text matching, patch relevance) are a second VLE in memory: same rule."""
    import vqa_llm.tasks as tasks

    recorders = {name: _Recorder() for name in tasks.TASKS}
    for name, spec in tasks.TASKS.items():
        monkeypatch.setattr(spec.model_class, "from_pretrained", recorders[name])
    monkeypatch.setattr(tasks.VLEProcessor, "from_pretrained", _Recorder(result=object()))
    tasks.load_heads("hfl/vle-base", "cuda:1")
    assert [r.calls[0]["dtype"] for r in recorders.values()] == [torch.float16] * len(tasks.TASKS)
    tasks.load_heads("hfl/vle-base", "cpu")
    assert [r.calls[1]["dtype"] for r in recorders.values()] == [torch.float32] * len(tasks.TASKS)


def test_cpu_runs_stay_fp32_without_touching_tf32(recorded_loaders, restore_matmul_precision):
    torch.set_float32_matmul_precision("highest")
    loading.load_components(replace(BASE, device="cpu"))
    assert {recorded_loaders.vle.calls[0]["dtype"], recorded_loaders.blip.calls[0]["dtype"],
            recorded_loaders.llm.calls[0]["dtype"]} == {torch.float32}
    assert torch.get_float32_matmul_precision() == "highest"


# ------------------------------------------------------------------------------- 3. LLM device placement
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return build_tiny_chat_lm(tmp_path_factory.mktemp("tiny_chat_lm"))


@pytest.fixture
def captured_llm_load(monkeypatch, tiny_dir):
    """``AutoModelForCausalLM.from_pretrained`` recording its arguments and returning the tiny CPU model."""
    calls: list[dict] = []
    real = backend.AutoModelForCausalLM.from_pretrained

    def load(id_or_path, **kwargs):
        calls.append(kwargs)
        return real(tiny_dir)

    monkeypatch.setattr(backend.AutoModelForCausalLM, "from_pretrained", load)
    return calls


@pytest.mark.parametrize("device, expected", [("cuda:1", torch.device("cuda", 1)), ("cuda", torch.device("cuda", 0))])
def test_4bit_llm_goes_to_the_requested_gpu_only(fake_gpus, captured_llm_load, tiny_dir, device, expected):
    chat = TransformersChatLLM.from_pretrained(tiny_dir, device=device, dtype=torch.float16, quantization="4bit")
    kwargs = captured_llm_load[0]
    assert kwargs["device_map"] == {"": expected}  # not "auto": that spreads the model over every GPU
    config = kwargs["quantization_config"]
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.float16
    assert chat.quantization == "4bit"


def test_full_precision_llm_loads_straight_onto_the_gpu(fake_gpus, captured_llm_load, tiny_dir):
    # the tiny model really is on the CPU: a .to("cuda:1") after loading would raise here
    TransformersChatLLM.from_pretrained(tiny_dir, device="cuda:1", dtype=torch.bfloat16)
    assert captured_llm_load[0]["device_map"] == {"": torch.device("cuda", 1)}
    assert captured_llm_load[0]["dtype"] == torch.bfloat16


def test_auto_sharding_only_when_asked(fake_gpus, captured_llm_load, tiny_dir):
    TransformersChatLLM.from_pretrained(tiny_dir, device="cuda", device_map="auto", quantization="4bit")
    assert captured_llm_load[0]["device_map"] == "auto"


def test_cpu_llm_has_no_device_map(captured_llm_load, tiny_dir):
    TransformersChatLLM.from_pretrained(tiny_dir, device="cpu")
    assert "device_map" not in captured_llm_load[0] and captured_llm_load[0]["dtype"] == torch.float32


# ------------------------------------------------------------------------- 4. batch size and deadline
@pytest.fixture(scope="module")
def tiny_chat(tiny_dir) -> TransformersChatLLM:
    return TransformersChatLLM.from_pretrained(tiny_dir, device="cpu")


def _record_batches(monkeypatch, chat, clock=None, seconds_per_batch=0.0):
    """Replace the model call by one that records its batch size (and advances a fake clock)."""
    sizes: list[int] = []

    def run(enc, opts, deadline, streamer=None):
        sizes.append(enc.input_ids.shape[0])
        if clock is not None:
            clock[0] += seconds_per_batch
        deadline(enc.input_ids, None)  # what generate's stopping criteria do after each token
        return torch.cat([enc.input_ids, enc.input_ids[:, -1:]], dim=1)

    monkeypatch.setattr(chat, "_run", run)
    return sizes


def test_backend_honours_the_callers_batch(tiny_chat, monkeypatch):
    sizes = _record_batches(monkeypatch, tiny_chat)
    assert len(tiny_chat.generate_batch([CHAT] * 12, max_new_tokens=4)) == 12
    assert sizes == [12]  # the pipeline already chunks by --batch-size: no hidden cap of 8
    sizes.clear()
    tiny_chat.generate_batch([CHAT] * 12, max_new_tokens=4, batch_size=5)
    assert sizes == [5, 5, 2]


def test_each_sub_batch_gets_its_own_deadline(tiny_chat, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(backend.time, "monotonic", lambda: clock[0])
    sizes = _record_batches(monkeypatch, tiny_chat, clock, seconds_per_batch=0.8)
    replies = tiny_chat.generate_batch([CHAT] * 6, max_new_tokens=4, timeout=1.0, batch_size=2)
    assert len(replies) == 6 and sizes == [2, 2, 2]  # 2.4 s in all, 0.8 s per sub-batch: within 1 s each
    with pytest.raises(LLMTimeoutError):
        _record_batches(monkeypatch, tiny_chat, clock, seconds_per_batch=1.2)
        tiny_chat.generate_batch([CHAT] * 2, max_new_tokens=4, timeout=1.0, batch_size=2)


# ----------------------------------------------------------------------- 5. VLE in half precision
def _top1(model, batches, dtype):
    with torch.inference_mode():
        return torch.cat([model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                token_type_ids=b["token_type_ids"], pixel_values=b["pixel_values"].to(dtype)
                                ).logits.float().argmax(-1) for b in batches])


@pytest.mark.slow
@pytest.mark.parametrize("dtype, questions", [("bfloat16", 600), ("float16", 150)])
def test_half_precision_vle_agrees_with_fp32_on_the_bundled_model(dtype, questions):
    """CUDA's default for VLE is half precision; its top-1 answers must match fp32's (>= 99.5%). Run on the CPU
    here (fp16 is slow there, hence fewer questions); docs/gpu.md has the figure on the whole test split."""
    from torch.utils.data import DataLoader

    from training.vqa_finetune import VQATrainingSet, collate
    from vle.vqa_data import load_easy_vqa
    from vqa_llm.profiles import BUNDLED_VQA_DIR

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exact, processor = loading.load_vqa_model(str(BUNDLED_VQA_DIR), "cpu", local_files_only=True)
        half, _ = loading.load_vqa_model(str(BUNDLED_VQA_DIR), "cpu", local_files_only=True, dtype=dtype)
        assert exact.dtype == torch.float32 and half.dtype == loading.DTYPE_NAMES[dtype]
        test = load_easy_vqa("test")[::max(1, 9600 // questions)][:questions]
        dataset = VQATrainingSet(test, processor, {k: int(v) for k, v in exact.config.label2id.items()})
        batches = list(DataLoader(dataset, batch_size=150, collate_fn=lambda b: collate(b, exact.config.num_labels)))
        agree = (_top1(exact, batches, torch.float32) == _top1(half, batches, half.dtype)).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    assert agree >= 0.995, agree


def test_pipeline_answers_with_a_half_precision_vle():
    from vqa_llm import VQALLMPipeline
    from vqa_llm.profiles import BUNDLED_VQA_DIR

    image = REPO_ROOT / "assets" / "examples" / "easyvqa-test-160.png"
    answers = []
    for dtype in ("float32", "bfloat16"):
        model, processor = loading.load_vqa_model(str(BUNDLED_VQA_DIR), "cpu", local_files_only=True, dtype=dtype)
        pipe = VQALLMPipeline(model, processor)
        first = pipe.run(image, "What shape is in the image?", use_llm=False)
        again = pipe.run(image, "What color is the shape?", use_llm=False)  # image encoding from the cache
        assert again.cache_hit and first.error is None
        answers.append((first.vqa_answer, again.vqa_answer))
    assert answers[0] == answers[1]


# ------------------------------------------------------------------ 6. fine-tuning data, caches, evaluation
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


@pytest.fixture(scope="module")
def colour_set(tmp_path_factory):
    """Nine flat-colour images, two questions each, and a tiny VLE VQA model with those answers."""
    from tiny_vle import build_tiny_vle_vqa
    from vle import VLEForVQA, VLEProcessor
    from vle.vqa_data import VQAExample

    root = tmp_path_factory.mktemp("colours")
    examples = []
    for i in range(9):
        name = list(COLOURS)[i % 3]
        path = root / f"{i}.png"
        Image.new("RGB", (32, 32), COLOURS[name]).save(path)
        examples.append(VQAExample(2 * i, str(i), str(path), "what color is it?", [name] * 10, "other", "color"))
        examples.append(VQAExample(2 * i + 1, str(i), str(path), "is it red?", ["yes" if name == "red" else "no"] * 10,
                                   "yes/no", "yes/no"))
    directory = build_tiny_vle_vqa(root / "model")
    return SimpleNamespace(examples=examples, dir=directory, model=VLEForVQA.from_pretrained(directory).eval(),
                           processor=VLEProcessor.from_pretrained(directory))


def _label2id(model):
    return {k: int(v) for k, v in model.config.label2id.items()}


def test_image_cache_is_bounded_and_changes_nothing(colour_set):
    from training.vqa_finetune import VQATrainingSet

    one_image = 3 * 32 * 32 * 4
    bounded = VQATrainingSet(colour_set.examples, colour_set.processor, _label2id(colour_set.model),
                             image_cache_mb=2.5 * one_image / 2**20)
    uncached = VQATrainingSet(colour_set.examples, colour_set.processor, _label2id(colour_set.model), image_cache_mb=0)
    for index in range(len(colour_set.examples)):
        torch.testing.assert_close(bounded[index]["pixel_values"], uncached[index]["pixel_values"])
        assert len(bounded._pixels) <= 2 and bounded._pixels.bytes <= 2.5 * one_image
    assert len(bounded._pixels) == 2 and len(uncached._pixels) == 0
    default = VQATrainingSet(colour_set.examples, colour_set.processor, _label2id(colour_set.model))
    assert 0 < default._pixels.max_bytes <= 4 * 2**30  # bounded by default (VQAv2 would need hundreds of GB)


def test_frozen_vision_cache_is_bounded_and_exact(colour_set):
    from training.vision_cache import FrozenVisionCache
    from training.vqa_finetune import VQATrainingSet, collate

    model = colour_set.model
    dataset = VQATrainingSet(colour_set.examples[::2], colour_set.processor, _label2id(model))  # 9 images
    batch = collate([dataset[i] for i in range(len(dataset))], model.config.num_labels)
    features = 1 * (32 // 8) ** 2 + 1
    one = features * model.config.vision_config.hidden_size * 4
    small, none = FrozenVisionCache(model, max_mb=3.5 * one / 2**20), FrozenVisionCache(model, max_mb=0)
    with torch.no_grad():
        for start in range(0, 9, 2):
            rows = slice(start, start + 2)
            got = small.image_embeds(batch["pixel_values"][rows], batch["image_id"][rows])
            torch.testing.assert_close(got, none.image_embeds(batch["pixel_values"][rows], batch["image_id"][rows]))
            assert len(small.features) <= 3 and small.features.bytes <= 3.5 * one
        again = small.image_embeds(batch["pixel_values"][:3], batch["image_id"][:3])  # partly evicted by now
        torch.testing.assert_close(again, none.image_embeds(batch["pixel_values"][:3], batch["image_id"][:3]))
    assert len(none.features) == 0


def test_data_workers_default_to_several_on_cuda_and_none_on_cpu(monkeypatch):
    from training.vqa_trainer import data_workers

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert data_workers(None, cuda, 2) == 4 and data_workers(None, cpu) == 0 and data_workers(3, cpu) == 3
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert data_workers(None, torch.device("cuda", 1), 4) == 0


def test_training_preprocesses_in_dataloader_workers(colour_set, tmp_path, monkeypatch):
    import training.vqa_finetune as finetune
    import training.vqa_trainer as vqa_trainer
    from training.vqa_arguments import vqa_arguments
    from vle import VLEForVQA

    seen: list[int] = []
    get_loader = vqa_trainer.VQATrainer.get_train_dataloader

    def spy(self):
        loader = get_loader(self)
        seen.append(loader.num_workers)
        return loader

    monkeypatch.setattr(vqa_trainer.VQATrainer, "get_train_dataloader", spy)
    model = VLEForVQA.from_pretrained(colour_set.dir)
    args, training_args = vqa_arguments(output_dir=str(tmp_path / "run"), num_train_epochs=1,
                                        per_device_train_batch_size=4, dataloader_num_workers=2, warmup_steps=1,
                                        stop_after_steps=3)
    log = finetune.train_vqa(model, colour_set.processor, colour_set.examples, args, training_args)
    assert seen == [2] and log["epochs"][0]["train_loss"] > 0


def test_mixed_precision_auto_is_fp16_on_gpus_without_native_bf16(monkeypatch):
    """What VLE fine-tuning hands the Trainer on a T4/V100 (emulated bf16 only) and on an Ampere GPU."""
    from training.common import resolved_precision
    from training.vqa_arguments import training_defaults

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    asked = [resolved_precision(None, None)]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    asked.append(resolved_precision(None, None))
    assert [(a["bf16"], a["fp16"]) for a in asked] == [(False, True), (True, False)]
    assert resolved_precision(None, None, fp16_auto=False) == {"bf16": True, "fp16": False}
    assert resolved_precision(False, False) == {"bf16": False, "fp16": False}  # --bf16 false: fp32
    defaults = training_defaults()
    assert defaults["use_cpu"] is False and defaults["dataloader_pin_memory"] is True


EVAL_WORKER = """
import json, sys
from accelerate import Accelerator
from vle import VLEForVQA, VLEProcessor
from training.vqa_finetune import VQATrainingSet, evaluate
from vle.vqa_data import VQAExample

model_dir, data, out = sys.argv[1:]
accelerator = Accelerator(cpu=True)
model = VLEForVQA.from_pretrained(model_dir).eval()
rows = []
forward = model.forward
model.forward = lambda *a, **k: rows.append(k["input_ids"].shape[0]) or forward(*a, **k)
examples = [VQAExample(**e) for e in json.load(open(data))]
dataset = VQATrainingSet(examples, VLEProcessor.from_pretrained(model_dir),
                         {k: int(v) for k, v in model.config.label2id.items()})
result = evaluate(model, dataset, batch_size=4, accelerator=accelerator)
json.dump({"rank": accelerator.process_index, "rows": sum(rows), "result": result},
          open(out + str(accelerator.process_index), "w"))
accelerator.end_training()  # the process group closed before exit: gloo may abort at exit otherwise
"""


@pytest.mark.slow
def test_evaluation_is_sharded_across_processes(colour_set, tmp_path):
    """Two real processes (gloo on the CPU): each scores half the questions, both report the whole result."""
    import dataclasses
    import json
    import os
    import socket
    import subprocess
    import sys

    from training.vqa_finetune import VQATrainingSet, evaluate

    (tmp_path / "worker.py").write_text(EVAL_WORKER)
    (tmp_path / "data.json").write_text(json.dumps([dataclasses.asdict(e) for e in colour_set.examples]))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tests_dir = str(Path(__file__).parent)
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), tests_dir])}
        procs.append(subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), colour_set.dir,
                                       str(tmp_path / "data.json"), str(tmp_path / "out")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    outs = [json.loads((tmp_path / f"out{rank}").read_text()) for rank in range(2)]
    whole = evaluate(colour_set.model, VQATrainingSet(colour_set.examples, colour_set.processor,
                                                      _label2id(colour_set.model)), batch_size=4)
    assert [o["rows"] for o in outs] == [9, 9]  # 18 questions, half each
    for out in outs:
        assert out["result"]["count"] == 18
        assert out["result"]["vqa_score"] == pytest.approx(whole["vqa_score"])
        assert out["result"]["per_question_type"] == pytest.approx(whole["per_question_type"])


# ------------------------------------------------------------------------------- 7. bench/gpu_check.py
@pytest.fixture
def gpu_check(monkeypatch):
    """The ``bench/gpu_check.py`` module, with ``sys.argv`` as a script run would have it."""
    import sys

    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    monkeypatch.setattr(sys, "argv", ["gpu_check.py"])
    import gpu_check

    return gpu_check


def _last_json_line(out: str) -> dict:
    import json

    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_check_and_passes(gpu_check, monkeypatch, capsys):
    """The CPU smoke run of the GPU acceptance check: the bundled models loaded through the app's loaders answer
    with the LLM and agree with the CPU reference, the evaluator is interrupted and resumed without losing or
    repeating a question, fine-tuning steps lower the loss, and the random-weight profile shapes answer end to end
    ('large' asking for 4 bit); exit 0 and one JSON line that says passed."""
    asked = []
    real = TransformersChatLLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        asked.append((kwargs.get("quantization"), kwargs.get("dtype")))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(TransformersChatLLM, "from_pretrained", classmethod(spy))
    assert gpu_check.main(["--smoke", "--device", "cpu", "--shapes", "base,large"]) == 0
    summary = _last_json_line(capsys.readouterr().out)

    assert summary["passed"] is True and summary["failures"] == []
    assert set(summary) >= {"device", "smoke", "gpus", "sample", "cpu_reference", "bundled", "evaluator", "finetune",
                            "shapes", "checks", "failures", "passed", "wall_s"}
    assert summary["gpus"] == [] and summary["sample"]["questions"] == 4
    sections = {name.split(".")[0] for name in summary["checks"]}
    assert sections == {"sample", "cpu_reference", "bundled_fp32", "evaluator", "finetune_no", "shapes_base",
                        "shapes_large"}
    assert all(summary["checks"].values()) and len(summary["checks"]) >= 25

    fp32 = summary["bundled"]["fp32"]
    assert set(fp32["parameters"]) == {"vqa", "captioner", "llm"}
    assert all(p["count"] > 0 and p["wrong"] == 0 for p in fp32["parameters"].values())
    assert fp32["top1_agreement"] == 1.0 and fp32["raw_accuracy"] >= 0.99 and fp32["finite_scores"] is True
    assert fp32["llm_used"] == 4 and fp32["llm_fallback_rate"] < 0.05

    evaluator = summary["evaluator"]
    assert (evaluator["first_exit"], evaluator["written_before_interrupt"], evaluator["kept_after_cut"]) == (130, 2, 1)
    assert (evaluator["resume_exit"], evaluator["answered_on_resume"]) == (0, 2)
    assert evaluator["records"] == evaluator["unique"] == 3 and evaluator["missing"] == evaluator["extra"] == []

    finetune = summary["finetune"]["no"]
    assert len(finetune["losses"]) == 4 and finetune["last_mean"] < finetune["first_mean"]
    assert finetune["head_dtypes"] == ["torch.float32"] and finetune["weights_changed"] is True

    assert (None, torch.float32) in asked and ("4bit", torch.float32) in asked  # large asks for 4 bit (CPU: ignored)
    for report in summary["shapes"].values():
        assert report["batch16"]["errors"] == 0 and report["stream"]["first_llm_chunk_s"] is not None


def test_gpu_check_names_parameters_off_the_device_or_in_another_dtype(gpu_check):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    assert gpu_check.parameter_report(model, "cpu", torch.float32)["wrong"] == 0
    model[1].half()
    report = gpu_check.parameter_report(model, "cpu", torch.float32)
    assert (report["count"], report["wrong"]) == (4, 2) and report["examples"][0] == "1.weight: torch.float16 on cpu"
    model[1].float()
    model[0].to("meta")
    assert gpu_check.parameter_report(model, "cpu", torch.float32)["wrong"] == 2


def test_gpu_check_fails_with_exit_1_when_a_figure_fails_or_a_check_raises(gpu_check, monkeypatch, capsys):
    """One figure out of bounds and one section that raises (as CUDA out of memory would): the other sections
    still run, the JSON line lists both failures, ``passed`` is false and the exit status 1."""

    def low_accuracy(sample, sizes, checks, answers):
        checks.expect("cpu_reference", "raw_accuracy", False, "50.00% of 4")
        return {}

    def out_of_memory(*args):
        raise RuntimeError("CUDA out of memory")

    def passes(section):
        def check(*args):
            checks = next(a for a in args if isinstance(a, gpu_check.Checks))
            checks.expect(section, "ok", True, "fine")
            return {}
        return check

    monkeypatch.setattr(gpu_check, "easy_vqa_sample", lambda n: [SimpleNamespace(question_id=i) for i in range(n)])
    monkeypatch.setattr(gpu_check, "cpu_reference", low_accuracy)
    monkeypatch.setattr(gpu_check, "check_precision", out_of_memory)
    monkeypatch.setattr(gpu_check, "check_evaluator", passes("evaluator"))
    monkeypatch.setattr(gpu_check, "check_finetune", passes("finetune_no"))
    assert gpu_check.main(["--smoke", "--device", "cpu"]) == 1
    summary = _last_json_line(capsys.readouterr().out)
    assert summary["passed"] is False
    assert summary["failures"] == ["cpu_reference.raw_accuracy: 50.00% of 4",
                                   "bundled_fp32.completed: raised RuntimeError: CUDA out of memory"]
    assert summary["checks"]["evaluator.ok"] and summary["checks"]["finetune_no.ok"]
    assert summary["bundled"]["fp32"]["error"] == "RuntimeError: CUDA out of memory"


def test_gpu_check_without_cuda_says_so_and_exits_0(gpu_check, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    assert "No CUDA GPU here" in capsys.readouterr().out
    assert gpu_check.main(["--device", "cpu"]) == 2  # the full run is for the GPU; --smoke for the CPU
