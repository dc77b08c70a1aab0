"""A GGUF copy of a model with a ``peft`` LoRA adapter folded into its weights, written once, for llama.cpp.

Applied at run time (:mod:`llm.lora_gguf`), an adapter adds two small matrix products to every adapted
projection; on a small model on a CPU those extra operations cost as much as the model's own ones (SmolLM2-135M
with the bundled refiner: ≈ 40% of a decode step, docs/benchmarks.md#load). Folding ``scale * B A`` into
each adapted weight once removes them. The merged weights are stored as they were when the base file keeps them
in full precision (F32/F16/BF16: the merge is then exact up to that precision) and as Q8_0 when it keeps them
quantised: re-quantising ``W + scale * B A`` to 4 bits would lose the adapter's small changes, Q8_0 keeps them
(its step is about 1/17 of Q4_1's) and llama.cpp's x86 kernels run it faster than Q4_1. Every other tensor and
all metadata are copied unchanged.

Where: ``$VQA_LLM_CACHE/merged-gguf/<key>/model.gguf`` (see :mod:`llm.gguf_cache`), the key hashing the base
file, the adapter (:func:`llm.lora_gguf.adapter_key`) and this format, so a retrained adapter or another base
gets a new file. Writing is atomic. Without a writable cache nothing is merged and the caller applies the adapter
at run time instead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .adapters import ADAPTER_CONFIG, check_adapter_dir
from .gguf_cache import cache_root
from .lora_gguf import BaseShape, adapter_key, adapter_tensors, check_config, write_gguf_atomically

FORMAT = 1
KEY_DIGITS = 16
FILENAME = "model.gguf"


def merged_key(base_file: Path, folder: Path, base: BaseShape) -> str:
    """Cache key: the base file's bytes, the adapter's key and this module's format."""
    digest = hashlib.sha256(f"{FORMAT}|{adapter_key(folder, base)}|".encode())
    with open(base_file, "rb") as handle:
        digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:KEY_DIGITS]


def write_merged_gguf(base_file: Path, folder: Path, base: BaseShape, path: Path) -> Path:
    """Write ``base_file`` with the adapter ``folder`` folded in to ``path`` (atomically); return ``path``.
    Raises :class:`~llm.lora_gguf.UnsupportedAdapterError` for an adapter llama.cpp cannot apply."""
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
    from gguf.quants import dequantize, quantize

    scaling = check_config(json.loads((folder / ADAPTER_CONFIG).read_text()))
    lora = adapter_tensors(folder, base)
    reader = GGUFReader(str(base_file))
    full = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)

    def fill(writer) -> None:
        for field in reader.fields.values():
            if field.name.startswith("GGUF.") or field.name == "general.architecture":
                continue  # written by the writer itself
            kind = field.types[0]
            sub = field.types[-1] if kind == GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
        for tensor in reader.tensors:
            a, b = lora.get(f"{tensor.name}.lora_a"), lora.get(f"{tensor.name}.lora_b")
            if a is None:
                writer.add_tensor(tensor.name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type)
                continue
            weight = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
            weight = weight.reshape(b.shape[0], a.shape[1]) + np.float32(scaling) * (b @ a)
            kind = tensor.tensor_type if tensor.tensor_type in full else GGMLQuantizationType.Q8_0
            if kind == GGMLQuantizationType.F32:
                writer.add_tensor(tensor.name, weight)
            else:
                data = quantize(weight, kind)
                writer.add_tensor(tensor.name, data, raw_shape=data.shape, raw_dtype=kind)

    return write_gguf_atomically(path, base.architecture, fill)


def cached_merged_gguf(base_file: str | Path, adapter: str | Path, base: BaseShape) -> Path | None:
    """The merged GGUF file of ``base_file`` + ``adapter``, written on first use; ``None`` when caching is off or
    the cache cannot be written (the caller then applies the adapter at run time)."""
    folder = check_adapter_dir(adapter)
    root = cache_root()
    if root is None:
        return None
    target = root / "merged-gguf" / merged_key(Path(base_file), folder, base) / FILENAME
    if target.is_file():
        return target
    try:
        return write_merged_gguf(Path(base_file), folder, base, target)
    except OSError:
        return None
