"""The CUDA paths users run, checked on the CPU with faked GPUs (capabilities, devices, a missing bitsandbytes).

No GPU has run these tests; they pin the rules: bitsandbytes in the requirements, ``auto`` falling back to a
profile that can load, bf16 only on native support, the LLM on the requested device, the caller's batch size
and a deadline per sub-batch, VLE in half precision on CUDA (checked for top-1 agreement), TF32 on.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from packaging.requirements import Requirement
from tiny_models import build_tiny_chat_lm

import llm.transformers_backend as backend
import vqa_llm.loading as loading
from llm import LLMTimeoutError, TransformersChatLLM
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


def _fake_hub_cache(root: Path, repos) -> dict[str, str]:
    for repo in repos:
        folder = root / ("models--" + repo.replace("/", "--"))
        snapshot = folder / "snapshots" / "0123abcd"
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text("{}")
        (snapshot / "model.safetensors").write_bytes(b"")
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text("0123abcd")
    return {"HF_HUB_CACHE": str(root), "HF_HUB_OFFLINE": "1"}


def _no_probe(environ):
    raise AssertionError("the Hub must not be probed here")


def test_auto_skips_large_without_bitsandbytes_and_says_why(tmp_path, no_bitsandbytes):
    env = _fake_hub_cache(tmp_path / "hub", {LARGE.vqa_model, LARGE.captioner, LARGE.llm,
                                             BASE.vqa_model, BASE.captioner, BASE.llm})
    profile, reason = resolve_profile("auto", {}, env, hub_probe=_no_probe, cuda_available=True)
    assert profile.name == "base"
    assert "'large'" in reason and "bitsandbytes" in reason and "pip install bitsandbytes" in reason


def test_auto_without_bitsandbytes_and_without_base_falls_back_to_bundled(tmp_path, no_bitsandbytes):
    env = _fake_hub_cache(tmp_path / "hub", {LARGE.vqa_model, LARGE.captioner, LARGE.llm})
    profile, reason = resolve_profile("auto", {}, env, hub_probe=_no_probe, cuda_available=True)
    assert profile.name == "bundled" and "bitsandbytes" in reason


def test_auto_keeps_large_when_bitsandbytes_is_there(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k:
                        SimpleNamespace(name=name) if name == "bitsandbytes" else real(name, *a, **k))
    env = _fake_hub_cache(tmp_path / "hub", {LARGE.vqa_model, LARGE.captioner, LARGE.llm})
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
        self.dtype, self.moved_to = dtype, None

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
    monkeypatch.setattr(loading.TransformersChatLLM, "from_pretrained", loaders.llm)
    return loaders


@pytest.fixture
def restore_matmul_precision():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def test_the_app_loads_every_model_in_the_gpus_half_type_with_tf32_on(fake_gpus, recorded_loaders,
                                                                      restore_matmul_precision):
    torch.set_float32_matmul_precision("highest")
    parts = loading.load_components(replace(BASE, device="cuda:1"))  # a T4-class GPU
    vle, blip, chat = recorded_loaders.vle.calls[0], recorded_loaders.blip.calls[0], recorded_loaders.llm.calls[0]
    assert vle["dtype"] == blip["dtype"] == chat["dtype"] == torch.float16
    assert blip["device"] == chat["device"] == "cuda:1" and parts.vqa_model.moved_to == "cuda:1"
    assert torch.get_float32_matmul_precision() == "high"  # TF32 for what stays in fp32


def test_vle_in_fp32_is_an_option(fake_gpus, recorded_loaders, restore_matmul_precision):
    loading.load_components(replace(BASE, device="cuda:0"), use_llm=False, vqa_dtype="float32")
    assert recorded_loaders.vle.calls[0]["dtype"] == torch.float32
    assert recorded_loaders.blip.calls[0]["dtype"] == torch.bfloat16


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
