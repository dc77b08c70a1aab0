"""Fine-tune a chat LLM to refine VQA answers: ``python -m training.refiner``.

Supervised fine-tuning with a ``peft`` LoRA adapter, on chats that are exactly what the pipeline sends (the
messages ``prompts`` builds from caption + question + VQA top-k for a template) and replies in that template's
format (see :mod:`training.refiner_data`); the loss covers the reply tokens only. Training runs on the
transformers ``Trainer`` (checkpoints and ``--resume``, gradient accumulation, bf16 where the hardware has it,
evaluation each epoch on held-out *training* images, tqdm progress; several GPUs through
``accelerate launch -m training.refiner ...``).

    python -m training.refiner --llm smollm2 --dataset easy-vqa --limit 4000 \\
        --vqa-model assets/models/vle-easyvqa assets/models/vle-easyvqa-weak --out runs/refiner
    python -m training.refiner --llm Qwen/Qwen2.5-1.5B-Instruct --dataset vqav2 --questions Q.json \\
        --annotations A.json --images train2014/ --vqa-model hfl/vle-base-for-vqa \\
        --captioner Salesforce/blip-image-captioning-base --template-dir prompts/templates --out runs/qwen-refiner

The output folder is a LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``) with the prompt
templates it was trained on under ``templates/``: ``--llm-adapter OUT`` (or the ``bundled`` profile, for the
committed easy-VQA refiner) makes the pipeline prompt the model exactly so.

Exit status: 0 done, 2 a user error (one ``Error:`` line on stderr), 130 interrupted (continue with ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from llm import LLMError, TransformersChatLLM, load_llm
from prompts import PromptError, available_templates
from prompts.templates import TEMPLATE_DIR
from vle.vqa_data import VQADataError
from vqa_llm.errors import VQALLMError
from vqa_llm.evaluation.data import add_dataset_arguments, examples_from_args
from vqa_llm.evaluation.errors import EvaluationError
from vqa_llm.evaluation.store import check_output_folder
from vqa_llm.paths import REPO_ROOT, portable_path

from .common import latest_trainer_checkpoint, mixed_precision_mode
from .easyvqa_attributes import image_attributes
from .refiner_data import add_caption_noise, build_examples, collect_evidence, select_chats

logger = logging.getLogger("training.refiner")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
REFINER_TEMPLATE_DIR = TEMPLATE_DIR / "refiner"
DEFAULT_VQA_MODELS = tuple(str(REPO_ROOT / "assets" / "models" / name) for name in ("vle-easyvqa", "vle-easyvqa-weak"))
DEFAULT_CAPTIONER = str(REPO_ROOT / "assets" / "models" / "blip-easyvqa")
LORA_TARGETS = "all-linear"
IGNORE_INDEX = -100


ADAPTER_CARD = """# VQA answer refiner (LoRA adapter)

A LoRA adapter for `{llm}` trained by `python -m training.refiner` to turn a caption and a VQA model's
candidates into a refined answer (templates: {templates}; the prompts are in `templates/`). Load it with
`--llm {llm} --llm-adapter <this folder>`; `training_log.json` holds the data, settings and losses.
"""


class RefinerError(Exception):
    """A user error in the refiner's inputs (message says what to do)."""


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m training.refiner`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m training.refiner", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="LoRA fine-tuning of a chat LLM on the VQA+LLM prompt (caption + question + VQA candidates).",
        epilog="Several GPUs: accelerate launch -m training.refiner ...",
    )
    model = parser.add_argument_group("models")
    model.add_argument("--llm", default="smollm2",
                       help="chat LLM to fine-tune: 'smollm2' (the bundled GGUF), a Hub id, a folder or a .gguf file")
    model.add_argument("--vqa-model", nargs="+", default=list(DEFAULT_VQA_MODELS),
                       help="VQA model(s) whose top-k candidates are the evidence; questions are dealt among them")
    model.add_argument("--captioner", default=DEFAULT_CAPTIONER, help="captioner whose captions are the evidence")
    model.add_argument("--top-k", type=int, default=5, help="candidates per question, as the pipeline's top_k")
    data = parser.add_argument_group("data (training split only; --limit samples it)")
    add_dataset_arguments(data, split="train")
    data.add_argument("--eval-share", type=float, default=0.05,
                      help="share of the training *images* held out for the evaluation each epoch")
    data.add_argument("--caption-noise", type=float, default=0.0,
                      help="share of captions next to a sure top candidate given a wrong colour or shape word "
                           "(easy-VQA), as a captioner errs on images it was not trained on")
    data.add_argument("--easy-share", type=float, default=None,
                      help="keep every chat whose caption and top candidate disagree, and chats where they agree "
                           "as this share of the result (default: keep all chats)")
    data.add_argument("--per-confidence", action="store_true",
                      help="apply --easy-share to chats with a sure top candidate (shown as 1.00) and to the others "
                           "apart, so that neither the score nor copying or flipping the top candidate predicts the "
                           "answer of a disagreement")
    prompt = parser.add_argument_group("prompts")
    prompt.add_argument("--template", nargs="+", default=["short", "long"],
                        help="templates to train on, dealt in turn over the questions")
    prompt.add_argument("--template-dir", default=str(REFINER_TEMPLATE_DIR),
                        help="folder of the templates (copied into the adapter, which the pipeline then uses)")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=float, default=1.0)
    train.add_argument("--batch-size", type=int, default=8, help="chats per device and step")
    train.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    train.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (linear decay)")
    train.add_argument("--warmup-ratio", type=float, default=0.03,
                       help="share of the steps spent warming up (never all of a short run)")
    train.add_argument("--answer-weight", type=float, default=1.0,
                       help="loss weight of the reply's first line (the answer, or the explanation where it comes "
                            "first) against the rest")
    train.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                       help="auto: bf16 autocast on CUDA GPUs and CPUs with native bf16 (AMX/AVX512-BF16), else fp32")
    train.add_argument("--lora-r", type=int, default=8)
    train.add_argument("--lora-alpha", type=int, default=16)
    train.add_argument("--lora-dropout", type=float, default=0.05)
    train.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimiser steps")
    train.add_argument("--save-steps", type=int, default=100, help="checkpoint every this many steps")
    train.add_argument("--train-seed", type=int, default=0, help="seed of the LoRA init and the data order")
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, help="adapter folder to write (checkpoints in OUT/checkpoints)")
    out.add_argument("--checkpoints", help="folder of the Trainer's checkpoints (default: OUT/checkpoints)")
    out.add_argument("--cache", default=str(REPO_ROOT / "build_cache" / "refiner"),
                     help="folder of the evidence cache (captions and candidates, reused across runs)")
    out.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUT/checkpoints")
    out.add_argument("--overwrite", action="store_true", help="write into an OUT that already holds an adapter")
    return parser


# ------------------------------------------------------------------------------------------ checks
def check_arguments(args: argparse.Namespace) -> None:
    """Fail fast, before any model is loaded, on arguments that cannot work."""
    directory = Path(args.template_dir)
    if not directory.is_dir():
        raise RefinerError(f"--template-dir {directory} is not a folder of prompt templates.")
    unknown = [t for t in args.template if t not in available_templates(directory)]
    if unknown:
        raise RefinerError(f"Unknown template(s) {', '.join(unknown)} in {directory}; available: "
                           f"{', '.join(available_templates(directory)) or 'none'}.")
    out = check_output_folder(args.out)  # BadSettingError (one line, exit 2) for a file in the way
    if (out / "adapter_config.json").exists() and not (args.resume or args.overwrite):
        raise RefinerError(f"{out} already holds an adapter; pass --overwrite to replace it or --resume to continue.")
    if args.resume and not latest_trainer_checkpoint(checkpoint_dir(args)):
        raise RefinerError(f"--resume: no checkpoint in {checkpoint_dir(args)}; start without --resume.")
    for name, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--grad-accum", args.grad_accum),
                        ("--lr", args.lr), ("--lora-r", args.lora_r), ("--top-k", args.top_k),
                        ("--answer-weight", args.answer_weight)):
        if not value > 0:
            raise RefinerError(f"{name} must be positive, got {value}.")
    if not 0 < args.eval_share < 1:
        raise RefinerError(f"--eval-share must be between 0 and 1, got {args.eval_share}.")
    if not 0 <= args.caption_noise < 1:
        raise RefinerError(f"--caption-noise must be at least 0 and below 1, got {args.caption_noise}.")
    if args.easy_share is not None and not 0 <= args.easy_share <= 1:
        raise RefinerError(f"--easy-share must be between 0 and 1, got {args.easy_share}.")
    for model_dir in (*args.vqa_model, args.captioner):
        if (model_dir.startswith((".", "/")) or "assets" in model_dir) and not Path(model_dir).is_dir():
            raise RefinerError(f"No model folder at {model_dir}: check the path (the bundle build makes "
                               "assets/models/*).")


def checkpoint_dir(args: argparse.Namespace) -> Path:
    """Where the Trainer keeps its checkpoints (``--checkpoints``, else ``OUT/checkpoints``)."""
    return Path(args.checkpoints) if args.checkpoints else Path(args.out) / "checkpoints"


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


def make_examples(args: argparse.Namespace) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """(train chats, evaluation chats, data statistics) from the dataset and the evidence of each VQA model."""
    questions = examples_from_args(args)
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
    noisy = add_caption_noise(evidence, args.caption_noise, seed=args.seed)
    changed = sum(a.caption != b.caption for a, b in zip(evidence, noisy))
    all_chats = build_examples(noisy, args.template, args.template_dir, attributes)
    chats = select_chats(all_chats, args.easy_share, seed=args.seed, per_confidence=args.per_confidence)
    if not chats:
        raise RefinerError("No training examples: the data has no question whose answer the evidence supports.")
    train = [c for c in chats if not held_out(c["image"], args.eval_share)]  # chats may be fewer than evidence
    evaluation = [c for c in chats if held_out(c["image"], args.eval_share)]
    stats = {"questions": len(questions), "noisy_captions": changed, "supported": len(all_chats),
             "chats": len(chats), "train": len(train), "eval": len(evaluation), "by_source": {},
             "top1_wrong": sum(not c["vqa_top1_correct"] for c in chats),
             "conflicts": sum(c["conflict"] for c in chats),
             "sure_conflicts": sum(c["conflict"] and c["top1_sure"] for c in chats)}
    for chat in chats:
        stats["by_source"][chat["source"]] = stats["by_source"].get(chat["source"], 0) + 1
    if not train:
        raise RefinerError("All examples fell into the held-out part; use more questions or a smaller --eval-share.")
    return train, evaluation, stats


# ------------------------------------------------------------------------------------------ training
def use_bf16(precision: str) -> bool:
    """Whether to train under bf16 autocast: asked for, or ``auto`` on hardware that computes bf16 natively, the
    CPU included (:func:`training.common.mixed_precision_mode`; an older GPU trains in fp32, not fp16)."""
    return mixed_precision_mode({"fp32": "no"}.get(precision, precision), cpu_bf16=True) == "bf16"


def training_arguments(args: argparse.Namespace, steps_per_epoch: int):
    """The Trainer's settings: warm-up bounded so a short run still trains, bf16 where the hardware has it."""
    from transformers import TrainingArguments

    total = args.max_steps if args.max_steps > 0 else math.ceil(steps_per_epoch * args.epochs)
    warmup = min(int(total * args.warmup_ratio), max(total - 1, 0))
    bf16 = use_bf16(args.precision)
    return TrainingArguments(
        output_dir=str(checkpoint_dir(args)), num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr, lr_scheduler_type="linear",
        warmup_steps=warmup, weight_decay=0.0, max_grad_norm=1.0, logging_steps=10, eval_strategy="epoch",
        save_strategy="steps", save_steps=args.save_steps, save_total_limit=2, seed=args.train_seed,
        data_seed=args.train_seed, bf16=bf16, report_to=[], remove_unused_columns=False,
        dataloader_num_workers=0, disable_tqdm=False, logging_first_step=True, use_cpu=not torch.cuda.is_available(),
    )


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


def save_adapter(model, out: Path, args: argparse.Namespace) -> None:
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
    stub = ADAPTER_CARD.format(llm=portable_path(args.llm), templates=", ".join(args.template))
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


def train(args: argparse.Namespace, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Run the whole fine-tuning; returns the run's report (also written to OUT/training_log.json).
    ``callbacks`` are extra transformers ``TrainerCallback`` objects."""
    from accelerate import PartialState
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, set_seed

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
    set_seed(args.train_seed)
    model = get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                                             target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
    model.train()
    train_set = [tokenize_example(tokenizer, c) for c in train_chats]
    eval_set = [tokenize_example(tokenizer, c) for c in eval_chats] or None
    steps_per_epoch = math.ceil(len(train_set) / (args.batch_size * args.grad_accum * state.num_processes))
    newline_id = tokenizer("\n", add_special_tokens=False).input_ids[-1]
    trainer = ReplyLossTrainer(
        model=model, args=training_arguments(args, steps_per_epoch), train_dataset=train_set, eval_dataset=eval_set,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX),
        callbacks=list(callbacks), answer_weight=args.answer_weight, newline_id=newline_id,
    )
    resume = str(latest_trainer_checkpoint(checkpoint_dir(args))) if args.resume else None
    result = trainer.train(resume_from_checkpoint=resume)
    report = {
        "llm": portable_path(args.llm), "vqa_models": [portable_path(m) for m in args.vqa_model],
        "captioner": portable_path(args.captioner), "templates": args.template, "data": stats,
        "steps": trainer.state.global_step, "train_loss": result.training_loss,
        "log_history": trainer.state.log_history, "seconds": round(time.time() - started, 1),
        "settings": {k: [portable_path(x) for x in v] if isinstance(v, list)
                     else portable_path(v) if isinstance(v, str) else v
                     for k, v in vars(args).items() if k not in ("out", "cache", "checkpoints", "resume", "overwrite")},
    }
    if state.is_main_process:
        out = Path(args.out)
        save_adapter(trainer.model, out, args)
        (out / "training_log.json").write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    state.wait_for_everyone()
    return report


def main(argv: Sequence[str] | None = None, callbacks: Sequence[Any] = ()) -> int:
    """CLI entry point; see the module docstring (``callbacks`` go to the Trainer)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        check_arguments(args)
        report = train(args, callbacks)
    except (RefinerError, LLMError, PromptError, VQADataError, EvaluationError, VQALLMError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"Interrupted; continue with --resume (checkpoints in {checkpoint_dir(args)}).",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    print(json.dumps({"out": args.out, "steps": report["steps"], "train_loss": report["train_loss"],
                      "seconds": report["seconds"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
