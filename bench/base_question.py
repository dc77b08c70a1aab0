"""One question on the ``base`` profile on a CPU, before and after the fast paths, side by side in one run.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/base_question.py            # 3 rounds, 32 new LLM tokens
    .venv/bin/python bench/base_question.py --rounds 5 --llm-quant q4_0

Models at the ``base`` profile's real sizes with random weights (nothing is downloaded):

* VLE: ``vle-base-for-vqa`` (576 px, CLIP ViT-B/16, DeBERTa-v3-base, 6 fusion layers; ``bench/vle_forward.py``);
* BLIP: ``blip-image-captioning-base`` sizes (``BlipConfig()``), 3 beams, exactly ``--caption-tokens`` tokens;
* LLM: Qwen2.5-1.5B-Instruct's shape (``bench/llm_speed.py``), ``--prompt-tokens`` prompt ids and exactly
  ``--new-tokens`` new tokens, greedy, no prompt cache.

Columns: **before** is what a CPU ran until now: VLE fp32, BLIP fp32, the LLM through transformers in fp32.
**after** is what runs now: ``--vqa-precision int8`` (VLE in this CPU's int8 mode, ``vqa_llm.fast_vle``; BLIP's
Linear layers in dynamic int8), the LLM through llama.cpp from a GGUF file in ``--llm-quant`` (Q4_K_M, the
quantisation of the official Qwen GGUF the profile downloads; quantised here with llama.cpp's own quantiser).
The stages of the two columns are interleaved round by round so a busy machine slows them alike; medians are
printed. The last line is a JSON object with per-stage seconds, ``before_s``, ``after_s`` and ``ratio``.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from llm_speed import hf_runner, llama_runner, random_qwen, write_qwen_gguf
from pipeline_latency import build_blip
from random_models import photo
from vle_forward import build_model, inputs, precision_model

from vle import quantize_int8
from vqa_llm.fast_vle import int8_runtime

STAGES = ("caption", "vqa", "llm")
#: llama.cpp file types (``llama_ftype``) of the quantisations this bench can make
LLAMA_FTYPES = {"q4_k_m": 15, "q4_0": 2, "q8_0": 7}


def quantize_gguf(source: Path, target: Path, quant: str) -> Path:
    """``source`` (an F16 GGUF) quantised to ``quant`` by llama.cpp's quantiser."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_FTYPES[quant]
    params.nthread = torch.get_num_threads()
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0:
        raise RuntimeError(f"llama.cpp could not quantise {source} to {quant} (status {status})")
    return target


def build_llms(workdir: Path, quant: str, prompt_tokens: int, new_tokens: int) -> dict[str, Callable]:
    """``{"before": transformers fp32 runner, "after": llama.cpp runner}`` for the same random 1.5B model."""
    from llm.llamacpp_backend import LlamaCppChatLLM

    model = random_qwen()
    if quant == "q4_k_m":  # the gguf package cannot write K-quants: F16 first, then llama.cpp's quantiser
        f16 = write_qwen_gguf(model, workdir / "qwen-f16.gguf", "f16")
        path = quantize_gguf(f16, workdir / f"qwen-{quant}.gguf", quant)
        f16.unlink()
    else:
        path = write_qwen_gguf(model, workdir / f"qwen-{quant}.gguf", quant)
    llama = LlamaCppChatLLM.from_gguf(path).llama
    prompt = torch.randint(300, 150_000, (prompt_tokens,), generator=torch.Generator().manual_seed(1)).tolist()
    return {"before": hf_runner(model, prompt, new_tokens), "after": llama_runner(llama, prompt, new_tokens)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (after one warm-up round)")
    parser.add_argument("--prompt-tokens", type=int, default=160, help="LLM prompt length (a short-template prompt)")
    parser.add_argument("--new-tokens", type=int, default=32, help="LLM new tokens")
    parser.add_argument("--caption-tokens", type=int, default=10, help="caption length in tokens")
    parser.add_argument("--llm-quant", choices=tuple(LLAMA_FTYPES), default="q4_k_m")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    started = time.perf_counter()
    vle = build_model()
    vle.config.fusion_attn_implementation = "sdpa"
    vle_inputs = inputs(1, vle.config.vision_config.image_size)
    with tempfile.TemporaryDirectory() as workdir:
        fast_vle = precision_model(vle, "int8", "auto", 8, workdir)
        captioner = build_blip(beams=3, tokens=args.caption_tokens)
        fast_captioner = copy.copy(captioner)
        fast_captioner.model = quantize_int8(copy.deepcopy(captioner.model))
        llms = build_llms(Path(workdir), args.llm_quant, args.prompt_tokens, args.new_tokens)
        image = photo(0)

        def vqa(model) -> Callable[[], object]:
            return lambda: model(**vle_inputs)

        runs = {
            "before": {"caption": lambda: captioner.caption([image]), "vqa": vqa(vle), "llm": llms["before"]},
            "after": {"caption": lambda: fast_captioner.caption([image]), "vqa": vqa(fast_vle),
                      "llm": llms["after"]},
        }
        print(f"built in {time.perf_counter() - started:.0f} s; torch threads {torch.get_num_threads()}; VLE int8 "
              f"mode here: {int8_runtime()}; LLM {args.llm_quant} GGUF, {args.prompt_tokens} prompt + "
              f"{args.new_tokens} new tokens", flush=True)
        times: dict[str, dict[str, list[float]]] = {c: {s: [] for s in STAGES} for c in runs}
        with torch.inference_mode():
            for round_no in range(args.rounds + 1):
                for column, stages in runs.items():
                    for stage in STAGES:
                        start = time.perf_counter()
                        stages[stage]()
                        if round_no:
                            times[column][stage].append(time.perf_counter() - start)
                if round_no:
                    print(f"round {round_no}: " + ", ".join(
                        f"{c} {sum(times[c][s][-1] for s in STAGES):.2f} s" for c in runs), flush=True)

    medians = {c: {s: statistics.median(t) for s, t in stages.items()} for c, stages in times.items()}
    totals = {c: sum(m.values()) for c, m in medians.items()}
    print("\n| stage | before (s) | after (s) | after / before |")
    print("|---|---:|---:|---:|")
    for stage in (*STAGES, "total"):
        before = totals["before"] if stage == "total" else medians["before"][stage]
        after = totals["after"] if stage == "total" else medians["after"][stage]
        print(f"| {stage} | {before:.2f} | {after:.2f} | {after / before:.2f} |")
    summary = {"vle_int8_mode": int8_runtime(), "llm_quant": args.llm_quant, "threads": torch.get_num_threads(),
               "before": {s: round(v, 3) for s, v in medians["before"].items()},
               "after": {s: round(v, 3) for s, v in medians["after"].items()},
               "before_s": round(totals["before"], 3), "after_s": round(totals["after"], 3),
               "ratio": round(totals["after"] / totals["before"], 3)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
