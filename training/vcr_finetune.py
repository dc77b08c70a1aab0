"""Fine-tune a VLE for VCR: question -> answer (``q2a``) or question + answer -> rationale (``qa2r``).

Each item's four choices are fused with the image and scored by the VCR head; the loss is softmax cross-entropy
over the four scores. Every object a choice names adds an image token (the mean of the patches under its box)
and a token type shared with the words that name it, exactly as the VCR pipelines build them
(:mod:`vle.vcr_encoding`). The starting point is any VLE checkpoint: a pretraining one (``hfl/vle-base``, a
folder, the bundled ``assets/models/vle-easyvqa-pretrain``) gets a new VCR head and its token-type table grown to
``--num_token_types`` (the text and image rows kept); a VCR checkpoint continues. The saved model has the layout
of ``hfl/vle-*-for-vcr-*`` and loads into :class:`vle.VLEForVCRQ2APipeline` / :class:`vle.VLEForVCRQA2RPipeline`.

Arguments are transformers' ``TrainingArguments`` (``--learning_rate``, ``--per_device_train_batch_size``,
``--gradient_accumulation_steps``, ``--num_train_epochs``, ``--bf16``, ``--seed``, ...) plus
:class:`VCRFinetuneArguments`, parsed together by ``HfArgumentParser``. Training runs on the ``Trainer``: an
evaluation and a checkpoint per epoch, ``--resume`` continues from the newest checkpoint, ``accelerate launch``
for several GPUs. Data: VCR annotation files in the official layout (:func:`vle.vcr_data.load_vcr`).

Examples::

    python -m training.vcr_scenes --seed 0 --count 6000 --out runs/scenes --split train
    python -m training.vcr_scenes --seed 1 --count 500 --out runs/scenes --split val
    python -m training.vcr_finetune --task q2a --init assets/models/vle-easyvqa-pretrain --extend_vocabulary \\
        --train_annotations runs/scenes/train.jsonl --train_images runs/scenes/images \\
        --eval_annotations runs/scenes/val.jsonl --eval_images runs/scenes/images --output_dir runs/vcr-q2a
    accelerate launch -m training.vcr_finetune --task qa2r --init hfl/vle-base --train_annotations \\
        vcr1annots/train.jsonl --train_images vcr1images --output_dir runs/qa2r --bf16
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from project_base.errors import ModelUnavailableError
from project_base.hub_probe import check_hub
from vle.errors import VLEError
from vle.modeling_vle import IMAGE_TOKEN_TYPE, VLEForVCRQ2A, VLEForVCRQA2R, resize_vision_position_embeddings
from vle.processing_vle import VLEProcessor
from vle.vcr_data import VCRDataError, VCRItem, load_vcr
from vle.vcr_encoding import VCR_TASKS, VCREncodedItem, collate_vcr, encode_vcr_item
from vle.vcr_inputs import object_names

from . import common
from .arguments import build_parser as task_parser
from .arguments import parse
from .processor_files import write_processor_files
from .vcr_trainer import VCRTrainer
from .vqa_trainer import StopAfterSteps

logger = logging.getLogger(__name__)
EXIT_USER_ERROR = 2
MODEL_CLASSES = {"q2a": VLEForVCRQ2A, "qa2r": VLEForVCRQA2R}
#: token types of the published VCR checkpoints: text, image and up to 81 objects per choice
VCR_TOKEN_TYPES = 83
#: TrainingArguments defaults of a VCR run (any of them can be given on the command line)
TRAINING_DEFAULTS = {
    "num_train_epochs": 5, "per_device_train_batch_size": 32, "per_device_eval_batch_size": 64,
    "learning_rate": 1e-4, "weight_decay": 0.01, "warmup_steps": 0.1, "lr_scheduler_type": "linear",
    "eval_strategy": "epoch", "save_strategy": "epoch", "logging_strategy": "epoch", "save_total_limit": 2,
    "report_to": "none", "remove_unused_columns": False, "label_names": ["labels", "index"],
}


class VCRFinetuneError(VLEError):
    """A VCR fine-tuning option, path or starting model is unusable; the message says what to do."""


@dataclass
class VCRFinetuneArguments:
    """The task, the starting model and the data of a VCR fine-tuning run (``TrainingArguments`` hold the rest)."""

    task: str = field(metadata={"help": "q2a (question -> answer) or qa2r (question + answer -> rationale)",
                                "choices": list(VCR_TASKS)})
    init: str = field(metadata={"help": "starting VLE: Hub id or folder (a pretraining or VCR checkpoint); its "
                                        "processor is used too"})
    train_annotations: str = field(metadata={"help": "VCR annotation file (*.jsonl) to train on"})
    train_images: str = field(metadata={"help": "folder that the training file's img_fn/metadata_fn are under"})
    eval_annotations: str | None = field(default=None, metadata={"help": "VCR file evaluated after each epoch"})
    eval_images: str | None = field(default=None, metadata={"help": "images folder of --eval_annotations"})
    eval_limit: int | None = field(default=None, metadata={"help": "evaluate on the first N items only"})
    num_token_types: int = field(default=VCR_TOKEN_TYPES, metadata={
        "help": "token-type table size: text, image and one per object a choice may name (default: 83, as the "
                "published VCR checkpoints)"})
    object_type_std: float = field(default=1.0, metadata={
        "help": "standard deviation of the random part of each new object token type (default: 1.0, so that the "
                "objects' types are told apart from the start: the small pretrained rows have norms near 0.25 "
                "beside embeddings near 8)"})
    image_size: int | None = field(default=None, metadata={
        "help": "train at this image size (the vision position embeddings and the processor are resized)"})
    extend_vocabulary: bool = field(default=False, metadata={
        "help": "add the training texts' words that the starting tokenizer does not know (word-level tokenizers "
                "only, such as the bundled models'); each new word gets its own embedding"})
    object_tokens: bool = field(default=True, metadata={
        "help": "the objects' image tokens and token types (--object_tokens false: the ablation without them)"})
    backbone_lr_factor: float = field(default=1.0, metadata={
        "help": "learning rate factor of the pretrained parts (encoders and fusion; 0 freezes them); the VCR head, "
                "the token types and the word embeddings learn at --learning_rate"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in --output_dir"})
    max_steps_this_run: int | None = field(default=None, metadata={
        "help": "stop after this many optimiser steps, the schedule unchanged (smoke tests)"})


class VCRTrainingSet(Dataset):
    """VCR items encoded for one task; each encoded item is kept after its first use (a 64 px item takes
    ~50 kB, a 576 px one ~4 MB: keep large runs' sets small or pass ``cache=False``)."""

    def __init__(self, items: Sequence[VCRItem], processor: VLEProcessor, config: Any, task: str,
                 cache: bool = True):
        self.items, self.processor, self.config, self.task = list(items), processor, config, task
        self._cache: dict[int, VCREncodedItem] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.items)

    def encoded(self, index: int) -> VCREncodedItem:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        item = self.items[index]
        try:
            encoded = encode_vcr_item(item.annotation(), item.image_path, item.metadata(), self.processor,
                                      self.config, self.task)
        except VLEError as exc:
            raise VCRFinetuneError(f"VCR item {item.annot_id}: {exc}") from None
        if self._cache is not None:
            self._cache[index] = encoded
        return encoded

    def label(self, index: int) -> int:
        item = self.items[index]
        return item.answer_label if self.task == "q2a" else item.rationale_label

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": index, "item": self.encoded(index), "label": self.label(index)}


def collate(batch: list[dict[str, Any]], pad_id: int = 0) -> dict[str, Any]:
    """The VCR model's keyword arguments for ``batch`` plus ``labels`` (right choice) and ``index`` (item)."""
    inputs = collate_vcr([entry["item"] for entry in batch], pad_id=pad_id)
    inputs["labels"] = torch.tensor([entry["label"] for entry in batch])
    inputs["index"] = torch.tensor([entry["index"] for entry in batch])
    return inputs


def accuracy_by_kind(items: Sequence[VCRItem], indices: Sequence[int], predictions: Sequence[int],
                     labels: Sequence[int]) -> dict[str, Any]:
    """Accuracy (0-1) of ``predictions`` overall and per question kind (when the items carry one)."""
    per_kind: dict[str, list[bool]] = defaultdict(list)
    for index, predicted, label in zip(indices, predictions, labels):
        per_kind[items[index].question_kind or "all"].append(predicted == label)
    every = [right for rights in per_kind.values() for right in rights]
    return {"accuracy": sum(every) / max(len(every), 1), "count": len(every),
            "per_question_kind": {kind: sum(v) / len(v) for kind, v in sorted(per_kind.items())}}


# ------------------------------------------------------------------------------------------- the model
def grow_token_types(model: nn.Module, num_token_types: int, noise_std: float = 0.02) -> None:
    """Grow the fusion's token-type table to ``num_token_types`` rows; the old rows (text, image) are kept and
    each new (object) row starts as the image row plus Gaussian noise of ``noise_std``, so objects start out as
    image tokens that the model can tell apart."""
    vle = model.vle
    old = vle.token_type_embeddings
    if num_token_types <= old.num_embeddings:
        return
    grown = nn.Embedding(num_token_types, old.embedding_dim)
    with torch.no_grad():
        grown.weight[: old.num_embeddings] = old.weight
        new_rows = num_token_types - old.num_embeddings
        noise = torch.randn(new_rows, old.embedding_dim) * noise_std
        grown.weight[old.num_embeddings:] = old.weight[IMAGE_TOKEN_TYPE] + noise
    vle.token_type_embeddings = grown
    model.config.num_token_types = num_token_types


def _words(tokens: Sequence[Any]) -> list[str]:
    return [token for token in tokens if isinstance(token, str)]


def training_texts(items: Sequence[VCRItem]) -> list[str]:
    """Every question, answer and rationale of ``items`` as plain text (object references left out)."""
    texts = []
    for item in items:
        texts.append(" ".join(_words(item.question)))
        texts += [" ".join(_words(choice)) for choice in (*item.answer_choices, *item.rationale_choices)]
    return texts


def extend_vocabulary(model: nn.Module, processor: VLEProcessor, texts: Sequence[str], work_dir: Path,
                      names: Sequence[str] = ()) -> VLEProcessor:
    """A processor whose word-level tokenizer also knows the words of ``texts`` (and ``names``: the names given
    to objects) that it maps to ``[UNK]`` now, with ``model``'s word embeddings rebuilt to match: known words
    keep their vectors, new words start at the mean of the known ones plus a little noise. The processor is
    returned unchanged when every word is known. VCRFinetuneError for other tokenizers (sub-word vocabularies
    such as DeBERTa-v3's know every word already)."""
    tokenizer = processor.tokenizer
    vocab = tokenizer.get_vocab()
    if not all(piece.startswith("\u2581") for piece in vocab if piece not in tokenizer.all_special_tokens):
        raise VCRFinetuneError("--extend_vocabulary needs a word-level tokenizer (every piece a whole word, as the "
                               "bundled models have); sub-word tokenizers such as DeBERTa-v3's need no extension.")
    lower, split_punct = (bool(tokenizer.init_kwargs.get(key)) for key in ("do_lower_case", "split_by_punct"))

    def words(text: str) -> list[str]:  # the words as the tokenizer sees them
        text = re.sub(r"([^\w\s])", r" \1 ", text) if split_punct else text
        return (text.lower() if lower else text).split()

    unknown = sorted({word for text in [*texts, *names] for word in words(text) if "\u2581" + word not in vocab})
    if not unknown:
        return processor
    old_words = [piece[1:] for piece in vocab if piece.startswith("\u2581")]
    size = processor.image_processor.crop_size["height"]
    new_dir = write_processor_files(
        work_dir, [" ".join(old_words), *texts, *names], image_size=size, vocab_size=len(vocab) + len(unknown) + 8,
        model_type="word", do_lower_case=lower, split_by_punct=split_punct, character_coverage=1.0,
    )
    new_tokenizer = VLEProcessor.from_pretrained(new_dir).tokenizer
    new_processor = VLEProcessor(image_processor=processor.image_processor, tokenizer=new_tokenizer)
    text_model = model.vle.text_model
    old_embeddings = text_model.get_input_embeddings().weight.detach()
    known = old_embeddings[: len(vocab)]
    weight = known.mean(0).repeat(len(new_tokenizer), 1)
    weight += torch.randn_like(weight) * model.config.text_config.initializer_range
    for piece, new_id in new_tokenizer.get_vocab().items():
        if piece in vocab:
            weight[new_id] = old_embeddings[vocab[piece]]
    embeddings = nn.Embedding(len(new_tokenizer), weight.shape[1], padding_idx=new_tokenizer.pad_token_id)
    embeddings.weight.data.copy_(weight)
    text_model.set_input_embeddings(embeddings)
    model.config.text_config.vocab_size = len(new_tokenizer)
    still = [word for word in unknown if "\u2581" + word not in new_tokenizer.get_vocab()]
    if still:
        raise VCRFinetuneError(f"The extended vocabulary still lacks {still[:5]}; please report this.")
    logger.info("Vocabulary extended by %d words (%d -> %d)", len(unknown), len(vocab), len(new_tokenizer))
    return new_processor


def resize_images(model: nn.Module, processor: VLEProcessor, image_size: int) -> None:
    """Train at ``image_size``: the vision position embeddings are interpolated and the processor resizes to it."""
    patch = model.config.vision_config.patch_size
    if image_size % patch:
        raise VCRFinetuneError(f"--image_size must be a multiple of the patch size {patch}, got {image_size}.")
    resize_vision_position_embeddings(model.vle.vision_model, image_size)
    model.config.vision_config.image_size = image_size
    processor.image_processor.size = {"shortest_edge": image_size}
    processor.image_processor.crop_size = {"height": image_size, "width": image_size}


def starting_model(args: VCRFinetuneArguments, local_files_only: bool = False) -> tuple[nn.Module, VLEProcessor]:
    """The model to fine-tune (a new VCR head on ``args.init`` when it has none) and its processor."""
    model_class = MODEL_CLASSES[args.task]
    try:
        model = model_class.from_pretrained(args.init, local_files_only=local_files_only)
        processor = VLEProcessor.from_pretrained(args.init, local_files_only=local_files_only)
    except (OSError, ValueError) as exc:  # transformers: no such folder or repo, no config, damaged weights
        raise VCRFinetuneError(f"Could not load the starting model {args.init!r} ({exc}). Pass a VLE folder saved "
                               "with save_pretrained or a Hub id such as hfl/vle-base.") from None
    grow_token_types(model, args.num_token_types, args.object_type_std)
    model.config.vcr_object_tokens = args.object_tokens
    if args.image_size:
        resize_images(model, processor, args.image_size)
    return model, processor


# ------------------------------------------------------------------------------------------- training
def _load(annotations: str, images: str, what: str) -> list[VCRItem]:
    try:
        return load_vcr(annotations, images, require_labels=True)
    except VCRDataError as exc:
        raise VCRFinetuneError(f"{what} data: {exc}") from None


def check_arguments(args: VCRFinetuneArguments, training_args: Any) -> None:
    """VCRFinetuneError for unusable options, before anything loads."""
    if args.task not in VCR_TASKS:
        raise VCRFinetuneError(f"--task must be one of {', '.join(VCR_TASKS)}, got {args.task!r}.")
    if bool(args.eval_annotations) != bool(args.eval_images):
        raise VCRFinetuneError("--eval_annotations and --eval_images go together: pass both, or neither.")
    if args.num_token_types < 3:
        raise VCRFinetuneError(f"--num_token_types must leave room for objects (at least 3), got "
                               f"{args.num_token_types}.")
    if args.eval_limit is not None and args.eval_limit < 1:
        raise VCRFinetuneError(f"--eval_limit must be at least 1, got {args.eval_limit}.")
    common.check_output_dir(training_args.output_dir, "--output_dir", VCRFinetuneError)
    if common.latest_trainer_checkpoint(training_args.output_dir) and not args.resume:
        raise VCRFinetuneError(f"{training_args.output_dir} already holds checkpoints: pass --resume to continue "
                               "that run, or choose another --output_dir.")


def train(args: VCRFinetuneArguments, training_args: Any) -> dict[str, Any]:
    """Fine-tune as ``args`` and ``training_args`` (``transformers.TrainingArguments``) say; save the model and
    its processor to ``training_args.output_dir``; return the training log (per epoch the loss, the evaluation
    accuracy overall and per question kind, the wall time)."""
    check_arguments(args, training_args)
    train_items = _load(args.train_annotations, args.train_images, "training")
    eval_items = _load(args.eval_annotations, args.eval_images, "evaluation") if args.eval_annotations else None
    if eval_items and args.eval_limit:
        eval_items = eval_items[: args.eval_limit]
    model, processor = starting_model(args, local_files_only=_local_only(args.init))
    vocabulary_before = len(processor.tokenizer)
    with tempfile.TemporaryDirectory() as work:  # the extended vocabulary's files live until the model is saved
        if args.extend_vocabulary:
            names = sorted({name for item in train_items for name in _object_names(item)})
            processor = extend_vocabulary(model, processor, training_texts(train_items), Path(work), names)
        return _train(args, training_args, model, processor, train_items, eval_items, vocabulary_before)


def _train(args: VCRFinetuneArguments, training_args: Any, model: nn.Module, processor: VLEProcessor,
           train_items: list[VCRItem], eval_items: list[VCRItem] | None, vocabulary_before: int) -> dict[str, Any]:
    output_dir = Path(training_args.output_dir)
    train_set = VCRTrainingSet(train_items, processor, model.config, args.task)
    eval_set = VCRTrainingSet(eval_items, processor, model.config, args.task) if eval_items else None
    training_args = common.run_arguments(training_args, len(train_set), eval_set is not None)

    def compute_metrics(prediction) -> dict[str, Any]:
        labels, indices = prediction.label_ids
        return accuracy_by_kind(eval_set.items, indices.tolist(), prediction.predictions.tolist(), labels.tolist())

    initial_weights = common.weights_fingerprint(model)
    optimizer = torch.optim.AdamW(parameter_groups(model, training_args, args.backbone_lr_factor),
                                  lr=training_args.learning_rate)
    trainer = VCRTrainer(
        model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
        data_collator=lambda batch: collate(batch, pad_id=processor.tokenizer.pad_token_id or 0),
        processing_class=processor, compute_metrics=compute_metrics if eval_set is not None else None,
        preprocess_logits_for_metrics=_top1, optimizers=(optimizer, None),
        callbacks=[StopAfterSteps(args.max_steps_this_run)] if args.max_steps_this_run else None,
    )
    found = common.latest_trainer_checkpoint(output_dir) if args.resume else None
    if found:
        logger.info("Resuming from %s", found)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(found) if found else None)
    log = {"task": args.task, "init": args.init, "train_items": len(train_items),
           "new_words": len(processor.tokenizer) - vocabulary_before, "num_token_types": args.num_token_types,
           "object_type_std": args.object_type_std, "object_tokens": args.object_tokens,
           "epochs": _epoch_records(trainer.state.log_history), "seconds": round(time.perf_counter() - started, 1),
           "weights_changed": not torch.equal(initial_weights, common.weights_fingerprint(model))}
    if trainer.is_world_process_zero():  # save_pretrained: no pickled training_args.bin beside the model
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        (output_dir / "training_log.json").write_text(json.dumps(log, indent=1))
    return log


#: parameters new to a VCR model (or resized for it), which learn at the full rate
NEW_PARAMETERS = ("vcr_q2a_logit.", "vcr_qa2r_logit.", "vle.token_type_embeddings.",
                  "vle.text_model.embeddings.word_embeddings.")


def parameter_groups(model: nn.Module, training_args: Any, backbone_lr_factor: float) -> list[dict[str, Any]]:
    """AdamW groups: the new parameters at the full learning rate, the pretrained ones at ``backbone_lr_factor``
    times it (frozen at 0); no weight decay on biases and norm weights."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = defaultdict(list)
    for name, param in model.named_parameters():
        factor = 1.0 if name.startswith(NEW_PARAMETERS) else backbone_lr_factor
        if factor == 0:
            param.requires_grad_(False)
            continue
        decay = 0.0 if param.ndim < 2 else training_args.weight_decay
        groups[(factor, decay)].append(param)
    return [{"params": params, "lr": training_args.learning_rate * factor, "weight_decay": decay}
            for (factor, decay), params in groups.items()]


def _object_names(item: VCRItem) -> list[str]:
    return object_names(item.objects)


def _top1(logits, labels) -> torch.Tensor:
    """``preprocess_logits_for_metrics``: keep each item's best choice only."""
    return (logits[0] if isinstance(logits, tuple) else logits).argmax(-1)


def _epoch_records(log_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    records = []
    for logs in common.logs_by_epoch(list(log_history)):
        if "loss" in logs:
            record = {"epoch": logs["epoch"], "train_loss": logs["loss"]}
            if "eval_accuracy" in logs:
                record["eval"] = {key: logs[f"eval_{key}"] for key in ("accuracy", "count", "per_question_kind")}
            records.append(record)
    return records


def _local_only(model_id: str) -> bool:
    """Fail within seconds when a Hub model is named and the Hub does not answer; True: load from the cache."""
    try:
        return check_hub([model_id]).local_only
    except ModelUnavailableError as exc:
        raise VCRFinetuneError(str(exc)) from None


# ------------------------------------------------------------------------------------------------ CLI
def build_parser():
    """``HfArgumentParser`` over :class:`VCRFinetuneArguments` and ``TrainingArguments``, with VCR defaults."""
    return task_parser(VCRFinetuneArguments, TRAINING_DEFAULTS, prog="python -m training.vcr_finetune",
                       description=__doc__.split("\n\n")[0])


def parse_arguments(argv: Sequence[str] | None = None) -> tuple[VCRFinetuneArguments, Any]:
    """``(VCRFinetuneArguments, TrainingArguments)`` from the command line."""
    args, training_args = parse(build_parser(), argv, {})
    return args, training_args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 done, 2 a user error: one ``Error:`` line on stderr)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args, training_args = parse_arguments(argv)
    try:
        log = train(args, training_args)
    except (VLEError, VCRDataError) as exc:
        if os.environ.get("RANK", "0") == "0":
            print("Error: " + re.sub(r"\s+", " ", str(exc)), file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    print(json.dumps(log["epochs"][-1] if log["epochs"] else {}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
