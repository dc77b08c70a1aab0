"""Fine-tune a chat LLM to refine VQA answers: ``python -m training.refiner``.

Supervised fine-tuning with a ``peft`` LoRA adapter, on chats that are exactly what the pipeline sends (the
messages ``prompts`` builds from caption + question + VQA top-k for a template) and replies in that template's
format (see :mod:`training.refiner_data`); the loss covers the reply tokens only. Training runs on the
transformers ``Trainer`` (checkpoints and ``--resume``, gradient accumulation, bf16 where the hardware has it,
evaluation each epoch on held-out *training* images, tqdm progress; several GPUs through
``accelerate launch -m training.refiner ...``).

    python -m training.refiner --llm smollm2 --dataset easy-vqa --limit 4000 \\
        --vqa_model assets/models/vle-easyvqa assets/models/vle-easyvqa-weak --output_dir runs/refiner
    python -m training.refiner --llm Qwen/Qwen2.5-1.5B-Instruct --dataset vqav2 --questions Q.json \\
        --annotations A.json --images train2014/ --vqa_model hfl/vle-base-for-vqa \\
        --captioner Salesforce/blip-image-captioning-base --template_dir prompts/templates \\
        --output_dir runs/qwen-refiner

The command line is :class:`~training.refiner_arguments.RefinerArguments` and transformers' ``TrainingArguments``
(its standard flags, refiner defaults); Python callers (the bundle build) call :func:`run` with the same two
dataclasses.

The output folder is a LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``) with the prompt
templates it was trained on under ``templates/``: ``--llm-adapter OUT`` (or the ``bundled`` profile, for the
committed easy-VQA refiner) makes the pipeline prompt the model exactly so.

Exit status: 0 done, 2 a user error (one ``Error:`` line on stderr), 130 interrupted (continue with ``--resume``).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import sys
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments

from llm import LLMError, TransformersChatLLM, load_llm
from project_base.errors import VQALLMError
from project_base.memory import release_freed_memory
from project_base.output_folder import check_output_folder
from project_base.paths import portable_path
from prompts import PromptError, available_templates
from vle.vqa_data import VQADataError
from vqa_llm.evaluation.data import examples_from_args
from vqa_llm.evaluation.errors import EvaluationError
from vqa_llm.fewshot.bank import ExampleBank, ExampleBankError
from vqa_llm.fewshot.runs import FEWSHOT_TEMPLATE

from .arguments import build_parser as task_parser
from .arguments import parse
from .common import latest_trainer_checkpoint, resolved_precision, run_arguments
from .easyvqa_attributes import image_attributes
from .refiner_arguments import RENAMES, RefinerArguments, training_defaults
from .refiner_data import add_caption_noise, build_examples, collect_evidence, select_chats

logger = logging.getLogger("training.refiner")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
LORA_TARGETS = "all-linear"
IGNORE_INDEX = -100
#: the Trainer's settings written into the training log
REPORTED_TRAINING_ARGUMENTS = ("num_train_epochs", "max_steps", "per_device_train_batch_size",
                               "gradient_accumulation_steps", "learning_rate", "warmup_steps", "seed", "bf16")


ADAPTER_CARD = """# VQA answer refiner (LoRA adapter)

A LoRA adapter for `{llm}` trained by `python -m training.refiner` to turn a caption and a VQA model's
candidates into a refined answer (templates: {templates}; the prompts are in `templates/`). Load it with
`--llm {llm} --llm-adapter <this folder>`; `training_log.json` holds the data, settings and losses.
"""


class RefinerError(Exception):
    """A user error in the refiner's inputs (message says what to do)."""


#: the errors a user's settings or data cause: one ``Error:`` line, exit status 2
USER_ERRORS = (RefinerError, LLMError, PromptError, VQADataError, EvaluationError, VQALLMError)


def build_parser() -> HfArgumentParser:
    """The ``python -m training.refiner`` parser: :class:`RefinerArguments` and ``TrainingArguments``."""
    return task_parser(
        RefinerArguments, training_defaults(), prog="python -m training.refiner",
        description="LoRA fine-tuning of a chat LLM on the VQA+LLM prompt (caption + question + VQA candidates).",
        epilog="Several GPUs: accelerate launch -m training.refiner ...",
    )


# ------------------------------------------------------------------------------------------ checks
def check_arguments(args: RefinerArguments, training_args: TrainingArguments) -> None:
    """Fail fast, before any model is loaded, on arguments that cannot work."""
    directory = Path(args.template_dir)
    if not directory.is_dir():
        raise RefinerError(f"--template_dir {directory} is not a folder of prompt templates.")
    unknown = [t for t in args.template if t not in available_templates(directory)]
    if unknown:
        raise RefinerError(f"Unknown template(s) {', '.join(unknown)} in {directory}; available: "
                           f"{', '.join(available_templates(directory)) or 'none'}.")
    if FEWSHOT_TEMPLATE in args.template and not args.example_bank:
        raise RefinerError(f"--template {FEWSHOT_TEMPLATE} needs --example_bank: the folder of the solved examples its "
                           "chats start with (assets/models/easyvqa-example-bank for easy-VQA).")
    if args.fewshot_examples < 0:
        raise RefinerError(f"--fewshot_examples must be 0 or more, got {args.fewshot_examples}.")
    out = check_output_folder(training_args.output_dir, "--output_dir")  # BadSettingError for a file in the way
    if (out / "adapter_config.json").exists() and not (args.resume or args.overwrite):
        raise RefinerError(f"{out} already holds an adapter; pass --overwrite to replace it or --resume to continue.")
    if args.resume and not latest_trainer_checkpoint(checkpoint_dir(args, training_args)):
        raise RefinerError(f"--resume: no checkpoint in {checkpoint_dir(args, training_args)}; start without --resume.")
    for name, value in (("--num_train_epochs", training_args.num_train_epochs),
                        ("--per_device_train_batch_size", training_args.per_device_train_batch_size),
                        ("--gradient_accumulation_steps", training_args.gradient_accumulation_steps),
                        ("--learning_rate", training_args.learning_rate), ("--lora_r", args.lora_r),
                        ("--top_k", args.top_k), ("--answer_weight", args.answer_weight)):
        if not value > 0:
            raise RefinerError(f"{name} must be positive, got {value}.")
    if not 0 < args.eval_share < 1:
        raise RefinerError(f"--eval_share must be between 0 and 1, got {args.eval_share}.")
    if not 0 <= args.caption_noise < 1:
        raise RefinerError(f"--caption_noise must be at least 0 and below 1, got {args.caption_noise}.")
    if args.easy_share is not None and not 0 <= args.easy_share <= 1:
        raise RefinerError(f"--easy_share must be between 0 and 1, got {args.easy_share}.")
    for model_dir in (*args.vqa_model, args.captioner):
        if (model_dir.startswith((".", "/")) or "assets" in model_dir) and not Path(model_dir).is_dir():
            raise RefinerError(f"No model folder at {model_dir}: check the path (the bundle build makes "
                               "assets/models/*).")


def checkpoint_dir(args: RefinerArguments, training_args: TrainingArguments) -> Path:
    """Where the Trainer keeps its checkpoints (``--checkpoints``, else ``OUTPUT_DIR/checkpoints``)."""
    return Path(args.checkpoints) if args.checkpoints else Path(training_args.output_dir) / "checkpoints"


def held_out(image: str, share: float) -> bool:
    """Whether an image belongs to the evaluation part (a stable hash of its path, so evidence is reusable)."""
    return zlib.crc32(str(Path(image).name).encode()) % 1000 < share * 1000


# ------------------------------------------------------------------------------------------ data
def tokenize_example(tokenizer, example: dict) -> dict[str, list[int]]:
    """``input_ids`` = chat prompt (as the pipeline renders it) + reply + end of turn; ``labels`` mask the prompt."""
    prompt = tokenizer.apply_chat_template(example["messages"], add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    reply_ids = tokenizer(example["reply"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return {"input_ids": prompt_ids + reply_ids, "attention_mask": [1] * (len(prompt_ids) + len(reply_ids)),
            "labels": [IGNORE_INDEX] * len(prompt_ids) + reply_ids}


def solved_bank(folder: str, top_k: int) -> list[dict]:
    """The records of the example bank at ``folder`` as few-shot examples (candidates cut to ``top_k``, as the app
    cuts them), each with its ``image_id`` and the ``question_type`` of its question (easy-VQA train)."""
    from vle.vqa_data import load_easy_vqa

    try:
        bank = ExampleBank.load(folder)
    except ExampleBankError as exc:
        raise RefinerError(f"--example_bank: {exc}") from None
    if bank.meta.get("source") != "easy-vqa/train":
        raise RefinerError(f"--example_bank {folder} holds {bank.meta.get('source')!r} questions; the refiner's "
                           "few-shot chats take their solved examples from an easy-VQA train bank.")
    types = {str(q.question_id): q.question_type for q in load_easy_vqa("train")}
    return [{**bank.example(row, top_k), "image_id": str(record.get("image_id")),
             "question_type": types.get(str(record.get("question_id")))}
            for row, record in enumerate(bank.records)]


def make_examples(args: RefinerArguments) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """(train chats, evaluation chats, data statistics) from the dataset and the evidence of each VQA model."""
    questions = examples_from_args(SimpleNamespace(**asdict(args), seed=args.sample_seed))
    attributes = None
    if args.dataset == "easy-vqa":
        from vle.vqa_data import load_easy_vqa


        attributes = image_attributes(load_easy_vqa(args.split))  # all questions of an image reveal it
        # images whose colour or shape no question reveals cannot get true sentences: leave them out
        questions = [q for q in questions if {"color", "shape"} <= set(attributes.get(q.image_path, {}))]
    # deal the questions among the VQA models, so each question is seen with one model's evidence
    evidence = []
    for index, vqa_model in enumerate(args.vqa_model):
        share = questions[index::len(args.vqa_model)]
        if share:
            evidence += collect_evidence(share, vqa_model, args.captioner, args.cache, top_k=args.top_k)
    if not evidence:
        raise RefinerError("No training examples: none of the questions can be used (see the log).")
    evidence.sort(key=lambda ev: str(ev.question_id))
    noisy = add_caption_noise(evidence, args.caption_noise, seed=args.sample_seed)
    changed = sum(a.caption != b.caption for a, b in zip(evidence, noisy))
    bank = solved_bank(args.example_bank, args.top_k) if FEWSHOT_TEMPLATE in args.template else None
    all_chats = build_examples(noisy, args.template, args.template_dir, attributes, bank=bank,
                               fewshot=[FEWSHOT_TEMPLATE], n_examples=args.fewshot_examples, seed=args.sample_seed,
                               fewshot_negated=args.fewshot_negated)
    chats = select_chats(all_chats, args.easy_share, seed=args.sample_seed, per_confidence=args.per_confidence)
    if not chats:
        raise RefinerError("No training examples: the data has no question whose answer the evidence supports.")
    train = [c for c in chats if not held_out(c["image"], args.eval_share)]  # chats may be fewer than evidence
    evaluation = [c for c in chats if held_out(c["image"], args.eval_share)]
    stats = {"questions": len(questions), "noisy_captions": changed, "supported": len(all_chats),
             "chats": len(chats), "train": len(train), "eval": len(evaluation), "by_source": {},
             "top1_wrong": sum(not c["vqa_top1_correct"] for c in chats),
             "conflicts": sum(c["conflict"] for c in chats),
             "sure_conflicts": sum(c["conflict"] and c["top1_sure"] for c in chats),
             "by_template": dict(sorted(Counter(c["template"] for c in chats).items()))}
    for chat in chats:
        stats["by_source"][chat["source"]] = stats["by_source"].get(chat["source"], 0) + 1
    if not train:
        raise RefinerError("All examples fell into the held-out part; use more questions or a smaller --eval_share.")
    return train, evaluation, stats


def prompt_shape_batches(chats: Sequence[dict], batch_size: int, seed: int) -> list[dict]:
    """``chats`` reordered so that each run of ``batch_size`` holds chats of one shape (template and number of
    solved examples) drawn at random, the batches in random order, the incomplete ones last.

    Few-shot chats are up to ~6x longer than the others, so a batch that mixes them pads every chat to a few-shot
    length. Grouping by length instead (transformers' ``group_by_length``) puts chats of like *content* together
    (sure and unsure candidates, negated questions: the reply's length) and broke the recipe's balance: the
    adapter so trained flipped the yes/no verdict of 140 of 300 weak-VLE answers (docs/results.md#llm-refiner).
    The shape says nothing about the answer, so a random draw within it keeps every batch balanced.
    """
    rng = random.Random(seed)
    groups: dict[tuple[str, int], list[dict]] = {}
    for chat in chats:
        groups.setdefault((chat["template"], len(chat["messages"])), []).append(chat)
    full, partial = [], []
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        for start in range(0, len(members), batch_size):
            (full if len(members) - start >= batch_size else partial).append(members[start:start + batch_size])
    rng.shuffle(full)
    return [chat for batch in full + partial for chat in batch]


# ------------------------------------------------------------------------------------------ training
def refiner_precision(training_args: TrainingArguments) -> dict[str, bool]:
    """``bf16``/``fp16`` of a refiner run: as given, else bf16 autocast on hardware that computes bf16 natively, the
    CPU included (:func:`training.common.resolved_precision`); an older GPU trains in fp32, not fp16."""
    return resolved_precision(training_args.bf16, training_args.fp16, cpu_bf16=True, fp16_auto=False)


def reply_weights(labels: torch.Tensor, newline_id: int, answer_weight: float) -> torch.Tensor:
    """Per-token loss weights: ``answer_weight`` on the reply's first line (up to its first newline), 1 on the rest
    of the reply, 0 on the prompt and padding (``labels`` == -100)."""
    reply = labels != IGNORE_INDEX
    newlines = (labels == newline_id) & reply
    lines_before = torch.cumsum(newlines, dim=1) - newlines.long()
    first_line = reply & (lines_before == 0)
    return reply.float() + (answer_weight - 1.0) * first_line.float()


class ReplyLossTrainer(Trainer):
    """A transformers ``Trainer`` whose loss covers the reply tokens only, the answer line weighted.

    Batches are left-padded, so every reply ends at the last position and the LM head runs on the last
    ``reply + 1`` positions alone (``logits_to_keep``): on SmolLM2-135M the 49k-word head over the whole prompt took
    about a third of a training step. The loss is the weighted mean over reply tokens (:func:`reply_weights`).
    """

    loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides it over the accumulation steps

    def __init__(self, *args, answer_weight: float = 1.0, newline_id: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.answer_weight, self.newline_id = answer_weight, newline_id

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        length = labels.shape[1]
        first_reply = (labels != IGNORE_INDEX).float().argmax(dim=1)
        keep = min(int((length - first_reply).max().item()) + 1, length)  # the longest reply and the token before
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], logits_to_keep=keep)
        logits = outputs.logits[:, :-1].float()  # position t predicts token t + 1
        targets = labels[:, length - keep + 1:]
        weights = reply_weights(labels, self.newline_id, self.answer_weight)[:, length - keep + 1:]
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                 ignore_index=IGNORE_INDEX, reduction="none")
        loss = (losses * weights.reshape(-1)).sum() / weights.sum().clamp(min=1e-6)
        return (loss, outputs) if return_outputs else loss


class ReleaseFreedMemory(TrainerCallback):
    """Hands the memory freed by each step back to the system. Batches of one prompt shape differ in length from
    step to step, and glibc kept the holes their tensors left: the bundle build's resident set grew by ~1.4 GB per
    ten steps to the machine's 24 GB and was killed at step 123 of 189 (docs/training.md)."""

    def on_step_end(self, args, state, control, **kwargs):
        release_freed_memory()


def save_adapter(model, out: Path, args: RefinerArguments) -> None:
    """Write the LoRA weights (fp16: half the size, loaded back into the model's dtype) and the templates used."""
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.data = param.data.to(torch.float16)
    for config in model.peft_config.values():  # name the base model, not this machine's cache folder
        config.base_model_name_or_path = portable_path(args.llm)
    card = out / "README.md"
    kept = card.read_text(encoding="utf-8") if card.is_file() else None  # peft rewrites a card's metadata
    model.save_pretrained(str(out))
    for file in out.glob("adapter_model.*"):
        file.chmod(0o644)  # safetensors writes 0600; the adapter is shared like the other model files
    # a card already there (the bundled refiner's, with measured figures) is kept as it was
    stub = ADAPTER_CARD.format(llm=portable_path(args.llm), templates=", ".join(dict.fromkeys(args.template)))
    card.write_text(kept if kept is not None else stub, encoding="utf-8")
    templates = out / "templates"
    if templates.exists():
        shutil.rmtree(templates)
    templates.mkdir(parents=True)
    source = Path(args.template_dir)
    for name in args.template:
        for part in ("system", "user"):
            shutil.copy2(source / f"{name}.{part}.txt", templates / f"{name}.{part}.txt")
    manifest = source / "templates.json"
    if manifest.is_file():
        kinds = json.loads(manifest.read_text(encoding="utf-8"))
        (templates / "templates.json").write_text(
            json.dumps({k: v for k, v in kinds.items() if k in args.template}, indent=1) + "\n", encoding="utf-8")


def train(args: RefinerArguments, training_args: TrainingArguments, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Check the settings, then run the whole fine-tuning (the CLI and the bundle build); returns the run's report
    (also written to OUTPUT_DIR/training_log.json). ``callbacks`` are extra transformers ``TrainerCallback``
    objects. User errors raise RefinerError (or the runtime packages' errors) before any model is loaded."""
    from accelerate import PartialState
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, set_seed

    check_arguments(args, training_args)
    started = time.time()
    state = PartialState()
    with state.main_process_first():  # the main process fills the evidence cache, the others read it
        train_chats, eval_chats, stats = make_examples(args)
    logger.info("Examples: %s", json.dumps(stats))
    llm = load_llm(args.llm, device="cpu", dtype=torch.float32)
    if not isinstance(llm, TransformersChatLLM):
        raise RefinerError(
            f"--llm {args.llm} is not a local model; fine-tuning needs weights (a Hub id, folder or .gguf)."
        )
    tokenizer, model = llm.tokenizer, llm.model
    tokenizer.padding_side = "left"  # every reply ends at the last position (see ReplyLossTrainer)
    set_seed(training_args.seed)
    model = get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                                             target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
    model.train()
    if args.batch_by_prompt_shape:
        train_chats = prompt_shape_batches(train_chats, training_args.per_device_train_batch_size
                                           * max(state.num_processes, 1), training_args.seed)
        training_args = replace(training_args, train_sampling_strategy="sequential")
    train_set = [tokenize_example(tokenizer, c) for c in train_chats]
    eval_set = [tokenize_example(tokenizer, c) for c in eval_chats] or None
    newline_id = tokenizer("\n", add_special_tokens=False).input_ids[-1]
    run_args = run_arguments(replace(training_args, output_dir=str(checkpoint_dir(args, training_args))),
                             len(train_set), eval_set is not None, **refiner_precision(training_args))
    trainer = ReplyLossTrainer(
        model=model, args=run_args, train_dataset=train_set, eval_dataset=eval_set,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX),
        callbacks=[ReleaseFreedMemory(), *callbacks], answer_weight=args.answer_weight, newline_id=newline_id,
    )
    resume = str(latest_trainer_checkpoint(checkpoint_dir(args, training_args))) if args.resume else None
    result = trainer.train(resume_from_checkpoint=resume)
    report = {
        "llm": portable_path(args.llm), "vqa_models": [portable_path(m) for m in args.vqa_model],
        "captioner": portable_path(args.captioner), "templates": args.template, "data": stats,
        "steps": trainer.state.global_step, "train_loss": result.training_loss,
        "log_history": trainer.state.log_history, "seconds": round(time.time() - started, 1),
        "settings": {k: [portable_path(x) for x in v] if isinstance(v, list)
                     else portable_path(v) if isinstance(v, str) else v
                     for k, v in asdict(args).items() if k not in ("cache", "checkpoints", "resume", "overwrite")},
        "training_arguments": {k: getattr(run_args, k) for k in REPORTED_TRAINING_ARGUMENTS},
    }
    if state.is_main_process:
        out = Path(training_args.output_dir)
        save_adapter(trainer.model, out, args)
        (out / "training_log.json").write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    state.wait_for_everyone()
    return report


def main(argv: Sequence[str] | None = None, callbacks: Sequence[Any] = ()) -> int:
    """CLI entry point; see the module docstring (``callbacks`` go to the Trainer)."""
    args, training_args = parse(build_parser(), argv, RENAMES)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        report = train(args, training_args, callbacks)
    except USER_ERRORS as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"Interrupted; continue with --resume (checkpoints in {checkpoint_dir(args, training_args)}).",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(json.dumps({"out": training_args.output_dir, "steps": report["steps"], "train_loss": report["train_loss"],
                      "seconds": report["seconds"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
