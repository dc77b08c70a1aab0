"""A tiny GGUF chat model for tests: a random 2-layer Llama (hidden 32) with a byte-level BPE tokenizer and a
ChatML template, written with the ``gguf`` package in the layout of the bundled SmolLM2 file (Q4_1 matrices,
Q8_0 embeddings, F32 norms), so that transformers de-quantises it the same way; or the same in the Qwen2
architecture (query/key/value biases, as the Qwen2.5 GGUFs), optionally split in parts as the Hub's large GGUFs
(``NAME-00001-of-0000N.gguf``). Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("Ġ", "t"), ("h", "e"), ("i", "n"), ("Ġt", "he"), ("o", "u"), ("Ġ", "a")]
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for the bytes 0..255, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def _tokens() -> list[str]:
    return SPECIALS + byte_symbols() + [a + b for a, b in MERGES]


def write_tiny_gguf(path: str | Path, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 4,
                    kv_heads: int = 2, ffn: int = 64, context: int = 2048, scale: float = 0.2,
                    quantized: bool = True, architecture: str = "llama", split_max_tensors: int = 0) -> Path:
    """Write the tiny model to ``path`` (a ``.gguf`` file) and return it; ``seed`` fixes the weights, ``scale`` is
    their standard deviation (a larger one makes the logits peaky, so that greedy decoding does not hinge on
    rounding differences between runtimes); ``quantized=False`` stores every matrix in F32 instead of Q4_1/Q8_0
    (two runtimes then differ by float rounding only, not by how each multiplies quantised weights).
    ``architecture``: ``llama`` or ``qwen2``; ``split_max_tensors`` > 0 writes the model in parts of at most that
    many tensors, named as llama.cpp's gguf-split names them, and returns the first part."""
    if architecture not in ("llama", "qwen2"):
        raise ValueError(f"architecture must be llama or qwen2, not {architecture!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens = _tokens()
    vocab = len(tokens)
    head_dim = hidden // heads
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(str(path), architecture, split_max_tensors=split_max_tensors)
    writer.add_name("tiny-test-llama")
    writer.add_context_length(context)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_rope_dimension_count(head_dim)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2" if architecture == "qwen2" else "default")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIALS) + [1] * (vocab - len(SPECIALS)))
    writer.add_token_merges([f"{a} {b}" for a, b in MERGES])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)

    def matrix(name: str, rows: int, cols: int, kind: GGMLQuantizationType = GGMLQuantizationType.Q4_1) -> None:
        weights = rng.normal(0.0, scale, size=(rows, cols)).astype(np.float32)
        if quantized:
            writer.add_tensor(name, quantize(weights, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, weights)

    def norm(name: str) -> None:
        writer.add_tensor(name, (1.0 + rng.normal(0.0, 0.05, size=hidden)).astype(np.float32))

    matrix("token_embd.weight", vocab, hidden, GGMLQuantizationType.Q8_0)
    for i in range(layers):
        norm(f"blk.{i}.attn_norm.weight")
        matrix(f"blk.{i}.attn_q.weight", hidden, hidden)
        matrix(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden)
        matrix(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden)
        if architecture == "qwen2":
            for name, size in (("attn_q", hidden), ("attn_k", kv_heads * head_dim), ("attn_v", kv_heads * head_dim)):
                writer.add_tensor(f"blk.{i}.{name}.bias", rng.normal(0.0, scale, size=size).astype(np.float32))
        matrix(f"blk.{i}.attn_output.weight", hidden, hidden)
        norm(f"blk.{i}.ffn_norm.weight")
        matrix(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        matrix(f"blk.{i}.ffn_up.weight", ffn, hidden)
        matrix(f"blk.{i}.ffn_down.weight", hidden, ffn)
    norm("output_norm.weight")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if split_max_tensors:
        return path.with_name(f"{path.stem}-00001-of-{len(writer.tensors):05d}.gguf")
    return path
