"""One home for the dtype rule: ``vqa_llm.loading.resolve_dtype`` picks it, the components take a torch.dtype.

The component packages share no code, so they do not each carry a copy of the rule (the CUDA half of it, bf16
only on native support, is tested with faked GPUs in test_gpu_paths.py).
"""

import pytest
import torch

import captioner.blip
import llm.transformers_backend
from captioner import BlipCaptioner, CaptionerError
from llm import LLMError, TransformersChatLLM
from tiny_models import build_tiny_blip, build_tiny_chat_lm
from vqa_llm.errors import BadSettingError
from vqa_llm.loading import resolve_dtype


def test_names_map_to_dtypes_and_auto_is_fp32_on_cpu():
    assert resolve_dtype("auto", "cpu") == resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype("BF16", "cpu") == torch.bfloat16
    assert resolve_dtype("half", "cuda") == torch.float16
    assert resolve_dtype("float32", "cuda:0") == torch.float32
    assert resolve_dtype(torch.float16, "cpu") == torch.float16


def test_unknown_dtype_name_is_a_clear_error():
    with pytest.raises(BadSettingError, match="Unknown dtype 'int3'.*'bfloat16'"):
        resolve_dtype("int3", "cpu")


def test_the_components_keep_no_copy_of_the_rule(tmp_path):
    assert not hasattr(llm.transformers_backend, "resolve_dtype") and not hasattr(captioner.blip, "resolve_dtype")
    with pytest.raises(LLMError, match="torch.dtype"):
        TransformersChatLLM.from_pretrained(str(tmp_path), device="cpu", dtype="bf16")
    with pytest.raises(CaptionerError, match="torch.dtype"):
        BlipCaptioner.from_pretrained(str(tmp_path), device="cpu", dtype="auto")


def test_the_components_load_in_the_dtype_they_are_given(tmp_path):
    blip_dir = build_tiny_blip(tmp_path / "blip")
    assert BlipCaptioner.from_pretrained(blip_dir, device="cpu").model.dtype == torch.float32
    assert BlipCaptioner.from_pretrained(blip_dir, device="cpu", dtype=torch.bfloat16).model.dtype == torch.bfloat16
    chat_dir = build_tiny_chat_lm(tmp_path / "chat")
    assert TransformersChatLLM.from_pretrained(chat_dir, device="cpu").model.dtype == torch.float32
    assert TransformersChatLLM.from_pretrained(chat_dir, device="cpu", dtype=torch.float16).model.dtype == torch.float16


@pytest.mark.parametrize("capability, auto", [((7, 5), torch.float32), ((8, 0), torch.bfloat16)])
def test_the_llm_never_runs_in_fp16_unless_asked(monkeypatch, capability, auto):
    """A T4 (7.5) has no native bf16: VLE and BLIP take fp16 there, the LLM fp32 (fp16 overflows in Qwen2.5)."""
    from vqa_llm.loading import resolve_llm_dtype

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_dtype("auto", "cuda:0") == (torch.float16 if capability < (8, 0) else torch.bfloat16)
    assert resolve_llm_dtype(None, "cuda:0") == resolve_llm_dtype("auto", "cuda:0") == auto
    assert resolve_llm_dtype("float16", "cuda:0") == torch.float16  # asked by name: kept
    assert resolve_llm_dtype(None, "cpu") == torch.float32
