"""A ``peft`` LoRA adapter rewritten as a llama.cpp LoRA file (GGUF), once, for :mod:`llm.llamacpp_backend`.

llama.cpp applies a LoRA adapter at run time (``W x + scale * B (A x)``) on top of the quantised base weights,
so the base GGUF file is used as it is and the refiner costs a few small matrix products per layer; no merged
copy of the model is written. The adapter file holds ``lora_a`` / ``lora_b`` per adapted matrix, under
llama.cpp's tensor names (``blk.N.attn_q.weight.lora_a`` ...), with ``adapter.lora.alpha`` set so that
llama.cpp's ``alpha / r`` equals peft's scaling (rsLoRA included). For the ``llama`` architecture the rows of
``B`` on the query and key projections are permuted the way llama.cpp's converter permutes those weights
(rotary layout), which is what transformers undoes when it reads the same GGUF file.

Supported: plain LoRA on the attention and MLP projections of ``llama`` and ``qwen2`` models (what the
bundled refiner is), per-module ranks included. Anything else (DoRA, biases, ``modules_to_save``, embedding or
output-head adapters, per-module alphas, other architectures) raises :class:`UnsupportedAdapterError`; the
caller then uses transformers.

Where: ``$VQA_LLM_CACHE/lora-gguf/<key>/adapter.gguf`` (see :mod:`llm.gguf_cache` for ``VQA_LLM_CACHE``), the
key hashing the adapter's config and weights and the base model's head counts, so a retrained adapter in the
same folder gets a new file. Writing is atomic (temporary file, then rename). With caching off the file goes to
a temporary folder that the caller deletes once llama.cpp has read it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .adapters import ADAPTER_CONFIG, check_adapter_dir
from .errors import LLMError
from .gguf_cache import cache_root

FORMAT = 1
KEY_DIGITS = 16
FILENAME = "adapter.gguf"
#: peft module name -> llama.cpp tensor name inside ``blk.N.``
MODULES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
ARCHITECTURES = ("llama", "qwen2")
_KEY = re.compile(r"(?:.*\.)?layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\.lora_([AB])\.weight$")


class UnsupportedAdapterError(LLMError):
    """The adapter cannot be expressed as a llama.cpp LoRA file (the transformers runtime can still load it)."""


@dataclass(frozen=True)
class BaseShape:
    """What the conversion needs to know about the base model."""

    architecture: str
    n_head: int
    n_head_kv: int
    #: the model's context length (not part of the adapter's key)
    context: int | None = None


def shape_from_metadata(metadata: Mapping[str, str]) -> BaseShape:
    """The :class:`BaseShape` of a GGUF model from its metadata (key -> value as text, as llama.cpp lists it)."""
    arch = metadata.get("general.architecture", "")
    n_head = int(metadata.get(f"{arch}.attention.head_count") or 0)
    context = metadata.get(f"{arch}.context_length")
    return BaseShape(arch, n_head, int(metadata.get(f"{arch}.attention.head_count_kv") or n_head),
                     int(context) if context else None)


def _weights_file(folder: Path) -> Path:
    file = folder / "adapter_model.safetensors"
    if not file.is_file():
        raise UnsupportedAdapterError(f"{folder} has no adapter_model.safetensors (a .bin adapter is not converted "
                                      "for llama.cpp).")
    return file


def check_config(config: dict) -> float:
    """peft's LoRA scaling (``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA) if llama.cpp can apply this
    adapter; UnsupportedAdapterError saying why not otherwise."""
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')}")
    for flag in ("use_dora", "use_qalora", "fan_in_fan_out", "lora_bias"):
        if config.get(flag):
            problems.append(flag)
    if config.get("bias", "none") != "none":
        problems.append(f"bias={config['bias']}")
    for field in ("modules_to_save", "alpha_pattern", "layer_replication", "trainable_token_indices"):
        if config.get(field):
            problems.append(field)
    if config.get("use_rslora") and config.get("rank_pattern"):
        problems.append("use_rslora with rank_pattern")
    if problems:
        raise UnsupportedAdapterError("llama.cpp cannot apply this LoRA adapter (" + ", ".join(problems) + ").")
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    return alpha / rank ** 0.5 if config.get("use_rslora") else alpha / rank


def _permute_rows(matrix: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter's row permutation of a query/key projection (HF rotary halves -> interleaved)."""
    rows = matrix.shape[0]
    return matrix.reshape(n_head, 2, rows // n_head // 2, *matrix.shape[1:]).swapaxes(1, 2).reshape(matrix.shape)


def adapter_tensors(folder: Path, base: BaseShape) -> dict[str, np.ndarray]:
    """llama.cpp tensor name -> float32 array of every LoRA matrix in the adapter folder."""
    from safetensors.numpy import load_file

    if base.architecture not in ARCHITECTURES:
        raise UnsupportedAdapterError(f"LoRA adapters are converted for llama.cpp on {', '.join(ARCHITECTURES)} "
                                      f"models, not {base.architecture!r}.")
    try:
        raw = load_file(str(_weights_file(folder)))
    except (OSError, ValueError) as exc:
        raise UnsupportedAdapterError(f"Could not read the adapter weights in {folder}: {exc}") from exc
    tensors: dict[str, np.ndarray] = {}
    for key, value in raw.items():
        match = _KEY.match(key)
        if match is None:
            raise UnsupportedAdapterError(f"llama.cpp cannot apply the adapter tensor {key!r} (only LoRA on the "
                                          "attention and MLP projections is converted).")
        layer, module, which = match.groups()
        array = value.astype(np.float32)
        if which == "B" and base.architecture == "llama" and module in ("self_attn.q_proj", "self_attn.k_proj"):
            array = _permute_rows(array, base.n_head if module == "self_attn.q_proj" else base.n_head_kv)
        tensors[f"blk.{layer}.{MODULES[module]}.weight.lora_{which.lower()}"] = np.ascontiguousarray(array)
    pairs = {name.rsplit(".", 1)[0] for name in tensors}
    if not pairs or any(f"{p}.lora_a" not in tensors or f"{p}.lora_b" not in tensors for p in pairs):
        raise UnsupportedAdapterError(f"The adapter in {folder} has no complete lora_A/lora_B pairs.")
    return tensors


def write_adapter_gguf(folder: Path, base: BaseShape, path: Path) -> Path:
    """Write the llama.cpp LoRA file of the adapter ``folder`` to ``path`` (atomically); return ``path``."""
    from gguf import GGUFWriter

    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    scaling = check_config(config)
    tensors = adapter_tensors(folder, base)
    rank = int(config["r"])

    def fill(writer: GGUFWriter) -> None:
        writer.add_type("adapter")
        writer.add_string("adapter.type", "lora")
        # llama.cpp scales each matrix pair by alpha / (its own rank): peft's alpha / r, rank_pattern included
        writer.add_float32("adapter.lora.alpha", scaling * rank)
        for name, array in sorted(tensors.items()):
            writer.add_tensor(name, array)

    return write_gguf_atomically(path, base.architecture, fill)


def write_gguf_atomically(path: Path, architecture: str, fill: Callable[[Any], None]) -> Path:
    """A GGUF file at ``path`` whose metadata and tensors ``fill(writer)`` adds to a ``gguf.GGUFWriter``: written
    to a temporary file beside it, then renamed, so a reader never sees half a file. Returns ``path``."""
    from gguf import GGUFWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    os.close(handle)
    try:
        writer = GGUFWriter(temp, architecture)
        fill(writer)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return path


def adapter_key(folder: Path, base: BaseShape) -> str:
    """Cache key: the adapter's config and weights bytes and the base model's shape."""
    digest = hashlib.sha256(f"{FORMAT}|{base.architecture}|{base.n_head}|{base.n_head_kv}|".encode())
    for file in (folder / ADAPTER_CONFIG, _weights_file(folder)):
        with open(file, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:KEY_DIGITS]


def cached_adapter_gguf(adapter: str | Path, base: BaseShape) -> tuple[Path, bool]:
    """``(path, temporary)``: the llama.cpp LoRA file of ``adapter``, converted on first use. ``temporary`` is
    True when caching is off or the cache cannot be written: the caller deletes the file after loading it."""
    folder = check_adapter_dir(adapter)
    root = cache_root()
    if root is not None:
        target = root / "lora-gguf" / adapter_key(folder, base) / FILENAME
        if target.is_file():
            return target, False
        try:
            return write_adapter_gguf(folder, base, target), False
        except OSError:
            pass  # unwritable cache: a temporary file below
    temp_dir = Path(tempfile.mkdtemp(prefix="vqa_llm-lora-"))
    return write_adapter_gguf(folder, base, temp_dir / FILENAME), True
