"""LLM speed on the CPU, each runtime side by side in one run: prefill, decode and time to first token.

    OMP_NUM_THREADS=1 .venv/bin/python bench/llm_speed.py                      # both models, every path
    .venv/bin/python bench/llm_speed.py --models smollm2 --runs 5 --new-tokens 48
    .venv/bin/python bench/llm_speed.py --paths transformers llama.cpp --qwen-quant q4_1

Models:

* ``smollm2``: the bundled SmolLM2-135M-Instruct Q4_1 GGUF with the refiner adapter (when the bundle has it),
  prompted with a real refiner prompt (an easy-VQA caption, question and candidates).
* ``qwen``: a model of Qwen2.5-1.5B-Instruct's shape (28 layers, hidden 1536, 151,936-token vocabulary, tied
  embeddings) with random weights, built here from its config; for llama.cpp it is written to a GGUF file
  (``--qwen-quant`` q8_0 by default) with the ``gguf`` package. Its prompt is ``--prompt-tokens`` random ids.

Paths: ``transformers`` (fp32, ``generate``: what the app ran before), ``transformers-int8`` (the same with its
Linear layers in dynamic int8, ``torch.ao``), ``transformers-compile`` (static KV cache + ``torch.compile``;
not in the default list: compiling takes minutes), ``llama.cpp`` (``llm.llamacpp_backend``; the adapter applied
by llama.cpp). Every run generates exactly ``--new-tokens`` tokens greedily (end of turn ignored) from a fresh
state (no prompt cache); runs of the paths are interleaved round by round so that a busy machine slows them
alike, and medians are reported. TTFT is the time until the first new token is known (prefill + one step);
decode tokens/s counts the tokens after it. Threads: torch's (``OMP_NUM_THREADS``), the same for llama.cpp.

The last line is a JSON object: per model and path ``ttft_s``, ``prefill_tok_s``, ``decode_tok_s``, and
``decode_speedup`` of each path over ``transformers``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from llm.bundled import smollm2_gguf
from llm.llamacpp_backend import LlamaCppChatLLM
from llm.transformers_backend import TransformersChatLLM

ROOT = Path(__file__).resolve().parents[1]

PATHS = ("transformers", "transformers-int8", "transformers-compile", "llama.cpp")
DEFAULT_PATHS = ("transformers", "transformers-int8", "llama.cpp")
REFINER = ROOT / "assets" / "models" / "smollm2-easyvqa-refiner"
QWEN_SHAPE = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
                  rms_norm_eps=1e-6, tie_word_embeddings=True)
#: (timestamp of the first new token, timestamp of the last) for one run of a path
Timed = tuple[float, float]


# ------------------------------------------------------------------------------------------- transformers
class _Clock:
    """A generate() streamer that only records when each new token arrives."""

    def __init__(self):
        self.times: list[float] = []
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt
            self.prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def hf_runner(model, prompt: list[int], new_tokens: int, **generate_kwargs) -> Callable[[], Timed]:
    ids = torch.tensor([prompt])

    def run() -> Timed:
        clock = _Clock()
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                           pad_token_id=0, streamer=clock, **generate_kwargs)
        return clock.times[0], clock.times[-1]

    return run


def int8_copy(model):
    """The model with its Linear layers in dynamic int8 (the lm_head too), as ``torch.ao`` makes it."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)


def compiled(model):
    """The model with a static KV cache and its forward compiled (``torch.compile``)."""
    model = copy.deepcopy(model)
    model.generation_config.cache_implementation = "static"
    model.forward = torch.compile(model.forward, dynamic=False)
    return model


# ---------------------------------------------------------------------------------------------- llama.cpp
def llama_runner(llama, prompt: list[int], new_tokens: int) -> Callable[[], Timed]:
    def run() -> Timed:
        llama.reset()  # no prompt cache: every run reads the whole prompt
        times = []
        for _ in llama.generate(prompt, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            times.append(time.perf_counter())
            if len(times) == new_tokens:
                break
        return times[0], times[-1]

    return run


# ------------------------------------------------------------------------------------ the random 1.5B model
def random_qwen(seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**QWEN_SHAPE)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    model.tie_weights()
    return model.eval()


def write_qwen_gguf(model, path: Path, quant: str) -> Path:
    """``model`` (a Qwen2ForCausalLM) as a llama.cpp GGUF file: matrices in ``quant``, norms and biases in F32,
    and a filler vocabulary (byte symbols, fillers, ChatML specials) of the model's size."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    kind = {"q8_0": GGMLQuantizationType.Q8_0, "q4_1": GGMLQuantizationType.Q4_1,
            "q4_0": GGMLQuantizationType.Q4_0, "f16": GGMLQuantizationType.F16}[quant]
    config = model.config
    writer = GGUFWriter(str(path), "qwen2")
    writer.add_name("random-qwen2.5-1.5b-shape")
    writer.add_context_length(4096)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 1e6))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    symbols = _byte_symbols()
    fillers = [f"<f{i}>" for i in range(config.vocab_size - len(symbols) - len(specials))]
    tokens = symbols + fillers + specials
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - len(specials)) + [3] * len(specials))
    writer.add_token_merges(["Ġ t"])
    writer.add_eos_token_id(len(tokens) - 1)
    writer.add_bos_token_id(len(tokens) - 3)
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, tensor in model.state_dict().items():
        array = tensor.float().numpy()
        if name == "model.embed_tokens.weight":
            target = "token_embd.weight"
        elif name == "model.norm.weight":
            target = "output_norm.weight"
        elif name == "lm_head.weight":
            continue  # tied to the embeddings
        else:
            _, _, layer, rest = name.split(".", 3)
            module, _, leaf = rest.rpartition(".")
            target = f"blk.{layer}.{names[module]}.{leaf}"
        if array.ndim == 2:
            writer.add_tensor(target, quantize(array, kind), raw_dtype=kind)
        else:
            writer.add_tensor(target, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _byte_symbols() -> list[str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra, out = 0, []
    for byte in range(256):
        if byte in printable:
            out.append(chr(byte))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


# ------------------------------------------------------------------------------------------------ measuring
def refiner_prompt() -> list[dict]:
    from prompts import build_messages

    directory = REFINER / "templates" if (REFINER / "templates").is_dir() else None
    return build_messages("short", "a red circle on a white background", "what shape is in the image?",
                          [("circle", 0.93), ("rectangle", 0.04), ("triangle", 0.02)], directory=directory)


def measure(runners: dict[str, Callable[[], Timed]], prompt_tokens: int, new_tokens: int, runs: int,
            started: float) -> dict[str, dict]:
    for name, run in runners.items():  # warm-up, untimed
        t0 = time.perf_counter()
        run()
        print(f"  warm-up {name}: {time.perf_counter() - t0:.1f} s ({time.perf_counter() - started:.0f} s in)",
              flush=True)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    for round_ in range(runs):
        for name, run in runners.items():
            t0 = time.perf_counter()
            first, last = run()
            samples[name].append((first - t0, (new_tokens - 1) / (last - first)))
        print(f"  round {round_ + 1}/{runs} done ({time.perf_counter() - started:.0f} s in)", flush=True)
    out = {}
    for name, values in samples.items():
        ttft = statistics.median(v[0] for v in values)
        out[name] = {"ttft_s": round(ttft, 4), "prefill_tok_s": round(prompt_tokens / ttft, 1),
                     "decode_tok_s": round(statistics.median(v[1] for v in values), 2),
                     "decode_tok_s_all": [round(v[1], 2) for v in values]}
    return out


def print_table(title: str, prompt_tokens: int, results: dict[str, dict]) -> None:
    base = results.get("transformers", {}).get("decode_tok_s")
    print(f"\n{title} ({prompt_tokens} prompt tokens)")
    print(f"{'path':<22}{'TTFT s':>9}{'prefill tok/s':>15}{'decode tok/s':>14}{'decode vs transformers':>24}")
    for name, r in results.items():
        ratio = f"{r['decode_tok_s'] / base:.2f}x" if base else "-"
        print(f"{name:<22}{r['ttft_s']:>9.3f}{r['prefill_tok_s']:>15.1f}{r['decode_tok_s']:>14.2f}{ratio:>24}")


def bench_smollm2(args, started: float) -> tuple[dict, dict]:
    directory, filename = smollm2_gguf()
    adapter = REFINER if (REFINER / "adapter_config.json").is_file() else None
    print(f"SmolLM2-135M-Instruct {filename}" + (f" + {adapter.name}" if adapter else "") + " ...", flush=True)
    hf = TransformersChatLLM.from_pretrained(directory, gguf_file=filename, device="cpu", adapter=adapter)
    fast = LlamaCppChatLLM.from_gguf(Path(directory) / filename, adapter=adapter)
    messages = refiner_prompt()
    prompt = hf.tokenizer(hf.prompt_text(messages), add_special_tokens=False).input_ids
    same_ids = fast.prompt_ids(messages) == prompt
    replies = {"transformers": hf.generate(messages, max_new_tokens=24),
               "llama.cpp": fast.generate(messages, max_new_tokens=24)}
    runners = build_runners(args.paths, hf.model, prompt, args.new_tokens, fast.llama)
    results = measure(runners, len(prompt), args.new_tokens, args.runs, started)
    print_table(f"SmolLM2-135M{' + refiner' if adapter else ''}", len(prompt), results)
    print(f"same prompt token ids in both runtimes: {same_ids}; greedy replies: {json.dumps(replies)}")
    extra = {"prompt_tokens": len(prompt), "same_prompt_ids": same_ids,
             "same_greedy_reply": replies["transformers"] == replies["llama.cpp"], "adapter": bool(adapter)}
    return results, extra


def bench_qwen(args, started: float) -> tuple[dict, dict]:
    print("Qwen2.5-1.5B-shaped model, random weights ...", flush=True)
    model = random_qwen()
    print(f"  built: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters "
          f"({time.perf_counter() - started:.0f} s in)", flush=True)
    prompt = np.random.default_rng(0).integers(300, 150000, size=args.prompt_tokens).tolist()
    llama = None
    with tempfile.TemporaryDirectory() as folder:
        if "llama.cpp" in args.paths:
            path = write_qwen_gguf(model, Path(folder) / f"qwen-shape-{args.qwen_quant}.gguf", args.qwen_quant)
            print(f"  GGUF {args.qwen_quant}: {path.stat().st_size / 1e9:.2f} GB "
                  f"({time.perf_counter() - started:.0f} s in)", flush=True)
            import llama_cpp

            n = torch.get_num_threads()
            llama = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=n, n_threads_batch=n, verbose=False)
        runners = build_runners(args.paths, model, prompt, args.new_tokens, llama)
        results = measure(runners, len(prompt), args.new_tokens, args.runs, started)
    print_table(f"Qwen2.5-1.5B-shaped, random weights (llama.cpp: {args.qwen_quant})", len(prompt), results)
    return results, {"prompt_tokens": len(prompt), "llama_cpp_quant": args.qwen_quant}


def build_runners(paths, model, prompt, new_tokens, llama) -> dict[str, Callable[[], Timed]]:
    runners: dict[str, Callable[[], Timed]] = {}
    for path in paths:
        if path == "transformers":
            runners[path] = hf_runner(model, prompt, new_tokens)
        elif path == "transformers-int8":
            runners[path] = hf_runner(int8_copy(model), prompt, new_tokens)
        elif path == "transformers-compile":
            runners[path] = hf_runner(compiled(model), prompt, new_tokens)
        elif path == "llama.cpp":
            runners[path] = llama_runner(llama, prompt, new_tokens)
    return runners


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=("smollm2", "qwen"), default=["smollm2", "qwen"])
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(DEFAULT_PATHS))
    parser.add_argument("--runs", type=int, default=3, help="timed rounds per path (median; default 3)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per run (default 32)")
    parser.add_argument("--prompt-tokens", type=int, default=160, help="prompt length of the Qwen-shaped model")
    parser.add_argument("--qwen-quant", choices=("q8_0", "q4_1", "q4_0", "f16"), default="q8_0",
                        help="weight format of the Qwen-shaped GGUF for llama.cpp (default q8_0)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    print(f"threads: {torch.get_num_threads()} (torch and llama.cpp); paths: {', '.join(args.paths)}", flush=True)
    summary: dict = {"threads": torch.get_num_threads(), "new_tokens": args.new_tokens, "runs": args.runs}
    for name in args.models:
        results, extra = (bench_smollm2 if name == "smollm2" else bench_qwen)(args, started)
        base = results.get("transformers", {}).get("decode_tok_s")
        summary[name] = {**extra, **{path: {k: v for k, v in r.items() if k != "decode_tok_s_all"}
                                     for path, r in results.items()}}
        if base:
            summary[name]["decode_speedup"] = {p: round(r["decode_tok_s"] / base, 2) for p, r in results.items()
                                               if p != "transformers"}
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
