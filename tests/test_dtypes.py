"""The captioner and the LLM backend each resolve dtype names (the component packages may not share code); both
must pick the same dtype for the same request, including the fp16 fallback on GPUs without bf16."""

import pytest
import torch

from captioner import CaptionerError
from captioner.blip import resolve_dtype as captioner_dtype
from llm import LLMError
from llm.transformers_backend import resolve_dtype as llm_dtype

RESOLVERS = pytest.mark.parametrize("resolve", [captioner_dtype, llm_dtype], ids=["captioner", "llm"])


@RESOLVERS
@pytest.mark.parametrize("bf16_ok, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_on_cuda_prefers_bf16_and_falls_back_to_fp16(resolve, bf16_ok, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    assert resolve("auto", "cuda:0") == expected
    assert resolve(None, "cuda") == expected


@RESOLVERS
def test_auto_on_cpu_is_fp32_and_names_map_to_dtypes(resolve):
    assert resolve("auto", "cpu") == torch.float32
    assert resolve("BF16", "cpu") == torch.bfloat16
    assert resolve("half", "cuda") == torch.float16
    assert resolve(torch.float16, "cpu") == torch.float16


@RESOLVERS
def test_unknown_dtype_name_is_a_clear_error(resolve):
    with pytest.raises((CaptionerError, LLMError), match="Unknown dtype 'int3'.*'bfloat16'"):
        resolve("int3", "cpu")
