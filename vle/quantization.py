"""A CPU fast mode for VLE: dynamic int8 quantisation of the Linear layers (weights int8, activations
quantised on the fly per batch).

    from vle import VLEForVQA, quantize_int8
    model = quantize_int8(VLEForVQA.from_pretrained("hfl/vle-base-for-vqa").eval())

Nearly all of VLE's compute is in Linear layers (the CLIP and DeBERTa encoders and the fusion layers), so this
is where int8 pays; convolutions (the CLIP patch embedding), layer norms, embeddings and attention's own matmuls
stay fp32. Outputs differ from fp32 by quantisation noise, so fp32 stays the exact default; ``bench/vle_forward.py
--precision fp32 int8`` measures the speed-up and ``docs/speed.md`` the accuracy on easy-VQA.

Backends: ``"torch.ao"`` is PyTorch's own ``quantize_dynamic`` (fbgemm/oneDNN kernels, no extra package; measured
faster on CPU than the alternative), ``"torchao"`` is the ``torchao`` package's ``quantize_`` with
``Int8DynamicActivationInt8WeightConfig`` (``pip install torchao``), the successor PyTorch points to.
``"auto"`` takes ``torch.ao`` while PyTorch still ships it, else ``torchao``. CPU only: quantised models cannot
move to a GPU.
"""

from __future__ import annotations

import importlib.util
import warnings

import torch
from torch import nn

from .errors import VLEError

PRECISIONS = ("fp32", "int8")
INT8_BACKENDS = ("auto", "torch.ao", "torchao")


def check_precision(precision: str) -> str:
    """``precision`` normalised (``"fp32"`` or ``"int8"``); VLEError naming the choices otherwise."""
    value = str(precision).strip().lower()
    if value not in PRECISIONS:
        raise VLEError(f"Unknown VQA precision {precision!r}: use fp32 (exact, the default) or int8 (faster on CPU).")
    return value


def _torch_ao_available() -> bool:
    try:
        from torch.ao.quantization import quantize_dynamic  # noqa: F401
    except ImportError:
        return False
    return True


def _resolve_backend(backend: str) -> str:
    if backend not in INT8_BACKENDS:
        raise VLEError(f"Unknown int8 backend {backend!r}: use one of {', '.join(INT8_BACKENDS)}.")
    if backend == "auto":
        return "torch.ao" if _torch_ao_available() else "torchao"
    return backend


def quantize_int8(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Quantise ``model``'s ``nn.Linear`` layers to dynamic int8 in place and return it (eval mode, CPU).

    Raises VLEError when the model is not on the CPU or the chosen backend is not installed.
    """
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise VLEError(f"int8 quantisation runs on the CPU only; the model is on {', '.join(sorted(devices))}. "
                       "Use fp32 on a GPU, or load the model on the CPU.")
    backend = _resolve_backend(backend)
    model.eval()
    if backend == "torch.ao":
        if not _torch_ao_available():
            raise VLEError("This PyTorch has no torch.ao.quantization; use backend='torchao' (pip install torchao).")
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():  # torch announces the move to torchao on every call
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    if importlib.util.find_spec("torchao") is None:
        raise VLEError("int8 with backend='torchao' needs the torchao package: pip install torchao")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model


def is_quantized(model: nn.Module) -> bool:
    """Whether :func:`quantize_int8` (either backend) has been applied to ``model``."""
    for module in model.modules():
        if type(module).__module__.startswith("torch.ao.nn.quantized"):
            return True
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Linear) and weight is not None and type(weight) is not nn.Parameter \
                and type(weight) is not torch.Tensor:
            return True  # torchao swaps the weight for a quantised tensor subclass
    return False
