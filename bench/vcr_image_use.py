"""Does a VCR model look at the image? Accuracy with the true images, the images of other items, and blank images.

    .venv/bin/python bench/vcr_image_use.py --model assets/models/vle-shapes-vcr-q2a --task q2a \\
        --annotations build_cache/bundle/vcr/test-scenes/test.jsonl --images build_cache/bundle/vcr/test-scenes/images

A model that reads the image loses accuracy when its items get the wrong image; one that answers from the
texts' regularities alone (which answers are ever right) does not. Also prints how far the pooled fusion output
moves when the images are swapped, relative to its size (``pooled_shift``; near 1: dominated by the image, near
0: the image hardly matters). Prints a Markdown table (overall and per question kind) and, last, a JSON line.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch

from vle import VLEForVCRQ2A, VLEForVCRQA2R, VLEProcessor
from vle.vcr_data import load_vcr
from vle.vcr_encoding import collate_vcr, encode_vcr_item

MODES = ("true", "other items'", "blank")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="VCR checkpoint folder or Hub id")
    parser.add_argument("--task", choices=["q2a", "qa2r"], required=True)
    parser.add_argument("--annotations", required=True, help="labelled VCR file (*.jsonl)")
    parser.add_argument("--images", required=True, help="its images folder")
    parser.add_argument("--limit", type=int, default=300, help="first N items (default: 300)")
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()
    model = (VLEForVCRQ2A if args.task == "q2a" else VLEForVCRQA2R).from_pretrained(args.model).eval()
    processor = VLEProcessor.from_pretrained(args.model)
    items = load_vcr(args.annotations, args.images, require_labels=True)[: args.limit]
    encoded = [encode_vcr_item(i.annotation(), i.image_path, i.metadata(), processor, model.config, args.task)
               for i in items]
    right: dict[str, dict[str, list[bool]]] = {mode: defaultdict(list) for mode in MODES}
    shifts = []
    with torch.inference_mode():
        for start in range(0, len(items), args.batch_size):
            batch = collate_vcr(encoded[start:start + args.batch_size], pad_id=processor.tokenizer.pad_token_id)
            pixels = batch["pixel_values"]
            outputs = {}
            for mode, images in zip(MODES, (pixels, pixels.roll(1, 0), torch.zeros_like(pixels))):
                outputs[mode] = model(**{**batch, "pixel_values": images})
            pooled, swapped = outputs["true"].pooler_output, outputs["other items'"].pooler_output
            shifts.append(((pooled - swapped).norm(dim=-1) / pooled.norm(dim=-1)).mean().item())
            for mode, output in outputs.items():
                for item, predicted in zip(items[start:start + args.batch_size], output.logits.argmax(-1).tolist()):
                    label = item.answer_label if args.task == "q2a" else item.rationale_label
                    right[mode][item.question_kind or "all"].append(predicted == label)
                    right[mode]["overall"].append(predicted == label)
    kinds = ["overall", *sorted(k for k in right["true"] if k != "overall")]
    print("| question kind | n | " + " | ".join(f"{mode} images" for mode in MODES) + " |")
    print("|---|---|" + "---|" * len(MODES))
    for kind in kinds:
        cells = [f"{100 * sum(right[m][kind]) / len(right[m][kind]):.1f}%" for m in MODES]
        print(f"| {kind} | {len(right['true'][kind])} | " + " | ".join(cells) + " |")
    result = {m: round(100 * sum(right[m]["overall"]) / len(right[m]["overall"]), 2) for m in MODES}
    print(json.dumps({"model": args.model, "task": args.task, "accuracy": result,
                      "pooled_shift": round(sum(shifts) / len(shifts), 3)}))


if __name__ == "__main__":
    main()
