"""Stage 1: what a call asks for (:class:`Settings`), checked once into a :class:`Request`; its images read.

Every public call of the pipeline (``run``, ``stream``, ``run_batch``) goes through :func:`prepare`, so the
template, ``top_k``, the LLM's generation options and the few-shot settings are checked in one place and in
one order. Bad settings raise BadSettingError (ExampleBankError for an unusable bank) before any model runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from llm import ChatLLM, GenerationOptions, LLMError
from prompts import available_templates
from vle.image_io import ImageSource

from ..errors import BadSettingError
from ..fewshot import DEFAULT_N_EXAMPLES, DEFAULT_RUNS, FEWSHOT_TEMPLATE, ExampleBank, FewShotSettings
from ..fewshot.locate import check_bank_fits, open_example_bank
from ..inputs import check_flag, check_template, clamp_top_k, read_image

BankSource = ExampleBank | str | Path


@dataclass(frozen=True)
class Settings:
    """What one call asks for: the keyword arguments of ``run``/``stream``/``run_batch`` (``llm_opts``:
    ``max_new_tokens``, ``temperature``, ``top_p``, ``timeout``)."""

    top_k: Any = 5
    use_llm: bool = True
    template: Any = "short"
    describe_image: bool = True
    runs: Any = DEFAULT_RUNS
    n_examples: Any = DEFAULT_N_EXAMPLES
    example_bank: BankSource | None = None
    llm_opts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    """What the pipeline brings to every call: its LLM, the VQA answer vocabulary size, the default LLM
    timeout and example bank, and the key width and name of the VQA model (an example bank must match them)."""

    llm: ChatLLM | None
    num_labels: int
    llm_timeout: float | None
    example_bank: ExampleBank | None
    fused_width: int
    vqa_model_id: str


@dataclass(frozen=True)
class LLMPlan:
    """How the LLM stage runs in one call: generation ``options`` (without the ``timeout``), where the
    template is read from (``template_dir``, ``None``: the project's templates) and the few-shot settings."""

    options: dict[str, Any]
    timeout: float | None
    template_dir: Path | None = None
    fewshot: FewShotSettings | None = None


@dataclass(frozen=True)
class Request:
    """The checked settings of one call, shared by all its questions. ``llm`` is ``None`` when the LLM does
    not run; ``notes`` say which settings were adjusted or ignored."""

    template: str
    top_k: int
    describe: bool
    llm: LLMPlan | None
    notes: tuple[str, ...] = ()


def generation_options(options: Mapping[str, Any], default_timeout: float | None) -> dict[str, Any]:
    """Validated LLM generation options, with ``timeout`` set to ``default_timeout`` unless given."""
    options = dict(options)
    options.setdefault("timeout", default_timeout)
    try:
        GenerationOptions(**options)
    except TypeError as exc:
        raise BadSettingError(f"Unknown LLM option ({exc}): use max_new_tokens, temperature, top_p or "
                              "timeout.") from exc
    except LLMError as exc:
        raise BadSettingError(str(exc)) from exc
    return options


def template_dir(llm: ChatLLM | None, template: str) -> Path | None:
    """Where ``template`` is read from: the LLM's own prompt folder when it has one with that template (a
    fine-tuned refiner brings the compact prompts it was trained on), else ``None`` (the project's templates)."""
    directory = llm.template_dir if llm is not None else None
    return directory if directory is not None and template in available_templates(directory) else None


def fewshot_settings(settings: Settings, template: str, run_llm: bool,
                     context: Context) -> tuple[FewShotSettings | None, list[str]]:
    """The few-shot settings of a call (``None`` unless the fewshot template is used with the LLM) and notes on
    settings that were ignored. Raises BadSettingError / ExampleBankError."""
    runs = settings.runs
    if template != FEWSHOT_TEMPLATE:
        ignored = runs not in (None, DEFAULT_RUNS)
        return None, [f"runs={runs} ignored: only the {FEWSHOT_TEMPLATE} template votes over runs"] if ignored else []
    if not run_llm:
        return None, []
    bank = open_example_bank(settings.example_bank if settings.example_bank is not None else context.example_bank)
    check_bank_fits(bank, context.fused_width, context.vqa_model_id)
    n_examples = settings.n_examples
    return FewShotSettings(bank, runs=DEFAULT_RUNS if runs is None else runs,
                           n_examples=DEFAULT_N_EXAMPLES if n_examples is None else n_examples), []


def prepare(settings: Settings, context: Context) -> Request:
    """The one preparation step of every call: template, ``use_llm``, LLM options, few-shot settings and
    ``top_k`` checked (in that order), raising BadSettingError for the first bad one."""
    template = check_template(settings.template)
    run_llm = check_flag("use_llm", settings.use_llm) and context.llm is not None
    options = generation_options(settings.llm_opts, context.llm_timeout) if run_llm else {}
    fewshot, ignored = fewshot_settings(settings, template, run_llm, context)
    top_k, clamped = clamp_top_k(settings.top_k, context.num_labels)
    plan = None
    if run_llm:
        timeout = options.pop("timeout")
        plan = LLMPlan(options, timeout, template_dir(context.llm, template), fewshot)
    return Request(template, top_k, bool(settings.describe_image), plan, tuple(clamped + ignored))


def pair_up(images: Sequence[ImageSource], questions: Sequence[str],
            batch_size: int) -> tuple[list[ImageSource], list[str]]:
    """One image per question (a single image serves them all); BadSettingError on a mismatch."""
    images, questions = list(images), list(questions)
    if len(images) == 1 and len(questions) > 1:
        images = images * len(questions)
    if len(images) != len(questions):
        raise BadSettingError(f"Got {len(images)} images for {len(questions)} questions: pass one image per "
                              "question, or a single image for all of them.")
    if batch_size < 1:
        raise BadSettingError(f"batch_size must be >= 1, got {batch_size}.")
    return images, questions


def read_images(images: Sequence[ImageSource], indices: Sequence[int] | None) -> tuple[list[Image.Image], list[str]]:
    """The images normalised once (:func:`vqa_llm.inputs.read_image`) and their content hashes; errors name
    ``Image #index`` when ``indices`` are given."""
    loaded = [read_image(image, None if indices is None else index)
              for image, index in zip(images, indices if indices is not None else [None] * len(images))]
    return [pil for pil, _ in loaded], [key for _, key in loaded]
