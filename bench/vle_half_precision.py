"""Top-1 agreement of a VLE VQA model in bf16 / fp16 with fp32, on easy-VQA test questions.

    python bench/vle_half_precision.py                       # bundled model, whole test split, on the CPU
    python bench/vle_half_precision.py --device cuda --limit 2000

The app runs VLE in half precision on CUDA (``vqa_llm.loading.resolve_dtype``); this measures what that costs in
answers. Each dtype is loaded through ``vqa_llm.loading.load_vqa_model``, as the app does. Prints one line per
dtype and a last-line JSON object. On the CPU fp16 is slow (no fp16 matmul kernels to speak of).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

REPO_ROOT = Path(__file__).resolve().parents[1]


def top1(model, batches: list[dict], device: str) -> torch.Tensor:
    """The argmax answer id of every question."""
    dtype = next(model.parameters()).dtype
    with torch.inference_mode():
        return torch.cat([model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device),
                                token_type_ids=b["token_type_ids"].to(device),
                                pixel_values=b["pixel_values"].to(device, dtype)).logits.float().argmax(-1).cpu()
                          for b in batches])


def main(argv: list[str] | None = None) -> int:
    from training.vqa_finetune import VQATrainingSet, collate
    from vle.vqa_data import load_easy_vqa
    from vqa_llm.loading import load_vqa_model
    from vqa_llm.profiles import BUNDLED_VQA_DIR

    parser = argparse.ArgumentParser(prog="bench/vle_half_precision.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(BUNDLED_VQA_DIR), help="VLE VQA folder (default: the bundled one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, help="first N test questions (default: all 9,673)")
    parser.add_argument("--dtypes", default="bfloat16,float16")
    args = parser.parse_args(argv)

    exact, processor = load_vqa_model(args.model, args.device, local_files_only=True, dtype="float32")
    test = load_easy_vqa("test")[: args.limit]
    dataset = VQATrainingSet(test, processor, {k: int(v) for k, v in exact.config.label2id.items()})
    batches = list(DataLoader(dataset, batch_size=256, collate_fn=partial(collate, num_labels=exact.config.num_labels)))
    reference = top1(exact, batches, args.device)
    report = {"model": Path(args.model).name, "device": args.device, "questions": len(test), "agreement": {}}
    for name in args.dtypes.split(","):
        model, _ = load_vqa_model(args.model, args.device, local_files_only=True, dtype=name)
        started = time.perf_counter()
        answers = top1(model, batches, args.device)
        agree = (answers == reference).float().mean().item()
        report["agreement"][name] = round(agree, 5)
        print(f"{name}: top-1 agreement with fp32 {agree:.4%} ({int((answers != reference).sum())} of {len(test)} "
              f"differ), {time.perf_counter() - started:.1f} s")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
