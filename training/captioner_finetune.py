"""Training and fine-tuning BLIP captioners:
``python -m training.captioner_finetune --pairs pairs.jsonl --output_dir DIR``.

Each JSONL line is ``{"image": path, "caption": str}`` (optionally ``"label": str`` for vision
pre-training). Without ``--model`` a NEW small BLIP is built from scratch (WordPiece vocabulary trained
on the captions, see :mod:`training.blip_scratch`); with ``--model ID_OR_PATH`` that checkpoint is fine-tuned.

Training runs on transformers' ``Trainer`` (:mod:`training.captioner_trainer`): AdamW, linear warm-up + decay,
gradient accumulation, gradient clipping, bf16/fp16 mixed precision on CUDA, multi-GPU with ``accelerate launch
-m training.captioner_finetune ...``, an evaluation per epoch (loss + exact match of greedy captions on a
held-out set), a checkpoint per epoch (``DIR/checkpoints/checkpoint-STEP``, continue with ``--resume``), tqdm
progress, seeded shuffling. The optional vision pre-training stage (:func:`training.vision_pretrain.pretrain_vision`)
runs first. The final model and processor are saved to ``DIR`` (loadable with
:meth:`captioner.BlipCaptioner.from_pretrained`).

The command line is :class:`~training.captioner_arguments.CaptionerArguments`, transformers' ``TrainingArguments``
(its standard flags, captioner defaults) and :class:`~training.captioner_arguments.ScratchConfig`. Python callers
(the bundle build) call :func:`train` with the same dataclasses
(:func:`~training.captioner_arguments.captioner_arguments` builds them) and may pass in-memory
``(PIL image, caption[, label])`` pairs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate.utils import set_seed
from transformers import BlipForConditionalGeneration, BlipProcessor, HfArgumentParser, TrainingArguments

from captioner import CaptionerError
from project_base.errors import ModelUnavailableError
from project_base.hub_probe import check_hub

from . import common
from .arguments import build_parser as task_parser
from .arguments import parse
from .blip_scratch import new_blip
from .caption_data import CaptionPair, as_pairs, read_pairs_jsonl
from .captioner_arguments import RENAMES, CaptionerArguments, ScratchConfig, training_defaults
from .captioner_trainer import fit
from .common import resolved_precision, weights_fingerprint
from .vision_pretrain import pretrain_vision

logger = logging.getLogger(__name__)
EXIT_USER_ERROR = 2
#: seconds the other processes of a multi-process run wait before exiting on a user error that the main
#: process reports (a launcher stops every process once one has exited)
OTHER_PROCESSES_EXIT_DELAY_S = 2.0

CHECKPOINT_DIR = "checkpoints"
#: the vision pre-training history, written into the checkpoint folder so that a resumed run still reports it
VISION_LOG = "vision_pretraining.json"


@dataclass
class TrainResult:
    """Where the model went and what happened: one history entry per epoch."""

    out_dir: str
    history: list[dict]
    vision_history: list[dict]
    #: False when training left every weight as it was (e.g. a learning rate of 0): the saved model is the input
    weights_changed: bool = True

    @property
    def exact_match(self) -> float | None:
        """Exact match of the last evaluation (None when there was no held-out set)."""
        return self.history[-1].get("eval_exact_match") if self.history else None


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete Trainer checkpoint (``checkpoint-STEP``) under ``out_dir/checkpoints``, or None."""
    return common.latest_trainer_checkpoint(Path(out_dir) / CHECKPOINT_DIR)


def split_pairs(pairs: list[CaptionPair], fraction: float, seed: int) -> tuple[list[CaptionPair], list[CaptionPair]]:
    """Deterministic (train, held-out) split holding out ``fraction`` of the pairs (at least one if > 0)."""
    if fraction <= 0 or len(pairs) < 2:
        return pairs, []
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(pairs) - 1, max(1, round(fraction * len(pairs))))
    held = set(order[:n_eval])
    return [p for i, p in enumerate(pairs) if i not in held], [pairs[i] for i in sorted(held)]


def _load_model(model, processor, pairs: list[CaptionPair], scratch: ScratchConfig, seed: int,
                local_files_only: bool = False):
    if model is None:
        if processor is not None:
            raise CaptionerError("A processor was given without a model; pass both, or neither to train from scratch.")
        return new_blip([p.caption for p in pairs], seed=seed, **asdict(scratch))
    if isinstance(model, (str, Path)):
        try:
            return (
                BlipForConditionalGeneration.from_pretrained(model, dtype=torch.float32,
                                                             local_files_only=local_files_only),
                processor or BlipProcessor.from_pretrained(model, local_files_only=local_files_only),
            )
        except (OSError, ValueError) as exc:
            raise CaptionerError(
                f"Could not load the BLIP model {model!r} to fine-tune: {exc}. Pass a folder saved "
                "with save_pretrained or a Hub id such as Salesforce/blip-image-captioning-base."
            ) from exc
    if processor is None:
        raise CaptionerError("Pass the BlipProcessor together with an in-memory model.")
    return model, processor


def _start(model, processor, pairs: list[CaptionPair], out_dir: Path, args: CaptionerArguments,
           training_args: TrainingArguments, scratch: ScratchConfig, local_files_only: bool = False):
    """(model, processor, checkpoint to resume from, vision history): the newest checkpoint's model when resuming,
    else the model built or loaded here and, with ``vision_epochs``, its vision pre-training stage."""
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is not None and not args.resume:
        raise CaptionerError(
            f"{out_dir} already holds checkpoints; pass resume=True (--resume) to continue, "
            "or choose another output folder."
        )
    vision_log = out_dir / CHECKPOINT_DIR / VISION_LOG
    if checkpoint is not None:
        logger.info("Resuming from %s", checkpoint)
        vision_history = json.loads(vision_log.read_text()) if vision_log.is_file() else []
        return (BlipForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32),
                BlipProcessor.from_pretrained(checkpoint), checkpoint, vision_history)
    if args.resume:
        logger.info("No checkpoint in %s; starting from the beginning.", out_dir)
    model, processor = _load_model(model, processor, pairs, scratch, training_args.seed, local_files_only)
    vision_history = []
    if args.vision_epochs > 0:
        labels = [p.label for p in pairs]
        if any(label is None for label in labels):
            raise CaptionerError(
                "vision_epochs > 0 needs a label for every training pair "
                '((image, caption, label) tuples or a "label" field in the JSONL).'
            )
        precision = resolved_precision(training_args.bf16, training_args.fp16)
        vision_history = pretrain_vision(
            model, processor.image_processor, [p.image for p in pairs], labels, epochs=args.vision_epochs,
            lr=args.vision_lr, batch_size=args.vision_batch_size, max_shift=args.vision_max_shift,
            flip=args.vision_flip, seed=training_args.seed, progress=not training_args.disable_tqdm,
            mixed_precision=next((mode for mode, on in precision.items() if on), "no"),
        )
        if os.environ.get("RANK", "0") == "0":
            vision_log.parent.mkdir(parents=True, exist_ok=True)
            vision_log.write_text(json.dumps(vision_history, indent=1))  # read back by a resumed run
    return model, processor, None, vision_history


def train(
    args: CaptionerArguments,
    training_args: TrainingArguments,
    scratch: ScratchConfig | None = None,
    *,
    pairs: Sequence | None = None,
    eval_pairs: Sequence | None = None,
    model: BlipForConditionalGeneration | None = None,
    processor: BlipProcessor | None = None,
    local_files_only: bool = False,
) -> TrainResult:
    """Train (no model: a new small BLIP of ``scratch`` sizes) or fine-tune a BLIP captioner as ``args`` and
    ``training_args`` say; save it to ``training_args.output_dir`` (the CLI and the bundle build).

    ``pairs`` and ``eval_pairs`` (``(image, caption[, label])`` tuples of PIL images or paths, or
    :class:`~training.caption_data.CaptionPair`) replace the ``--pairs`` / ``--eval_pairs`` files; held-out pairs
    default to ``args.eval_fraction`` of the training pairs. ``model`` and ``processor`` (in memory) replace
    ``args.model``. With ``args.resume`` training continues from the newest checkpoint in the output folder
    (starting fresh when there is none). ``local_files_only`` loads a Hub ``args.model`` from the local cache only.
    A run that changed no weight logs a warning and returns ``weights_changed=False``.
    """
    out_dir = check_output_dir(training_args.output_dir)
    if pairs is None:
        if not args.pairs:
            raise CaptionerError("No training pairs; pass --pairs PAIRS.jsonl.")
        pairs = read_pairs_jsonl(args.pairs)
    if eval_pairs is None and args.eval_pairs:
        eval_pairs = read_pairs_jsonl(args.eval_pairs)
    pairs = as_pairs(pairs)
    if not pairs:
        raise CaptionerError("No training pairs; pass (image, caption) pairs.")
    if eval_pairs is None:
        pairs, held_out = split_pairs(pairs, args.eval_fraction, training_args.seed)
    else:
        held_out = as_pairs(eval_pairs)
    held_out = held_out[: args.eval_max]

    set_seed(training_args.seed)
    model, processor, checkpoint, vision_history = _start(
        model if model is not None else args.model, processor, pairs, out_dir, args, training_args,
        scratch or ScratchConfig(), local_files_only,
    )
    initial_weights = weights_fingerprint(model)
    checkpoints = dataclasses.replace(training_args, output_dir=str(out_dir / CHECKPOINT_DIR))
    history = fit(model, processor, pairs, held_out, args, checkpoints, checkpoint)
    changed = not torch.equal(initial_weights, weights_fingerprint(model))
    if not changed:
        logger.warning("Training left every weight unchanged (learning rate %g, %d optimiser steps): the saved "
                       "model equals the starting one. Raise --learning_rate or --num_train_epochs.",
                       training_args.learning_rate, history[-1]["global_step"] if history else 0)
    if os.environ.get("RANK", "0") == "0":  # saved with save_pretrained: no pickled training_args.bin beside it
        model.save_pretrained(out_dir)
        processor.save_pretrained(out_dir)
        log = {"history": history, "vision_history": vision_history, "arguments": asdict(args),
               "training_arguments": training_args.to_dict()}
        (out_dir / "training_log.json").write_text(json.dumps({**log, "weights_changed": changed}, indent=2))
    return TrainResult(out_dir=str(out_dir), history=history, vision_history=vision_history, weights_changed=changed)


def check_output_dir(path: str | os.PathLike, flag: str = "--output_dir") -> Path:
    """``path`` as a Path; CaptionerError when it cannot be an output folder (a file is in its place or above
    it, or the nearest existing folder is not writable). Nothing is created."""
    return common.check_output_dir(path, flag, CaptionerError)


def build_parser() -> HfArgumentParser:
    """The ``python -m training.captioner_finetune`` parser: :class:`CaptionerArguments`, ``TrainingArguments`` and
    :class:`ScratchConfig`."""
    return task_parser(
        CaptionerArguments, training_defaults(), ScratchConfig, prog="python -m training.captioner_finetune",
        description="Train a new small BLIP captioner, or fine-tune one (--model), on (image, caption) pairs.",
        epilog='Pairs file: one JSON object per line, {"image": path, "caption": text[, "label": text]}; relative '
               "image paths are resolved against the folder of the pairs file, not the current folder.",
    )


def _check_hub(model: str | None) -> bool:
    """Fail within seconds when --model is a Hub id and the Hub does not answer; True: load from the cache."""
    try:
        return check_hub([model]).local_only
    except ModelUnavailableError as exc:
        raise CaptionerError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 done, 2 a user error: one ``Error:`` line on stderr,
    printed by the main process only when several run)."""
    args, scratch, training_args = parse(build_parser(), argv, RENAMES)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_output_dir(training_args.output_dir)
        if not args.pairs:
            raise CaptionerError("Pass --pairs PAIRS.jsonl, the training pairs.")
        pairs = read_pairs_jsonl(args.pairs)  # a missing or broken file fails before the Hub is asked
        eval_pairs = read_pairs_jsonl(args.eval_pairs) if args.eval_pairs else None
        result = train(args, training_args, scratch, pairs=pairs, eval_pairs=eval_pairs,
                       local_files_only=_check_hub(args.model))
    except CaptionerError as exc:
        if os.environ.get("RANK", "0") == "0":  # every process meets the same error: say it once
            print("Error: " + " ".join(str(exc).split()), file=sys.stderr, flush=True)
        else:  # let the main process say it before the launcher stops the others
            time.sleep(OTHER_PROCESSES_EXIT_DELAY_S)
        return EXIT_USER_ERROR
    print(f"saved the captioner to {result.out_dir} (exact match {result.exact_match})")
    if not result.weights_changed:
        print("Warning: the saved model equals the starting model (no weight changed); raise --learning_rate or "
              "--num_train_epochs.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
