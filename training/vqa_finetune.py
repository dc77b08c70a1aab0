"""Fine-tune (or train) a ``VLEForVQA`` on a VQA dataset, with the original objective.

Soft VQA scores per answer (0.3 per annotator, capped at 1) and BCE times the number of labels; the answer
vocabulary is built from the training answers into ``id2label``. Training runs on transformers' ``Trainer``
(:mod:`training.vqa_trainer`): AdamW, warm-up + linear decay, gradient accumulation, mixed precision on CUDA,
multi-GPU with ``accelerate launch``, an evaluation and a checkpoint per epoch (``OUT/checkpoint-STEP``,
continue with ``--resume``), seeded. Data: easy-VQA (the ``easy-vqa`` package) or VQAv2-format files.

The command line is :class:`training.vqa_arguments.VQAArguments` and transformers' ``TrainingArguments`` (its
standard flags, VQA defaults); Python callers (the bundle build) call :func:`train` with the same two dataclasses.

Examples::

    # fine-tune a published checkpoint on VQAv2-format files
    accelerate launch -m training.vqa_finetune --init hfl/vle-base-for-vqa --train_questions q.json \\
        --train_annotations a.json --train_images train2014/ --output_dir runs/vqa --num_train_epochs 10
    # start from pretrained encoders (new fusion layers)
    python -m training.vqa_finetune --vision_model openai/clip-vit-base-patch16 \\
        --text_model microsoft/deberta-v3-base --image_size 384 --train easy-vqa --output_dir runs/easy

:func:`training.vision_pretrain.pretrain_vision_tower` is the "encoders first" stage used for the bundled
easy-VQA model: the CLIP tower alone learns per-image labels (e.g. shape and colour) before VQA training.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import defaultdict
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm
from transformers import HfArgumentParser, TrainingArguments

from project_base.errors import ModelUnavailableError
from project_base.hub_probe import check_hub
from vle.errors import VLEError
from vle.modeling_vle import VLEForVQA
from vle.vqa_data import (
    VQADataError,
    VQAExample,
    build_answer_vocab,
    image_for,
    load_easy_vqa,
    load_vqav2,
    vqa_target_scores,
)

from . import common
from .arguments import build_parser as task_parser
from .arguments import parse
from .common import weights_fingerprint
from .vision_cache import FrozenVisionCache, TensorLRU
from .vqa_arguments import RENAMES, VQAArguments, training_defaults
from .vqa_trainer import StopAfterSteps, VQATrainer, epoch_records, top1, vqa_run_arguments

logger = logging.getLogger(__name__)
EXIT_USER_ERROR = 2
#: seconds the other processes of a multi-process run wait before exiting on a user error that the main
#: process reports (a launcher stops every process once one has exited)
OTHER_PROCESSES_EXIT_DELAY_S = 2.0


class FinetuneError(VLEError):
    """A fine-tuning option, path or starting model is unusable; the message says what to do."""


class VQATrainingSet(Dataset):
    """Questions tokenized once; images preprocessed on first use and kept in a cache of ``image_cache_mb``
    (least recently used dropped first; 0: no cache). With DataLoader workers each worker has its own."""

    def __init__(self, examples: Sequence[VQAExample], processor, label2id: dict[str, int],
                 image_cache_mb: float = 1024):
        self.examples = list(examples)
        self.processor = processor
        self.label2id = label2id
        self.image_index: dict[str, int] = {}
        for example in self.examples:
            self.image_index.setdefault(example.image_path, len(self.image_index))
        self._pixels = TensorLRU(image_cache_mb * 2**20)
        questions = [e.question for e in self.examples]
        self.tokens = processor.tokenizer(questions, truncation=True, max_length=64)["input_ids"]

    def __len__(self) -> int:
        return len(self.examples)

    def pixels(self, image_id: int, path: str) -> torch.Tensor:
        """Preprocessed pixels of one image (``[3, H, W]``)."""
        cached = self._pixels.get(image_id)
        if cached is not None:
            return cached
        pixels = torch.from_numpy(self.processor.preprocess_images([image_for_path(path)])[0])
        self._pixels.put(image_id, pixels)
        return pixels

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.examples[index]
        image_id = self.image_index[example.image_path]
        targets = {self.label2id[a]: s for a, s in vqa_target_scores(example.answers).items() if a in self.label2id}
        return {
            "index": index,
            "image_id": image_id,
            "pixel_values": self.pixels(image_id, example.image_path),
            "input_ids": self.tokens[index],
            "targets": targets,
        }


def image_for_path(path: str):
    """Open an image file as RGB (via the dataset reader's loader)."""
    return image_for(VQAExample(question_id=0, image_id="", image_path=path, question=""))


def collate(batch: list[dict[str, Any]], num_labels: int, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad the questions, stack the images and build the dense soft-score targets."""
    length = max(len(item["input_ids"]) for item in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
    targets = torch.zeros((len(batch), num_labels))
    for row, item in enumerate(batch):
        input_ids[row, : len(item["input_ids"])] = torch.tensor(item["input_ids"])
        attention_mask[row, : len(item["input_ids"])] = 1
        for label, score in item["targets"].items():
            targets[row, label] = score
    return {
        "index": torch.tensor([item["index"] for item in batch]),
        "image_id": torch.tensor([item["image_id"] for item in batch]),
        "pixel_values": torch.stack([item["pixel_values"] for item in batch]),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros_like(input_ids),
        "vqa_targets": targets,
    }


def score_answers(examples: Sequence[VQAExample], scored: Sequence[tuple[int, str]]) -> dict[str, Any]:
    """VQA score of predicted answers (``(example index, answer)`` pairs; the mean soft score, the usual
    training-time metric), overall and per question type."""
    per_type: dict[str, list[float]] = defaultdict(list)
    for index, answer in sorted(scored):
        example = examples[index]
        per_type[example.question_type or "all"].append(vqa_target_scores(example.answers).get(answer, 0.0))
    every = [s for scores in per_type.values() for s in scores]
    return {
        "vqa_score": sum(every) / max(len(every), 1),
        "count": len(every),
        "per_question_type": {k: sum(v) / len(v) for k, v in sorted(per_type.items())},
    }


def evaluate(
    model: VLEForVQA, dataset: VQATrainingSet, batch_size: int = 256, accelerator: Accelerator | None = None,
    desc: str = "eval",
) -> dict[str, Any]:
    """:func:`score_answers` of ``model``'s top-1 answers on ``dataset`` (outside training; during training the
    Trainer's evaluation loop scores them). With several processes each scores every n-th question and all get
    the whole result."""
    device = accelerator.device if accelerator else next(model.parameters()).device
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    shard = Subset(dataset, range(rank, len(dataset), world)) if world > 1 else dataset
    loader = DataLoader(shard, batch_size=batch_size,
                        collate_fn=partial(collate, num_labels=len(model.config.id2label)))
    model.eval()
    id2label = model.config.id2label
    scored: list[tuple[int, str]] = []
    with torch.no_grad():
        quiet = accelerator is not None and not accelerator.is_main_process
        for batch in tqdm(loader, desc=desc, leave=False, disable=quiet):
            logits = model(
                input_ids=batch["input_ids"].to(device), pixel_values=batch["pixel_values"].to(device),
                attention_mask=batch["attention_mask"].to(device), token_type_ids=batch["token_type_ids"].to(device),
            ).logits
            scored += [(i, id2label[p]) for i, p in zip(batch["index"].tolist(), logits.argmax(-1).tolist())]
    if world > 1:
        scored = gather_object(scored)
    return score_answers(dataset.examples, scored)


def param_groups(model: nn.Module, args: VQAArguments, training_args: TrainingArguments) -> list[dict[str, Any]]:
    """AdamW groups: ``lr_multipliers`` by parameter-name prefix, no weight decay on biases and norm weights."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = defaultdict(list)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        factor = next((f for prefix, f in args.lr_multipliers.items() if name.startswith(prefix)), 1.0)
        decay = 0.0 if param.ndim < 2 else training_args.weight_decay
        groups[(factor, decay)].append(param)
    return [{"params": p, "lr": training_args.learning_rate * f, "weight_decay": d} for (f, d), p in groups.items()]


def latest_checkpoint(output_dir: str | os.PathLike) -> tuple[Path, int] | None:
    """The newest complete Trainer checkpoint (``checkpoint-STEP``) in ``output_dir`` and the epochs it holds."""
    path = common.latest_trainer_checkpoint(output_dir)
    if path is None:
        return None
    return path, round(json.loads((path / common.TRAINER_STATE_NAME).read_text()).get("epoch") or 0)


def train_vqa(
    model: VLEForVQA,
    processor,
    train_examples: Sequence[VQAExample],
    args: VQAArguments,
    training_args: TrainingArguments,
    eval_examples: Sequence[VQAExample] | None = None,
) -> dict[str, Any]:
    """Train ``model`` (whose ``id2label`` is the answer vocabulary) on ``train_examples`` with transformers'
    ``Trainer`` and save it with ``processor`` to ``training_args.output_dir``.

    Returns the training log: per epoch the mean loss, the eval VQA score (overall and per question type) and
    the wall time.
    """
    output_dir = Path(training_args.output_dir)
    label2id = model.config.label2id or {label: int(i) for i, label in model.config.id2label.items()}
    label2id = {k: int(v) for k, v in label2id.items()}
    id2label = {int(i): label for i, label in model.config.id2label.items()}
    train_set = VQATrainingSet(train_examples, processor, label2id, args.image_cache_mb)
    eval_set = VQATrainingSet(eval_examples, processor, label2id, args.image_cache_mb) if eval_examples else None

    def compute_metrics(prediction) -> dict[str, Any]:
        indices, answers = prediction.label_ids.tolist(), prediction.predictions.tolist()
        return score_answers(eval_set.examples, [(i, id2label[a]) for i, a in zip(indices, answers)])

    if args.freeze_vision:
        model.vle.vision_model.requires_grad_(False)
    initial_weights = weights_fingerprint(model)
    trainer = VQATrainer(
        model=model,
        args=vqa_run_arguments(training_args, len(train_set), eval_set is not None),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=partial(collate, num_labels=len(id2label), pad_id=processor.tokenizer.pad_token_id or 0),
        processing_class=processor,
        optimizers=(torch.optim.AdamW(param_groups(model, args, training_args), lr=training_args.learning_rate),
                    None),
        compute_metrics=compute_metrics if eval_set is not None else None,
        preprocess_logits_for_metrics=top1,
        callbacks=[StopAfterSteps(args.stop_after_steps)] if args.stop_after_steps is not None else None,
        vision_cache=FrozenVisionCache(model, args.vision_cache_mb) if args.freeze_vision else None,
    )
    found = latest_checkpoint(output_dir) if args.resume else None
    if found:
        logger.info("Resuming after epoch %d from %s", found[1], found[0])
    trainer.train(resume_from_checkpoint=str(found[0]) if found else None)

    log: dict[str, Any] = {"arguments": asdict(args), "training_arguments": trainer.args.to_dict(),
                           "epochs": epoch_records(trainer.state.log_history)}
    log["weights_changed"] = not torch.equal(initial_weights, weights_fingerprint(model))
    if not log["weights_changed"]:
        logger.warning("Training left every weight unchanged (learning rate %g, %d optimiser steps): the saved "
                       "model equals the starting one. Raise --learning_rate or --num_train_epochs.",
                       training_args.learning_rate, trainer.state.global_step)
    if trainer.is_world_process_zero():  # save_pretrained, not save_model: no pickled training_args.bin beside it
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        (output_dir / "training_log.json").write_text(json.dumps(log, indent=1))
    return log


def answer_vocabulary(
    examples: Sequence[VQAExample], min_count: int = 1, max_size: int | None = None
) -> dict[int, str]:
    """``id2label`` for a VQA head, from the training answers."""
    return dict(enumerate(build_answer_vocab(examples, min_count=min_count, max_size=max_size)))


def _load_split(kind: str | None, questions: str | None, annotations: str | None, images: str | None, split: str):
    if kind == "easy-vqa":
        return load_easy_vqa(split)
    if questions:
        return load_vqav2(questions, annotations, images)
    return None


def check_output_dir(path: str | os.PathLike, flag: str = "--output_dir") -> Path:
    """``path`` as a Path; FinetuneError when it cannot be an output folder (a file is in its place or above
    it, or the nearest existing folder is not writable). Nothing is created."""
    return common.check_output_dir(path, flag, FinetuneError)


def _check_hub(ids: Sequence[str | None]) -> bool:
    """Fail within seconds when Hub models are named and the Hub does not answer; True: load from the cache."""
    try:
        return check_hub(ids).local_only
    except ModelUnavailableError as exc:
        raise FinetuneError(str(exc)) from None


def _starting_model(args: VQAArguments, id2label: dict[int, str], local: bool = False):
    """(model, processor) from --init, or a new VLE from --vision_model/--text_model (``local``: from the Hub
    cache only); FinetuneError if unusable."""
    from vle.processing_vle import VLEProcessor

    label2id = {v: k for k, v in id2label.items()}
    try:
        if args.init:
            model = VLEForVQA.from_pretrained(args.init, id2label=id2label, label2id=label2id,
                                              ignore_mismatched_sizes=True, local_files_only=local)
            return model, VLEProcessor.from_pretrained(args.processor or args.init, local_files_only=local)
        model = VLEForVQA.from_vision_text_pretrained(
            args.vision_model, args.text_model, image_size=args.image_size, id2label=id2label, label2id=label2id
        )
        return model, VLEProcessor.from_pretrained(args.processor, local_files_only=local)
    except (OSError, ValueError) as exc:  # transformers: no such folder or repo, no config, damaged weights
        raise FinetuneError(f"Could not load the starting model ({exc}). Pass a VLE folder saved with "
                            "save_pretrained or a Hub id such as hfl/vle-base-for-vqa.") from None


def check_arguments(args: VQAArguments, training_args: TrainingArguments, starting_model: bool = False) -> Path:
    """The output folder; FinetuneError, before any data or model is loaded, for settings that cannot work
    (``starting_model``: the caller passes the model, so no --init or --vision_model is needed)."""
    out = check_output_dir(training_args.output_dir)
    if latest_checkpoint(out) and not args.resume:
        raise FinetuneError(f"{out} already holds checkpoints: pass --resume to continue that run, or choose "
                            "another --output_dir.")
    if not starting_model and not args.init and not (args.vision_model and args.text_model):
        raise FinetuneError("Pass --init CHECKPOINT, or --vision_model and --text_model.")
    if not starting_model and not args.init and not args.processor:
        raise FinetuneError("A new VLE needs --processor (a folder with the VLE processor files).")
    for flag, value in (("--num_train_epochs", training_args.num_train_epochs),
                        ("--per_device_train_batch_size", training_args.per_device_train_batch_size),
                        ("--gradient_accumulation_steps", training_args.gradient_accumulation_steps)):
        if value < 1:
            raise FinetuneError(f"{flag} must be at least 1, got {value}.")
    for split in ("train", "eval"):
        files = [getattr(args, f"{split}_{kind}") for kind in ("questions", "annotations", "images")]
        if any(files) and not all(files):
            raise FinetuneError(f"--{split}_questions, --{split}_annotations and --{split}_images go together: "
                                "pass all three.")
    return out


def train(args: VQAArguments, training_args: TrainingArguments, model: VLEForVQA | None = None,
          processor=None) -> dict[str, Any]:
    """Fine-tune as ``args`` and ``training_args`` say (the CLI and the bundle build); return the training log.
    ``model`` and ``processor`` (the model's ``id2label`` being the answer vocabulary) replace --init or
    --vision_model/--text_model. User errors raise FinetuneError or VQADataError before any training starts."""
    check_arguments(args, training_args, starting_model=model is not None)
    local = _check_hub([args.init, args.vision_model, args.text_model, args.processor]) if model is None else True
    train_examples = _load_split(args.train, args.train_questions, args.train_annotations, args.train_images, "train")
    if not train_examples:
        raise FinetuneError(
            "No training data: pass --train easy-vqa or --train_questions/--train_annotations/--train_images."
        )
    train_examples = train_examples[: args.train_limit]
    evaluation = _load_split(args.eval, args.eval_questions, args.eval_annotations, args.eval_images, "test")
    if evaluation and args.eval_limit:
        evaluation = evaluation[: args.eval_limit]
    if model is None:
        model, processor = _starting_model(args, answer_vocabulary(train_examples, args.min_answer_count), local)
    return train_vqa(model, processor, train_examples, args, training_args, evaluation)


# ------------------------------------------------------------------------------------------------ CLI


def build_parser() -> HfArgumentParser:
    """The ``python -m training.vqa_finetune`` parser: :class:`VQAArguments` and ``TrainingArguments``."""
    return task_parser(VQAArguments, training_defaults(), prog="python -m training.vqa_finetune",
                       description=__doc__.split("\n\n")[0])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 done, 2 a user error: one ``Error:`` line on stderr, printed by
    the main process only when several run)."""
    args, training_args = parse(build_parser(), argv, RENAMES)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        log = train(args, training_args)
    except (VLEError, VQADataError) as exc:
        if os.environ.get("RANK", "0") == "0":  # every process meets the same error: say it once
            print("Error: " + " ".join(str(exc).split()), file=sys.stderr, flush=True)
        else:  # let the main process say it before the launcher stops the others
            time.sleep(OTHER_PROCESSES_EXIT_DELAY_S)
        return EXIT_USER_ERROR
    print(json.dumps(log["epochs"][-1] if log["epochs"] else {}, indent=1))
    if not log.get("weights_changed", True):
        print("Warning: the saved model equals the starting model (no weight changed); raise --learning_rate or "
              "--num_train_epochs.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
