"""GPU acceptance check: the bundled models, the evaluator and VLE fine-tuning on CUDA, with every figure asserted.

    python bench/gpu_check.py                          # the acceptance run on cuda (meant to take < 5 min on an H100)
    python bench/gpu_check.py --device cuda:1
    python bench/gpu_check.py --shapes base,large      # also random-weight models at the base/large profile sizes
    python bench/gpu_check.py --smoke --device cpu     # the same checks, small sizes, on the CPU: checks the script

What it checks (thresholds in the constants below; each figure is printed as it is measured, PASS or FAIL):

1. CPU reference: the bundled VLE (``assets/models/vle-easyvqa``) in fp32 on the CPU answers a fixed sample of
   256 easy-VQA *test* questions (``sample_examples(load_easy_vqa("test"), 256, seed=0)``, the sample of
   ``python -m vqa_llm.evaluate --limit 256 --seed 0``) without captions or LLM; its top-1 answers are the
   reference, and its raw VQA accuracy must be >= 99% too.
2. The bundled profile on ``--device`` in bf16, fp32 and fp16: the VLE, the BLIP captioner and the LLM (the
   SmolLM2 GGUF with the easy-VQA refiner adapter, run by transformers as on every GPU) are loaded by the app's
   loaders (``vqa_llm.loading``) with that dtype forced, and answer the sample with the LLM through
   ``run_batch``. Asserted: every parameter of the three models is on the device in that dtype; every VQA score
   is finite; top-1 agrees with the CPU reference on >= 99% of the questions; raw VQA accuracy >= 99%; LLM
   fallbacks (replies the parser could not read, ``llm_fallback``) < 5%.
3. The evaluator (``vqa_llm.evaluate.main``, bundled profile, the app's default dtype on ``--device``): a run is
   stopped after 2 batches as Ctrl-C would stop it (exit 130), its last record is cut in half as a kill during
   a write leaves it, and ``--resume`` finishes it (exit 0). Asserted: predictions.jsonl holds exactly the
   sample's questions, each once, and the resumed session answered exactly the missing ones.
4. VLE fine-tuning (``training.vqa_finetune.train_vqa``, the transformers Trainer): 20 steps in bf16 and 20 in
   fp16 mixed precision from the bundled pretraining checkpoint with a new VQA head. Asserted: the loss of every
   step is finite and falls (mean of the last 5 < mean of the first 5), the head computed in the mixed-precision
   dtype, the weights stayed fp32 on the GPU.
5. Optional (``--shapes base,large``): random-weight models at the sizes of the ``base`` and ``large`` profiles
   (Qwen2.5-1.5B / 7B-shaped LLM, 4-bit for ``large``) loaded through ``VQALLMPipeline.from_profile``; asserted:
   every question answered end to end, every parameter on the device in the dtype the app's rules give
   (``resolve_dtype``, ``resolve_llm_dtype`` for the LLM; 4-bit weights quantised). ``large`` writes a 15 GB
   random LLM to disk and takes minutes on its own.

The last line printed is one JSON object with every figure, ``failures`` and ``passed``. Exit status: 0 when
every check passed, 1 otherwise, 2 for a usage error. Without CUDA (and without ``--smoke``) it says so and
exits 0. ``--smoke`` runs the same checks with small sizes (4 questions, fp32 only, an evaluator run of 3
questions without the LLM, 4 fine-tuning steps without mixed precision): on the CPU it checks the script itself,
not the GPU.
Fine-tuning runs where the Trainer puts it (the first visible GPU; ``CUDA_VISIBLE_DEVICES`` picks another).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------- thresholds
MIN_TOP1_AGREEMENT = 0.99
MIN_RAW_ACCURACY = 0.99
MAX_FALLBACK_RATE = 0.05
SAMPLE_SEED = 0
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
MIXED_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}
FINETUNE_LR = 5e-4
LLM_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Sizes:
    """How much each check does: the full acceptance run, or the smoke run's small sizes."""

    questions: int  # easy-VQA test questions answered per precision
    batch_size: int
    precisions: tuple[str, ...]
    eval_questions: int  # the evaluator's --limit
    eval_batch_size: int
    eval_stop_after: int  # batches answered before the run is interrupted
    eval_llm: bool  # the evaluator runs the LLM (the smoke run leaves it out: its resume bookkeeping is the same)
    steps: int  # fine-tuning steps per mixed precision
    train_batch_size: int
    mixed_precisions: tuple[str, ...]


FULL = Sizes(questions=256, batch_size=32, precisions=("bf16", "fp32", "fp16"),
             eval_questions=64, eval_batch_size=16, eval_stop_after=2, eval_llm=True,
             steps=20, train_batch_size=32, mixed_precisions=("bf16", "fp16"))
SMOKE = Sizes(questions=4, batch_size=4, precisions=("fp32",),
              eval_questions=3, eval_batch_size=1, eval_stop_after=2, eval_llm=False,
              steps=4, train_batch_size=8, mixed_precisions=("no",))


# ------------------------------------------------------------------------------------------ checks
class Checks:
    """Every check's outcome by name (``section.name``), printed as it is made; the failures listed."""

    def __init__(self) -> None:
        self.outcomes: dict[str, bool] = {}
        self.failures: list[str] = []

    def expect(self, section: str, name: str, ok: bool, detail: str) -> bool:
        """Record one check; print ``PASS``/``FAIL`` with its figure."""
        key = f"{section}.{name}"
        self.outcomes[key] = bool(ok)
        print(f"  {'PASS' if ok else 'FAIL'} {key}: {detail}", flush=True)
        if not ok:
            self.failures.append(f"{key}: {detail}")
        return bool(ok)

    @property
    def passed(self) -> bool:
        return bool(self.outcomes) and not self.failures


def run_section(checks: Checks, section: str, check: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``check(*args)``'s figures; an exception (a load that fails, CUDA out of memory) is a failed check."""
    print(f"\n== {section}", flush=True)
    started = time.perf_counter()
    try:
        figures = check(*args)
    except Exception as exc:  # noqa: BLE001 - any failure of the code under test is a FAIL, not a crash
        traceback.print_exc()
        checks.expect(section, "completed", False, f"raised {type(exc).__name__}: {exc}")
        figures = {"error": f"{type(exc).__name__}: {exc}"}
    figures["section_s"] = round(time.perf_counter() - started, 2)
    return figures


def expected_device(device: str | torch.device) -> torch.device:
    """``device`` with its index filled in (a bare ``cuda`` is the current device)."""
    where = torch.device(device)
    if where.type == "cuda" and where.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return where


def parameter_report(model: torch.nn.Module, device: str | torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """How many of ``model``'s parameters are not on ``device`` in ``dtype`` (bitsandbytes 4-bit weights are
    counted as ``quantized`` and only their device is checked), with a few of them named."""
    where = expected_device(device)
    count = quantized = 0
    wrong: list[str] = []
    for name, param in model.named_parameters():
        count += 1
        is_4bit = type(param).__name__ == "Params4bit"
        quantized += is_4bit
        if param.device != where or (not is_4bit and param.dtype != dtype):
            wrong.append(f"{name}: {param.dtype} on {param.device}")
    return {"count": count, "wrong": len(wrong), "quantized": quantized, "examples": wrong[:3],
            "expected": f"{dtype} on {where}"}


def expect_parameters(checks: Checks, section: str, models: dict[str, torch.nn.Module], device: str | torch.device,
                      dtype: torch.dtype) -> dict[str, Any]:
    """One check per model: every parameter on ``device`` in ``dtype``."""
    reports = {}
    for part, model in models.items():
        report = reports[part] = parameter_report(model, device, dtype)
        checks.expect(section, f"{part}_parameters", report["count"] > 0 and report["wrong"] == 0,
                      f"{report['count'] - report['wrong']}/{report['count']} parameters {report['expected']}"
                      + (f" ({report['quantized']} quantised)" if report["quantized"] else "")
                      + (f"; e.g. {report['examples']}" if report["wrong"] else ""))
    return reports


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def json_ready(value: Any) -> Any:
    """``value`` for strict JSON: NaN and infinities as ``None``, dtypes and devices as text."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class GPUMemory:
    """Memory counters of every visible CUDA device (none on the CPU)."""

    def __init__(self, device: torch.device):
        self.indices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []

    def describe(self) -> list[dict[str, Any]]:
        return [{"index": i, "name": torch.cuda.get_device_name(i),
                 "capability": list(torch.cuda.get_device_capability(i)),
                 "total_mib": round(torch.cuda.get_device_properties(i).total_memory / 2**20)} for i in self.indices]

    def reset(self) -> None:
        for i in self.indices:
            torch.cuda.synchronize(i)
            torch.cuda.reset_peak_memory_stats(i)

    def peaks(self) -> dict[str, float]:
        """Peak MiB allocated on each GPU since the last :meth:`reset`."""
        for i in self.indices:
            torch.cuda.synchronize(i)
        return {f"cuda:{i}": round(torch.cuda.max_memory_allocated(i) / 2**20) for i in self.indices}

    def allocated(self) -> dict[str, float]:
        return {f"cuda:{i}": round(torch.cuda.memory_allocated(i) / 2**20) for i in self.indices}

    def release(self) -> None:
        if self.indices:
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- 1-2. bundled profile
def easy_vqa_sample(size: int) -> list:
    """The fixed sample of ``size`` easy-VQA test questions (the evaluator's ``--limit size --seed 0``)."""
    from vle.vqa_data import load_easy_vqa
    from vqa_llm.evaluation.data import sample_examples

    return sample_examples(load_easy_vqa("test"), size, seed=SAMPLE_SEED)


def load_sample(sizes: Sizes, checks: Checks, sample: list) -> dict[str, Any]:
    """The easy-VQA test sample every inference check answers (appended to ``sample``)."""
    sample += easy_vqa_sample(sizes.questions)
    ids = [e.question_id for e in sample]
    checks.expect("sample", "questions", len(set(ids)) == sizes.questions,
                  f"{len(set(ids))} distinct easy-VQA test questions (seed {SAMPLE_SEED}; {sizes.questions} expected)")
    return {"dataset": "easy-vqa", "split": "test", "seed": SAMPLE_SEED, "questions": len(ids), "first_ids": ids[:5]}


def bundled(device: str):
    """The bundled profile on ``device``, its LLM run by transformers (what ``auto`` picks on every GPU)."""
    from vqa_llm.profiles import bundled_profile

    return replace(bundled_profile(), device=device, llm_runtime="transformers")


def cpu_reference(sample: list, sizes: Sizes, checks: Checks, answers: list[str]) -> dict[str, Any]:
    """The bundled VLE in fp32 on the CPU, VQA only: its top-1 answers (appended to ``answers``)."""
    from vqa_llm import VQALLMPipeline
    from vqa_llm.loading import load_vqa_model
    from vqa_llm.metrics import vqa_accuracy

    profile = bundled("cpu")
    model, processor = load_vqa_model(profile.vqa_model, "cpu", local_files_only=True, dtype=torch.float32)
    params = expect_parameters(checks, "cpu_reference", {"vqa": model}, "cpu", torch.float32)
    started = time.perf_counter()
    results = VQALLMPipeline(model, processor).run_batch(
        [e.image_path for e in sample], [e.question for e in sample], use_llm=False, describe_image=False,
        batch_size=sizes.batch_size)
    answers += [r.vqa_answer for r in results]
    accuracy = mean([vqa_accuracy(r.vqa_answer, e.answers) for e, r in zip(sample, results)])
    checks.expect("cpu_reference", "raw_accuracy", accuracy >= MIN_RAW_ACCURACY,
                  f"{accuracy:.2%} of {len(sample)} (>= {MIN_RAW_ACCURACY:.0%})")
    return {"questions": len(sample), "raw_accuracy": accuracy, "answer_s": round(time.perf_counter() - started, 2),
            "parameters": params}


def load_bundled(device: str, dtype: torch.dtype):
    """The bundled models through the app's loaders (as ``load_components`` does) with ``dtype`` forced."""
    from vqa_llm import VQALLMPipeline
    from vqa_llm.loading import enable_tf32, load_captioner, load_chat_llm, load_vqa_model

    profile = bundled(device)
    enable_tf32(device)
    vqa_model, processor = load_vqa_model(profile.vqa_model, device, local_files_only=True, dtype=dtype)
    captioner = load_captioner(profile.captioner, device, local_files_only=True, dtype=dtype)
    llm = load_chat_llm(profile, device, dtype=dtype)
    return VQALLMPipeline(vqa_model, processor, captioner, llm, llm_timeout=LLM_TIMEOUT_S,
                          model_ids=profile.model_ids())


def check_precision(name: str, sample: list, reference: list[str], args: argparse.Namespace, sizes: Sizes,
                    checks: Checks, memory: GPUMemory) -> dict[str, Any]:
    """Load the bundled models in precision ``name`` on the device and answer the sample with the LLM."""
    from vqa_llm.metrics import vqa_accuracy

    section = f"bundled_{name}"
    dtype = DTYPES[name]
    memory.reset()
    started = time.perf_counter()
    pipe = load_bundled(args.device, dtype)
    figures: dict[str, Any] = {"load_s": round(time.perf_counter() - started, 2)}
    print(f"  loaded in {figures['load_s']} s", flush=True)
    figures["parameters"] = expect_parameters(
        checks, section, {"vqa": pipe.vqa_model, "captioner": pipe.captioner.model, "llm": pipe.llm.model},
        args.device, dtype)

    started = time.perf_counter()
    results = pipe.run_batch([e.image_path for e in sample], [e.question for e in sample],
                             batch_size=sizes.batch_size, max_new_tokens=args.max_new_tokens)
    answer_s = time.perf_counter() - started
    scores = [score for r in results for _, score in r.candidates]
    finite = all(r.candidates for r in results) and all(math.isfinite(s) for s in scores)
    differ = [(e.question_id, r.vqa_answer, ref) for e, r, ref in zip(sample, results, reference)
              if r.vqa_answer != ref]
    agreement = 1 - len(differ) / len(results) if len(reference) == len(results) else float("nan")  # nan: no reference
    figures.update({
        "questions": len(results), "answer_s": round(answer_s, 2), "questions_per_s": round(len(results) / answer_s, 1),
        "finite_scores": finite,
        "top1_agreement": agreement, "differ_from_cpu": differ[:5],
        "raw_accuracy": mean([vqa_accuracy(r.vqa_answer, e.answers) for e, r in zip(sample, results)]),
        "llm_accuracy": mean([vqa_accuracy(r.scored_answer or "", e.answers) for e, r in zip(sample, results)]),
        "llm_used": sum(r.llm_used for r in results),
        "llm_fallback_rate": mean([float(r.llm_fallback) for r in results]),
        "llm_errors": sum(r.error is not None for r in results),
        "peak_mib": memory.peaks(),
    })
    print(f"  answered {len(results)} questions in {figures['answer_s']} s ({figures['questions_per_s']} q/s), "
          f"LLM accuracy {figures['llm_accuracy']:.2%}, {figures['llm_errors']} LLM errors, "
          f"GPU peak MiB {figures['peak_mib']}", flush=True)
    checks.expect(section, "finite_scores", finite, f"{len(scores)} candidate scores, all finite: {finite}")
    checks.expect(section, "top1_agreement", figures["top1_agreement"] >= MIN_TOP1_AGREEMENT,
                  f"{figures['top1_agreement']:.2%} agree with the CPU fp32 run (>= {MIN_TOP1_AGREEMENT:.0%})"
                  + (f"; differ: {differ[:5]}" if differ else ""))
    checks.expect(section, "raw_accuracy", figures["raw_accuracy"] >= MIN_RAW_ACCURACY,
                  f"{figures['raw_accuracy']:.2%} (>= {MIN_RAW_ACCURACY:.0%})")
    checks.expect(section, "llm_used", figures["llm_used"] == len(results),
                  f"the LLM answered {figures['llm_used']} of {len(results)} questions")
    checks.expect(section, "llm_fallback_rate", figures["llm_fallback_rate"] < MAX_FALLBACK_RATE,
                  f"{figures['llm_fallback_rate']:.2%} of replies unreadable (< {MAX_FALLBACK_RATE:.0%})")
    del pipe
    memory.release()
    return figures


# --------------------------------------------------------------------------------------- 3. evaluator
@contextmanager
def interrupted_after(batches: int) -> Iterator[None]:
    """Within the block, the evaluator's batch loop raises KeyboardInterrupt (as Ctrl-C would) once ``batches``
    batches have been answered."""
    from vqa_llm.evaluation import runner

    answer_batch, done = runner.answer_batch, 0

    def answer_then_stop(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        nonlocal done
        if done == batches:
            raise KeyboardInterrupt
        done += 1
        return answer_batch(*args, **kwargs)

    runner.answer_batch = answer_then_stop
    try:
        yield
    finally:
        runner.answer_batch = answer_batch


def run_evaluator(argv: list[str]) -> int:
    """``python -m vqa_llm.evaluate ARGV`` in this process: its exit status (the log level it sets undone)."""
    from vqa_llm.evaluate import main

    logger = logging.getLogger("vqa_llm")
    level = logger.level
    try:
        return main(argv)
    finally:
        logger.setLevel(level)


def check_evaluator(args: argparse.Namespace, sizes: Sizes, checks: Checks, workdir: Path) -> dict[str, Any]:
    """Interrupt an evaluator run, cut its last record in half, resume it; no question lost or duplicated."""
    section = "evaluator"
    out = workdir / "evaluation"
    argv = ["--dataset", "easy-vqa", "--split", "test", "--limit", str(sizes.eval_questions),
            "--seed", str(SAMPLE_SEED), "--batch-size", str(sizes.eval_batch_size), "--profile", "bundled",
            "--device", args.device, "--llm-runtime", "transformers", "--max-new-tokens", str(args.max_new_tokens),
            "--out", str(out), "-q"] + ([] if sizes.eval_llm else ["--no-llm"])
    with interrupted_after(sizes.eval_stop_after):
        first = run_evaluator(argv)
    predictions = out / "predictions.jsonl"
    lines = predictions.read_text(encoding="utf-8").splitlines(keepends=True) if predictions.is_file() else []
    written = len(lines)
    checks.expect(section, "interrupted", first == 130 and written == sizes.eval_stop_after * sizes.eval_batch_size,
                  f"exit {first} (130 expected) with {written} records written "
                  f"({sizes.eval_stop_after * sizes.eval_batch_size} expected)")
    if lines:  # a kill in the middle of a write leaves half a line
        predictions.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2], encoding="utf-8")
    kept = max(written - 1, 0)

    second = run_evaluator([*argv, "--resume"])
    records = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines() if line.strip()]
    ids = [r["question_id"] for r in records]
    expected = [e.question_id for e in easy_vqa_sample(sizes.eval_questions)]
    sessions = json.loads((out / "run.json").read_text(encoding="utf-8"))["sessions"]
    answered = sessions[-1]["answered"] if sessions else None
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))["overall"]
    figures = {"first_exit": first, "written_before_interrupt": written, "kept_after_cut": kept, "resume_exit": second,
               "answered_on_resume": answered, "records": len(ids), "unique": len(set(ids)),
               "missing": sorted(set(expected) - set(ids))[:5], "extra": sorted(set(ids) - set(expected))[:5],
               "raw_accuracy": summary.get("raw_accuracy"), "llm_accuracy": summary.get("llm_accuracy")}
    checks.expect(section, "resumed", second == 0, f"exit {second} (0 expected)")
    checks.expect(section, "every_question_once", sorted(ids) == sorted(expected) and len(ids) == len(set(ids)),
                  f"{len(ids)} records, {len(set(ids))} distinct, for a sample of {len(expected)}; "
                  f"missing {figures['missing']}, extra {figures['extra']}")
    checks.expect(section, "resume_answered_the_rest", answered == len(expected) - kept,
                  f"the resumed session answered {answered} questions ({len(expected)} - {kept} kept expected)")
    return figures


# ------------------------------------------------------------------------------------- 4. fine-tuning
def check_finetune(mode: str, sizes: Sizes, checks: Checks, workdir: Path) -> dict[str, Any]:
    """``sizes.steps`` steps of VQA fine-tuning in mixed precision ``mode``: finite, falling loss."""
    from training.vqa_arguments import vqa_arguments
    from training.vqa_finetune import answer_vocabulary, train_vqa
    from vle import VLEForVQA, VLEProcessor
    from vle.vqa_data import load_easy_vqa
    from vqa_llm.evaluation.data import sample_examples
    from vqa_llm.profiles import BUNDLED_PRETRAIN_DIR

    section = f"finetune_{mode}"
    train = sample_examples(load_easy_vqa("train"), sizes.steps * sizes.train_batch_size, seed=SAMPLE_SEED)
    id2label = answer_vocabulary(train)
    torch.manual_seed(SAMPLE_SEED)  # the new head's initial weights
    model = VLEForVQA.from_pretrained(BUNDLED_PRETRAIN_DIR, id2label=id2label,
                                      label2id={label: i for i, label in id2label.items()})
    processor = VLEProcessor.from_pretrained(BUNDLED_PRETRAIN_DIR)
    losses: list[float] = []
    head_dtypes: set[torch.dtype] = set()
    model.register_forward_hook(  # each training step's loss, and the dtype the head computed in
        lambda module, inputs, out: losses.append(out.loss.detach().item()) if module.training else None)
    model.vqa_classifier.register_forward_hook(
        lambda module, inputs, out: head_dtypes.add(out.dtype) if module.training else None)
    args, training_args = vqa_arguments(output_dir=str(workdir / f"finetune-{mode}"), num_train_epochs=1,
                                        per_device_train_batch_size=sizes.train_batch_size,
                                        learning_rate=FINETUNE_LR, warmup_steps=2, bf16=mode == "bf16",
                                        fp16=mode == "fp16", seed=SAMPLE_SEED, save_total_limit=1)
    started = time.perf_counter()
    log = train_vqa(model, processor, train, args, training_args)
    window = max(1, min(5, len(losses) // 2))
    first, last = mean(losses[:window]), mean(losses[-window:])
    trainer_device = "cuda" if torch.cuda.is_available() else "cpu"  # training_arguments' rule
    figures = {"steps": len(losses), "losses": [round(x, 4) for x in losses], "first_mean": first, "last_mean": last,
               "head_dtypes": sorted(str(d) for d in head_dtypes), "weights_changed": log["weights_changed"],
               "train_s": round(time.perf_counter() - started, 2)}
    print(f"  losses {figures['losses']}", flush=True)
    checks.expect(section, "steps", len(losses) == sizes.steps, f"{len(losses)} steps ({sizes.steps} expected)")
    checks.expect(section, "finite_loss", bool(losses) and all(math.isfinite(x) for x in losses),
                  f"{sum(math.isfinite(x) for x in losses)}/{len(losses)} finite")
    checks.expect(section, "loss_falls", last < first,
                  f"mean of the last {window} {last:.4f} < mean of the first {window} {first:.4f}")
    checks.expect(section, "mixed_precision", head_dtypes == {MIXED_DTYPES[mode]},
                  f"the VQA head computed in {figures['head_dtypes']} ({MIXED_DTYPES[mode]} expected)")
    checks.expect(section, "weights_changed", bool(log["weights_changed"]), f"{log['weights_changed']}")
    figures["parameters"] = expect_parameters(checks, section, {"vqa": model}, trainer_device, torch.float32)
    return figures


# ------------------------------------------------------------- 5. random weights at the profiles' sizes
MANIFESTS = REPO_ROOT / "tests" / "fixtures" / "vle_reference" / "manifests"
SHAPES = ("base", "large")
VQA_LABELS = 3129
#: Qwen/Qwen2.5-1.5B-Instruct and Qwen/Qwen2.5-7B-Instruct sizes
QWEN25 = {
    "base": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "large": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                  num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
}
#: blip-image-captioning-base is BlipConfig(); -large has a ViT-L vision tower
BLIP_VISION = {"base": {}, "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                         intermediate_size=4096)}
SMOKE_SIZES = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
QUESTIONS = ("What is the man holding?", "What colour is the bus?", "How many dogs are there?",
             "Where is the cat sitting?")
BATCH = 16


def vle_config(profile: str, smoke: bool) -> dict[str, Any]:
    """The vle-{base,large}-for-vqa config from the manifests (shrunk for ``smoke``), with 3129 answers."""
    manifest = MANIFESTS / f"vle-{profile}-for-vqa.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"Missing {manifest}: the VLE sizes come from the repository's test fixtures.")
    config = json.loads(manifest.read_text())["config_json_as_saved_by_config_save_pretrained"]
    labels = 10 if smoke else VQA_LABELS
    config["id2label"] = {str(i): f"answer {i}" for i in range(labels)}
    config["label2id"] = {f"answer {i}": i for i in range(labels)}
    if smoke:
        config.update(SMOKE_SIZES)
        config["text_config"] = {**config["text_config"], **SMOKE_SIZES, "vocab_size": 200, "position_buckets": 16}
        config["vision_config"] = {**config["vision_config"], **SMOKE_SIZES, "image_size": 32, "patch_size": 8,
                                   "projection_dim": 32}
    return config


def _build_on(device: torch.device) -> torch.device:
    """Initialise on the GPU (fast) when checking CUDA, else on the CPU."""
    return torch.device(device) if device.type == "cuda" else torch.device("cpu")


def save_vle(folder: Path, profile: str, smoke: bool, device: torch.device) -> None:
    """A random VLEForVQA of the profile's sizes and its processor, saved like a checkpoint (fp32)."""
    from random_models import CORPUS

    from training.processor_files import write_processor_files
    from vle import VLEConfig, VLEForVQA

    config = vle_config(profile, smoke)
    write_processor_files(folder, CORPUS * 20, image_size=config["vision_config"]["image_size"], vocab_size=120)
    with _build_on(device):
        model = VLEForVQA(VLEConfig(**config))
    model.save_pretrained(folder)


def save_blip(folder: Path, profile: str, smoke: bool, device: torch.device) -> None:
    """A random BLIP captioner of blip-image-captioning-{base,large} sizes and its processor (fp32)."""
    from random_models import blip_processor
    from transformers import BlipConfig, BlipForConditionalGeneration

    if smoke:
        config = BlipConfig(text_config={**SMOKE_SIZES, "vocab_size": 30524},
                            vision_config={**SMOKE_SIZES, "image_size": 32, "patch_size": 8})
    else:
        config = BlipConfig(vision_config=BLIP_VISION[profile])
    with _build_on(device):
        model = BlipForConditionalGeneration(config)
    model.save_pretrained(folder)
    blip_processor(config).save_pretrained(folder)


def save_llm(folder: Path, profile: str, smoke: bool, device: torch.device) -> None:
    """A random Qwen2.5-shaped chat LM (bf16 weights, as published) and a ChatML tokenizer."""
    from random_models import CORPUS, chat_tokenizer
    from transformers import Qwen2Config, Qwen2ForCausalLM

    sizes = dict(QWEN25[profile], max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1_000_000.0)
    if smoke:
        sizes.update(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
                     intermediate_size=128, vocab_size=512)
    tokenizer = chat_tokenizer(sizes["vocab_size"], CORPUS + list(QUESTIONS))
    config = Qwen2Config(**sizes, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    params = 2 * sizes["vocab_size"] * sizes["hidden_size"] + sizes["num_hidden_layers"] * (
        4 * sizes["hidden_size"] ** 2 + 3 * sizes["hidden_size"] * sizes["intermediate_size"])
    where = _build_on(device)
    if where.type == "cuda" and torch.cuda.mem_get_info(where)[0] < 3 * params:  # bf16 weights + headroom
        where = torch.device("cpu")
    with where:
        model = Qwen2ForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def check_shapes(name: str, args: argparse.Namespace, checks: Checks, memory: GPUMemory,
                 workdir: Path) -> dict[str, Any]:
    """Random models at profile ``name``'s sizes, loaded as the app loads them: a streamed answer, a batch of 16."""
    from random_models import photo

    from vqa_llm import VQALLMPipeline
    from vqa_llm.loading import resolve_dtype, resolve_llm_dtype
    from vqa_llm.profiles import HUB_PROFILES

    section = f"shapes_{name}"
    device = torch.device(args.device)
    folder = workdir / f"shapes-{name}"
    started = time.perf_counter()
    for part, save in (("vle", save_vle), ("blip", save_blip), ("llm", save_llm)):
        save(folder / part, name, args.smoke, device)
        memory.release()
    built_s = time.perf_counter() - started
    profile = replace(HUB_PROFILES[name], vqa_model=str(folder / "vle"), captioner=str(folder / "blip"),
                      llm=str(folder / "llm"), device=args.device, local_files_only=True)
    memory.reset()
    started = time.perf_counter()
    pipe = VQALLMPipeline.from_profile(profile, llm_timeout=LLM_TIMEOUT_S)
    llm = pipe.llm.model
    report: dict[str, Any] = {"built_s": round(built_s, 1), "load_s": round(time.perf_counter() - started, 2),
                              "load_peak_mib": memory.peaks(), "resident_mib": memory.allocated(),
                              "llm_4bit_layers": sum(type(m).__name__ == "Linear4bit" for m in llm.modules())}
    print(f"  loaded in {report['load_s']} s; GPU MiB {report['resident_mib']}", flush=True)
    report["parameters"] = {  # the app's dtype rules: the LLM never in fp16 unless asked
        **expect_parameters(checks, section, {"vqa": pipe.vqa_model, "captioner": pipe.captioner.model},
                            args.device, resolve_dtype(None, args.device)),
        **expect_parameters(checks, section, {"llm": llm}, args.device, resolve_llm_dtype(None, args.device))}
    wants_4bit = profile.quantization == "4bit" and device.type == "cuda"
    checks.expect(section, "llm_4bit", (report["llm_4bit_layers"] > 0) == wants_4bit,
                  f"{report['llm_4bit_layers']} 4-bit layers ({'some' if wants_4bit else 'none'} expected)")
    # random weights never stop early: a real caption's length (about 12 tokens), fewer for the smoke check
    pipe.captioner.max_new_tokens = pipe.captioner.min_new_tokens = 4 if args.smoke else 12
    options = {"max_new_tokens": args.max_new_tokens}
    pipe.run(photo(0), QUESTIONS[0], **options)  # warm-up: kernels, allocator, caches of the model code

    memory.reset()
    started, first_chunk, result = time.perf_counter(), None, None
    for update in pipe.stream(photo(1), QUESTIONS[1], **options):
        if update.stage == "llm" and first_chunk is None:
            first_chunk = time.perf_counter() - started
        result = update.result
    report["stream"] = {"wall_s": round(time.perf_counter() - started, 3),
                        "first_llm_chunk_s": None if first_chunk is None else round(first_chunk, 3),
                        "stages_s": {k: round(v, 3) for k, v in result.timings.items()},
                        "peak_mib": memory.peaks(), "error": result.error}
    print(f"  streamed answer: {report['stream']}", flush=True)

    memory.reset()
    images = [photo(100 + i) for i in range(BATCH)]
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(BATCH)]
    started = time.perf_counter()
    results = pipe.run_batch(images, questions, batch_size=BATCH, **options)
    stages = {k: round(sum(r.timings[k] for r in results), 3) for k in results[0].timings}
    report["batch16"] = {"wall_s": round(time.perf_counter() - started, 3), "stages_s": stages,
                         "peak_mib": memory.peaks(), "errors": sum(r.error is not None for r in results)}
    print(f"  batch of {BATCH}: {report['batch16']}", flush=True)
    answered = [result] + results
    done = sum(bool(r.candidates and r.llm_used and r.llm_reply) and r.error is None for r in answered)
    checks.expect(section, "answered", done == len(answered),
                  f"{done}/{len(answered)} questions answered end to end (caption, VQA, LLM reply)")
    del pipe, llm
    memory.release()
    return report


# -------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/gpu_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, ... (default: cuda)")
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="LLM tokens per answer (default: 64, the evaluator's)")
    parser.add_argument("--shapes", default="",
                        help="also check random-weight models at these profiles' sizes: base, large or base,large "
                             "(default: none; large takes minutes and 15 GB of disk)")
    parser.add_argument("--smoke", action="store_true",
                        help="small sizes (4 questions, fp32, 4 training steps); with --device cpu, a check of "
                             "the script itself")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run every check; 0 when all passed (or there is no CUDA), 1 when one failed, 2 for a usage error."""
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    shapes = [n.strip() for n in args.shapes.split(",") if n.strip()]
    if unknown := [n for n in shapes if n not in SHAPES]:
        print(f"Unknown --shapes {unknown}: use {', '.join(SHAPES)}.")
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print("No CUDA GPU here (torch.cuda.is_available() is False): nothing to check. Run this script on a "
              "machine with an NVIDIA GPU and a CUDA build of PyTorch.")
        return 0
    if device.type != "cuda" and not args.smoke:
        print("Only --smoke runs on a non-CUDA device (the acceptance run is meant for the GPU).")
        return 2
    sizes = SMOKE if args.smoke else FULL
    torch.manual_seed(SAMPLE_SEED)
    started = time.perf_counter()
    checks, memory = Checks(), GPUMemory(device)
    summary: dict[str, Any] = {"device": args.device, "smoke": args.smoke, "torch": torch.__version__,
                               "cuda": torch.version.cuda, "gpus": memory.describe()}
    sample: list = []
    summary["sample"] = run_section(checks, "sample", load_sample, sizes, checks, sample)
    reference: list[str] = []
    summary["cpu_reference"] = run_section(checks, "cpu_reference", cpu_reference, sample, sizes, checks, reference)
    summary["bundled"] = {}
    for name in sizes.precisions:
        summary["bundled"][name] = run_section(checks, f"bundled_{name}", check_precision, name, sample, reference,
                                               args, sizes, checks, memory)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        summary["evaluator"] = run_section(checks, "evaluator", check_evaluator, args, sizes, checks, workdir)
        summary["finetune"] = {}
        for mode in sizes.mixed_precisions:
            summary["finetune"][mode] = run_section(checks, f"finetune_{mode}", check_finetune, mode, sizes, checks,
                                                    workdir)
        summary["shapes"] = {}
        for name in shapes:
            summary["shapes"][name] = run_section(checks, f"shapes_{name}", check_shapes, name, args, checks, memory,
                                                  workdir)
    summary.update({"wall_s": round(time.perf_counter() - started, 1), "checks": checks.outcomes,
                    "failures": checks.failures, "passed": checks.passed})
    print(f"\n{'PASSED' if checks.passed else 'FAILED'}: {sum(checks.outcomes.values())}/{len(checks.outcomes)} "
          f"checks passed in {summary['wall_s']} s" + "".join(f"\n  {f}" for f in checks.failures), flush=True)
    print(json.dumps(json_ready(summary), allow_nan=False), flush=True)
    return 0 if checks.passed else 1


if __name__ == "__main__":
    sys.exit(main())
