"""What a perfect refiner could reach on easy-VQA: a fixed rule over the same evidence the LLM sees.

    .venv/bin/python bench/refiner_ceiling.py                      # 2,000 test questions, seed 0
    .venv/bin/python bench/refiner_ceiling.py --limit 500 --seed 1

On easy-VQA the caption alone decides every question ("a green circle" answers "is there not a black shape?").
For each VQA model (the bundled VLE and vle-easyvqa-weak) this prints the official VQA accuracy of its top-1, of
the answer read from the bundled BLIP's caption, and of the rule "keep the top candidate when the prompt shows it
as 1.00 (score >= 0.995), else follow the caption", with fixed/broken counts against the top-1. The rule is what
a refiner could learn from the prompt; the figures bound what training data and a bigger LLM can buy.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from training.refiner_data import caption_answer, collect_evidence
from vqa_llm.evaluation.data import load_dataset, sample_examples
from vqa_llm.metrics import vqa_accuracy

REPO_ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    models = REPO_ROOT / "assets" / "models"
    examples = sample_examples(load_dataset("easy-vqa", split="test"), args.limit, seed=args.seed)
    print("| VQA model | questions | top-1 | caption | rule | fixed | broken |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as cache:
        for name in ("vle-easyvqa", "vle-easyvqa-weak"):
            evidence = collect_evidence(examples, str(models / name), str(models / "blip-easyvqa"), cache)
            top = caption = rule = 0.0
            fixed = broken = 0
            for ev in evidence:
                first = ev.candidates[0][0]
                from_caption = caption_answer(ev)
                chosen = first if ev.top_is_sure or from_caption is None else from_caption
                raw, ruled = vqa_accuracy(first, ev.answers), vqa_accuracy(chosen, ev.answers)
                top, rule = top + raw, rule + ruled
                caption += vqa_accuracy(from_caption or "", ev.answers)
                fixed, broken = fixed + (ruled > raw), broken + (ruled < raw)
            n = len(evidence)
            print(f"| {name} | {n} | {100 * top / n:.2f} | {100 * caption / n:.2f} | {100 * rule / n:.2f} "
                  f"| {fixed} | {broken} |")


if __name__ == "__main__":
    main()
