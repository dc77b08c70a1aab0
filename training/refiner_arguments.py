"""The settings of the LLM refiner's fine-tuning (:mod:`training.refiner`): the task's own options
(:class:`RefinerArguments`), the task's defaults for transformers' ``TrainingArguments`` and the flags of the
previous release. ``--output_dir`` is the adapter folder; the Trainer's checkpoints go to ``--checkpoints``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from project_base.paths import REPO_ROOT
from prompts.templates import TEMPLATE_DIR
from vqa_llm.evaluation.data import VQA_DATASETS

from .arguments import COMMON_RENAMES, SHARED_BATCH_RENAMES, Renamed, runtime_defaults, task_arguments

REFINER_TEMPLATE_DIR = TEMPLATE_DIR / "refiner"
DEFAULT_VQA_MODELS = tuple(str(REPO_ROOT / "assets" / "models" / name) for name in ("vle-easyvqa", "vle-easyvqa-weak"))
DEFAULT_CAPTIONER = str(REPO_ROOT / "assets" / "models" / "blip-easyvqa")


@dataclass
class RefinerArguments:
    """The models, data, prompts and LoRA options of a refiner run (the optimisation settings are
    ``TrainingArguments``)."""

    llm: str = field(default="smollm2", metadata={
        "help": "chat LLM to fine-tune: 'smollm2' (the bundled GGUF), a Hub id, a folder or a .gguf file"})
    vqa_model: list[str] = field(default_factory=lambda: list(DEFAULT_VQA_MODELS), metadata={
        "help": "VQA model(s) whose top-k candidates are the evidence; questions are dealt among them"})
    captioner: str = field(default=DEFAULT_CAPTIONER, metadata={"help": "captioner whose captions are the evidence"})
    top_k: int = field(default=5, metadata={"help": "candidates per question, as the pipeline's top_k"})
    dataset: str = field(default="easy-vqa", metadata={"help": "dataset", "choices": list(VQA_DATASETS)})
    split: str = field(default="train", metadata={"help": "easy-VQA split: train or test"})
    questions: str | None = field(default=None, metadata={
        "help": "vqav2: questions JSON (VQAv2 format; OK-VQA/A-OKVQA files too)"})
    annotations: str | None = field(default=None, metadata={"help": "vqav2: annotations JSON with the human answers"})
    images: str | None = field(default=None, metadata={
        "help": "vqav2: the images folder of that split (e.g. .../train2014)"})
    skip_missing_images: bool = field(default=False, metadata={
        "help": "vqav2: leave out questions whose image is not in --images (default: stop)"})
    limit: int | None = field(default=None, metadata={
        "help": "use a fixed random sample of this many questions (default: all)"})
    sample_seed: int = field(default=0, metadata={
        "help": "seed of the --limit sample, the caption noise and the chat selection (--seed seeds training)"})
    eval_share: float = field(default=0.05, metadata={
        "help": "share of the training *images* held out for the evaluation each epoch"})
    caption_noise: float = field(default=0.0, metadata={
        "help": "share of captions next to a sure top candidate given a wrong colour or shape word (easy-VQA), as "
                "a captioner errs on images it was not trained on"})
    easy_share: float | None = field(default=None, metadata={
        "help": "keep every chat whose caption and top candidate disagree, and chats where they agree as this "
                "share of the result (default: keep all chats)"})
    per_confidence: bool = field(default=False, metadata={
        "help": "apply --easy_share to chats with a sure top candidate (shown as 1.00) and to the others apart, so "
                "that neither the score nor copying or flipping the top candidate predicts the answer of a "
                "disagreement"})
    template: list[str] = field(default_factory=lambda: ["short", "long"], metadata={
        "help": "templates to train on, dealt in turn over the questions"})
    example_bank: str | None = field(default=None, metadata={
        "help": "example bank folder (python -m vqa_llm.build_example_bank) whose records are the solved examples "
                "of the few-shot chats; needed when --template names fewshot"})
    fewshot_examples: int = field(default=8, metadata={
        "help": "most solved examples before the question in a few-shot chat (each chat draws 1 to this many)"})
    fewshot_negated: bool = field(default=False, metadata={
        "help": "also a few-shot chat for every negated yes/no question beside an unsure top candidate (the chats "
                "whose reasoning quotes the claim with its negation), beside the chat of its dealt template"})
    batch_by_prompt_shape: bool = field(default=False, metadata={
        "help": "batches of one template and one number of solved examples each, drawn at random (no padding of "
                "short chats to few-shot length; unlike --train_sampling_strategy group_by_length, no grouping by "
                "content)"})
    template_dir: str = field(default=str(REFINER_TEMPLATE_DIR), metadata={
        "help": "folder of the templates (copied into the adapter, which the pipeline then uses)"})
    answer_weight: float = field(default=1.0, metadata={
        "help": "loss weight of the reply's first line (the answer, or the explanation where it comes first) "
                "against the rest"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    checkpoints: str | None = field(default=None, metadata={
        "help": "folder of the Trainer's checkpoints (default: OUTPUT_DIR/checkpoints)"})
    cache: str = field(default=str(REPO_ROOT / "build_cache" / "refiner"), metadata={
        "help": "folder of the evidence cache (captions and candidates, reused across runs)"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in --checkpoints"})
    overwrite: bool = field(default=False, metadata={
        "help": "write into an --output_dir that already holds an adapter"})


def training_defaults() -> dict[str, Any]:
    """The refiner's ``TrainingArguments`` defaults: a log every 10 steps, a checkpoint every 100 (the newest two
    kept), an evaluation per epoch, warm-up 3% of the run (:func:`training.common.warmup_steps`); bf16 where the
    hardware computes it natively, the CPU included, never fp16 (see :mod:`training.refiner`)."""
    return {
        **runtime_defaults(), "num_train_epochs": 1.0, "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8, "learning_rate": 1e-3, "warmup_steps": 0.03, "weight_decay": 0.0,
        "logging_steps": 10, "logging_first_step": True, "eval_strategy": "epoch", "save_strategy": "steps",
        "save_steps": 100, "save_total_limit": 2, "remove_unused_columns": False, "dataloader_num_workers": 0,
        "disable_tqdm": False,
    }


_PRECISION: dict[str | None, tuple[str, ...]] = {"auto": (), "fp32": ("--bf16", "false", "--fp16", "false"),
                                                 "bf16": ("--bf16",)}
#: the flags of the previous release; its --seed (the sample's seed) is now --sample_seed, and --seed the training
#: seed as in every TrainingArguments CLI (the old --train-seed)
RENAMES: dict[str, Renamed] = {
    **COMMON_RENAMES, **SHARED_BATCH_RENAMES, "--precision": _PRECISION,
    "--train-seed": "--seed", "--train_seed": "--seed",
}


def refiner_arguments(**options) -> tuple[RefinerArguments, TrainingArguments]:
    """(RefinerArguments, TrainingArguments) as the CLI builds them, ``options`` naming fields of either."""
    return task_arguments(RefinerArguments, training_defaults(), **options)
