"""Training and fine-tuning BLIP captioners: ``python -m training.captioner_finetune --pairs pairs.jsonl --out DIR``.

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

Python API for in-memory data: :func:`train_captioner` with ``(PIL image, caption[, label])`` pairs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from accelerate.utils import set_seed
from transformers import BlipForConditionalGeneration, BlipProcessor, HfArgumentParser

from captioner import CaptionerError

from . import common
from .blip_scratch import new_blip
from .caption_data import CaptionPair, as_pairs, read_pairs_jsonl
from .common import weights_fingerprint
from .vision_pretrain import pretrain_vision

logger = logging.getLogger(__name__)
EXIT_USER_ERROR = 2
#: seconds the other processes of a multi-process run wait before exiting on a user error that the main
#: process reports (a launcher stops every process once one has exited)
OTHER_PROCESSES_EXIT_DELAY_S = 2.0
#: the most warm-up may take of a run's optimiser steps, so a short run still trains at its learning rate
MAX_WARMUP_SHARE = 0.5

CHECKPOINT_DIR = "checkpoints"
#: the vision pre-training history, written into the checkpoint folder so that a resumed run still reports it
VISION_LOG = "vision_pretraining.json"


@dataclass
class TrainConfig:
    """Optimisation, evaluation and checkpoint settings (each is also a ``--dashed-name`` CLI flag)."""

    epochs: int = field(default=3, metadata={"help": "caption training epochs"})
    batch_size: int = field(default=32, metadata={"help": "per-device batch size"})
    lr: float = field(default=5e-5, metadata={"help": "peak learning rate (use ~5e-4 from scratch)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_steps: int | None = field(default=None, metadata={"help": "warm-up steps (default: warmup_ratio)"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "warm-up share of all optimiser steps"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 = off)"})
    mixed_precision: str = field(default="auto",
                                 metadata={"help": "auto (native bf16, else fp16; CPU: no) | no | bf16 | fp16"})
    seed: int = field(default=0, metadata={"help": "seed for initialisation, split and shuffling"})
    prompt: str | None = field(default=None, metadata={"help": "conditional prefix, e.g. 'a picture of'"})
    max_caption_tokens: int = field(default=40, metadata={"help": "captions are truncated to this many tokens"})
    eval_fraction: float = field(default=0.05, metadata={"help": "held-out share when no eval pairs are given"})
    eval_max: int = field(default=500, metadata={"help": "evaluate on at most this many held-out pairs"})
    eval_num_beams: int = field(default=1, metadata={"help": "beams for evaluation captions (1 = greedy)"})
    eval_max_new_tokens: int = field(default=30, metadata={"help": "max new tokens for evaluation captions"})
    keep_checkpoints: int = field(default=2, metadata={"help": "keep the newest N epoch checkpoints (0 = all)"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    progress: bool = field(default=True, metadata={"help": "show tqdm progress bars"})
    vision_epochs: int = field(default=0, metadata={"help": "vision pre-training epochs on the labels (0 = off)"})
    vision_lr: float = field(default=1e-3, metadata={"help": "vision pre-training learning rate"})
    vision_batch_size: int = field(default=64, metadata={"help": "vision pre-training batch size"})
    vision_max_shift: int = field(default=8, metadata={"help": "vision pre-training random shift in pixels"})
    vision_flip: bool = field(default=True, metadata={"help": "vision pre-training random horizontal flips"})


@dataclass
class ScratchConfig:
    """Sizes of a NEW small BLIP built when no model is given (see :func:`training.blip_scratch.new_blip`)."""

    vocab_size: int = field(default=1000, metadata={"help": "WordPiece vocabulary size (upper bound)"})
    image_size: int = field(default=64, metadata={"help": "input image size in pixels"})
    patch_size: int = field(default=8, metadata={"help": "vision patch size"})
    vision_hidden: int = field(default=128, metadata={"help": "vision width"})
    vision_layers: int = field(default=3, metadata={"help": "vision layers"})
    vision_heads: int = field(default=4, metadata={"help": "vision attention heads"})
    text_hidden: int = field(default=128, metadata={"help": "text decoder width"})
    text_layers: int = field(default=2, metadata={"help": "text decoder layers"})
    text_heads: int = field(default=4, metadata={"help": "text decoder attention heads"})


@dataclass
class RunArgs:
    """What to train on and where to write."""

    pairs: str = field(metadata={"help": 'JSONL file of {"image": path, "caption": str[, "label": str]} lines; '
                                         "a relative image path is relative to the JSONL file's folder"})
    out: str = field(metadata={"help": "output folder (final model + checkpoints/)"})
    model: str | None = field(
        default=None, metadata={"help": "BLIP Hub id or folder to fine-tune (default: new small BLIP)"}
    )
    eval_pairs: str | None = field(
        default=None, metadata={"help": "held-out JSONL, same format (default: eval_fraction of --pairs)"}
    )
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in --out"})


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


def normalise_caption(text: str) -> str:
    """Lower-case, drop punctuation, collapse spaces: the form compared by exact match."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after :func:`normalise_caption`."""
    if not references:
        return 0.0
    return sum(
        normalise_caption(p) == normalise_caption(r) for p, r in zip(predictions, references, strict=True)
    ) / len(references)


def mixed_precision_mode(requested: str) -> str:
    """:func:`training.common.mixed_precision_mode` (no bf16 on the CPU), a bad value as a CaptionerError."""
    try:
        return common.mixed_precision_mode(requested)
    except ValueError as exc:
        raise CaptionerError(f"mixed_precision: {exc}") from None


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


def _start(model, processor, pairs: list[CaptionPair], out_dir: Path, resume: bool, config: TrainConfig,
           scratch: ScratchConfig, local_files_only: bool = False):
    """(model, processor, checkpoint to resume from, vision history): the newest checkpoint's model when resuming,
    else the model built or loaded here and, with ``vision_epochs``, its vision pre-training stage."""
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is not None and not resume:
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
    if resume:
        logger.info("No checkpoint in %s; starting from the beginning.", out_dir)
    model, processor = _load_model(model, processor, pairs, scratch, config.seed, local_files_only)
    vision_history = []
    if config.vision_epochs > 0:
        labels = [p.label for p in pairs]
        if any(label is None for label in labels):
            raise CaptionerError(
                "vision_epochs > 0 needs a label for every training pair "
                '((image, caption, label) tuples or a "label" field in the JSONL).'
            )
        vision_history = pretrain_vision(
            model, processor.image_processor, [p.image for p in pairs], labels, epochs=config.vision_epochs,
            lr=config.vision_lr, batch_size=config.vision_batch_size, max_shift=config.vision_max_shift,
            flip=config.vision_flip, seed=config.seed, progress=config.progress,
            mixed_precision=mixed_precision_mode(config.mixed_precision),
        )
        if os.environ.get("RANK", "0") == "0":
            vision_log.parent.mkdir(parents=True, exist_ok=True)
            vision_log.write_text(json.dumps(vision_history, indent=1))  # read back by a resumed run
    return model, processor, None, vision_history


def warmup_steps(config: TrainConfig, total_steps: int) -> int:
    """Warm-up steps of a run of ``total_steps`` optimiser steps: ``warmup_steps``, else ``warmup_ratio`` of
    the run, capped at :data:`MAX_WARMUP_SHARE` of it (rounded down) so that the run's later steps train at
    the full rate; warm-up starts at 0, so a run of 1 step has none."""
    wanted = config.warmup_steps if config.warmup_steps is not None else math.ceil(config.warmup_ratio * total_steps)
    allowed = int(MAX_WARMUP_SHARE * total_steps)
    if wanted > allowed:
        logger.info("Warm-up shortened from %d to %d of the run's %d optimiser steps.", wanted, allowed, total_steps)
    return max(0, min(wanted, allowed))


def train_captioner(
    pairs: Sequence,
    out_dir: str | Path,
    model: str | BlipForConditionalGeneration | None = None,
    processor: BlipProcessor | None = None,
    eval_pairs: Sequence | None = None,
    config: TrainConfig | None = None,
    scratch: ScratchConfig | None = None,
    resume: bool = False,
    local_files_only: bool = False,
    **overrides,
) -> TrainResult:
    """Train (``model=None``: a new small BLIP) or fine-tune a BLIP captioner on ``pairs``; save it to ``out_dir``.

    ``pairs`` are ``(image, caption)`` or ``(image, caption, label)`` tuples (PIL images or paths) or
    :class:`~training.caption_data.CaptionPair`. ``eval_pairs`` default to ``config.eval_fraction`` of ``pairs``.
    ``overrides`` set :class:`TrainConfig` fields (``epochs=2, lr=5e-4, ...``). With ``resume=True``
    training continues from the newest checkpoint in ``out_dir`` (starting fresh when there is none).
    ``local_files_only`` loads a Hub ``model`` from the local cache only. A run that changed no weight logs a
    warning and returns ``weights_changed=False``.
    """
    unknown = sorted(set(overrides) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise CaptionerError(f"Unknown training option(s) {unknown}; see training.captioner_finetune.TrainConfig.")
    config = replace(config or TrainConfig(), **overrides)
    out_dir = check_output_dir(out_dir)
    pairs = as_pairs(pairs)
    if not pairs:
        raise CaptionerError("No training pairs; pass (image, caption) pairs.")
    if eval_pairs is None:
        pairs, held_out = split_pairs(pairs, config.eval_fraction, config.seed)
    else:
        held_out = as_pairs(eval_pairs)
    held_out = held_out[: config.eval_max]

    set_seed(config.seed)
    model, processor, checkpoint, vision_history = _start(
        model, processor, pairs, out_dir, resume, config, scratch or ScratchConfig(), local_files_only
    )
    initial_weights = weights_fingerprint(model)
    # transformers' Trainer is imported here, when a run starts: it pulls in bitsandbytes, whose import-time
    # warning would otherwise precede the one-line error of a mistyped command.
    from .captioner_trainer import fit

    history = fit(model, processor, pairs, held_out, config, out_dir / CHECKPOINT_DIR, checkpoint)
    changed = not torch.equal(initial_weights, weights_fingerprint(model))
    if not changed:
        logger.warning("Training left every weight unchanged (learning rate %g, %d optimiser steps): the saved "
                       "model equals the starting one. Raise --lr or --epochs.", config.lr,
                       history[-1]["global_step"] if history else 0)
    if os.environ.get("RANK", "0") == "0":  # saved with save_pretrained: no pickled training_args.bin beside it
        model.save_pretrained(out_dir)
        processor.save_pretrained(out_dir)
        log = {"history": history, "vision_history": vision_history, "config": asdict(config)}
        (out_dir / "training_log.json").write_text(json.dumps({**log, "weights_changed": changed}, indent=2))
    return TrainResult(out_dir=str(out_dir), history=history, vision_history=vision_history, weights_changed=changed)


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` as a Path; CaptionerError when it cannot be an output folder (a file is in its place or above
    it, or the nearest existing folder is not writable). Nothing is created."""
    return common.check_output_dir(path, flag, CaptionerError)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default, unless it has none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> HfArgumentParser:
    """The ``python -m training.captioner_finetune`` argument parser (one flag per dataclass field)."""
    return HfArgumentParser(
        (RunArgs, TrainConfig, ScratchConfig), prog="python -m training.captioner_finetune",
        formatter_class=_HelpFormatter,
        description="Train a new small BLIP captioner, or fine-tune one (--model), on (image, caption) pairs.",
        epilog='Pairs file: one JSON object per line, {"image": path, "caption": text[, "label": text]}; relative '
               "image paths are resolved against the folder of the pairs file, not the current folder.",
    )


def _check_hub(model: str | None) -> bool:
    """Fail within seconds when --model is a Hub id and the Hub does not answer; True: load from the cache."""
    from vqa_llm.errors import ModelUnavailableError
    from vqa_llm.hub_access import check_hub

    try:
        return check_hub([model]).local_only
    except ModelUnavailableError as exc:
        raise CaptionerError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 done, 2 a user error: one ``Error:`` line on stderr,
    printed by the main process only when several run)."""
    run, config, scratch = build_parser().parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_output_dir(run.out)
        pairs = read_pairs_jsonl(run.pairs)
        eval_pairs = read_pairs_jsonl(run.eval_pairs) if run.eval_pairs else None
        local = _check_hub(run.model)
        result = train_captioner(pairs, run.out, model=run.model, eval_pairs=eval_pairs, config=config,
                                 scratch=scratch, resume=run.resume, local_files_only=local)
    except CaptionerError as exc:
        if os.environ.get("RANK", "0") == "0":  # every process meets the same error: say it once
            print("Error: " + " ".join(str(exc).split()), file=sys.stderr, flush=True)
        else:  # let the main process say it before the launcher stops the others
            time.sleep(OTHER_PROCESSES_EXIT_DELAY_S)
        return EXIT_USER_ERROR
    print(f"saved the captioner to {result.out_dir} (exact match {result.exact_match})")
    if not result.weights_changed:
        print("Warning: the saved model equals the starting model (no weight changed); raise --lr or --epochs.",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
