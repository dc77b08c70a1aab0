"""The seed's VCR mechanism, measured: accuracy with and without the object image tokens and object token types.

    .venv/bin/python bench/vcr_ablation.py --out build_cache/vcr-ablation --with-models assets/models

VLE's VCR models add, for every object a choice names, an image token (the mean of the patches under its box)
and a token type shared by that token and the words naming the object. This trains the bundle's recipe
(:func:`training.vcr_bundle.vcr_run_arguments`: same scenes, epochs, batch size, learning rate and seed) with
``object_tokens=False`` (choices fused with the image alone, object mentions as plain words), for both tasks, and
measures both arms on the same held-out scenes (seed :data:`training.vcr_bundle.TEST_SEED`, never used in
training) through the evaluator (``python -m vqa_llm.evaluate --dataset vcr``). ``--with-models`` takes the
"with" arm from already built models (the bundled ones are built by exactly this recipe); without it both arms
are trained here. ``--epochs`` and ``--train-items`` shorten both arms alike.

Prints a Markdown table (overall and per question kind: Q->A, QA->R, Q->AR per arm) and, last, a JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.vcr_bundle import (
    EPOCHS,
    VCR_DIR_NAMES,
    evaluate_vcr_models,
    held_out_scenes,
    scenes,
    vcr_run_arguments,
)
from training.vcr_finetune import train

ARMS = ("with", "without")
START = Path(__file__).resolve().parents[1] / "assets" / "models" / "vle-easyvqa-pretrain"


def model_dirs(arm: str, out: Path, data: Path, epochs: int, with_models: Path | None,
               train_annotations: Path | None = None) -> dict[str, Path]:
    """The arm's Q->A and QA->R model folders, trained unless they are there already."""
    if arm == "with" and with_models is not None:
        return {task: with_models / name for task, name in VCR_DIR_NAMES.items()}
    folders = {}
    for task in VCR_DIR_NAMES:
        folder = out / f"{arm}-{task}"
        if not (folder / "config.json").is_file():
            args, training = vcr_run_arguments(task, START, data, folder, object_tokens=arm == "with", epochs=epochs,
                                               train_annotations=train_annotations)
            train(args, training)
        folders[task] = folder
    return folders


def measure(models: dict[str, Path], test: Path, out: Path) -> dict:
    """The evaluator's summary of ``models`` on the held-out scenes (kept in ``out/eval`` and reused)."""
    run = out / "eval"
    if (run / "summary.json").is_file():
        return json.loads((run / "summary.json").read_text())
    return evaluate_vcr_models(models["q2a"], models["qa2r"], test, run)


def table(summaries: dict[str, dict]) -> str:
    """Markdown: one row per question kind (and overall), Q->A / QA->R / Q->AR per arm."""
    head = "| question kind | n | " + " | ".join(f"{arm}: Q→A | QA→R | Q→AR" for arm in ARMS) + " |"
    lines = [head, "|" + "---|" * (2 + 3 * len(ARMS))]
    kinds = ["overall", *summaries["with"].get("per_question_kind", {})]
    for kind in kinds:
        cells = []
        for arm in ARMS:
            stats = summaries[arm]["overall"] if kind == "overall" else summaries[arm]["per_question_kind"][kind]
            cells += [f"{stats[key]:.2f}" for key in ("q2a_accuracy", "qa2r_accuracy", "q2ar_accuracy")]
        stats = summaries["with"]["overall"] if kind == "overall" else summaries["with"]["per_question_kind"][kind]
        lines.append(f"| {kind} | {stats['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for scenes, models and evaluation runs")
    parser.add_argument("--with-models", type=Path, help="folder holding the built vle-shapes-vcr-* models")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"epochs of each arm (default: {EPOCHS})")
    parser.add_argument("--train-items", type=int, help="train each arm on the first N training scenes only "
                        "(both arms alike; then --with-models is not used)")
    args = parser.parse_args()
    data = scenes(args.out)
    test = held_out_scenes(args.out)
    subset = None
    if args.train_items:
        subset = args.out / f"train-first-{args.train_items}.jsonl"
        lines = (data / "train.jsonl").read_text().splitlines()[: args.train_items]
        subset.write_text("\n".join(lines) + "\n")
    same_recipe = args.epochs == EPOCHS and not args.train_items
    summaries = {}
    for arm in ARMS:
        models = model_dirs(arm, args.out, data, args.epochs, args.with_models if same_recipe else None, subset)
        summaries[arm] = measure(models, test, args.out / arm)
    print(table(summaries))
    print(json.dumps({arm: summaries[arm]["overall"] for arm in ARMS}))


if __name__ == "__main__":
    main()
