"""The VLE tasks the app offers beside question answering: image-text matching (and zero-shot classification
through it) and patch relevance.

    >>> tasks = load_tasks(profile)             # profile.vle_pretrained: Hub id or folder ($VQA_LLM_VLE_PRETRAINED)
    >>> tasks.match("photo.jpg", ["a red circle", "a blue square"])     # [P(match), ...]
    >>> heatmap, relevance = tasks.relevance("photo.jpg", "the red circle")
    >>> tasks.classify("photo.jpg", ["a red circle", "a blue circle"])  # [("a red circle", 0.97), ...]

Every task is a head of one VLE pretraining checkpoint (hfl/vle-base has them all), loaded through the checks
of :mod:`vqa_llm.loading`; the heads share one backbone in memory. A task is one :class:`TaskSpec` in
:data:`TASKS` plus a method of :class:`VLETasks` that calls its pipeline, so a new head (a further tab of the
app) is one entry and one method. Loading never raises: without a checkpoint, or when it cannot be loaded,
:class:`VLETasks` is empty and ``note`` says why (the app hides the tabs and shows the note).

The labels zero-shot classification offers first come from the checkpoint folder's :data:`LABELS_FILE` (one
label a line; the bundled easy-VQA checkpoint lists its 24 "a <colour> <shape>" texts), else
:data:`GENERIC_LABELS`.

Each task checks its inputs before its model runs, the same for the app's pages and API, the CLI and Python
callers (:func:`match_texts`, :func:`classify_labels`, :func:`relevance_text`, :func:`relevance_alpha`): texts
cleaned by :func:`vqa_llm.inputs.clean_text`, at most :data:`MAX_TEXT_CHARS` characters each, at most
:data:`MAX_ITM_TEXTS` texts to match and :data:`MAX_CLASSIFY_LABELS` labels (at least two) to rank.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vle import VLEForITM, VLEForPBC, VLEPreTrainedModel, quantize_int8
from vle.image_io import ImageSource
from vle.pipeline_vle import VLEForITMPipeline, VLEForPBCPipeline
from vle.processing_vle import VLEProcessor

from .devices import resolve_device
from .errors import BadSettingError, ModelUnavailableError
from .inputs import check_number, clean_lines, clean_text
from .loading import _Step, check_model_dir, describe_load_failure, resolve_dtype
from .profiles import Profile
from .sources import looks_local, model_source, public_text

logger = logging.getLogger(__name__)

WHAT = "VLE pretraining checkpoint"
#: file in a pretraining checkpoint folder listing the default zero-shot labels, one a line
LABELS_FILE = "zero_shot_labels.txt"
#: default zero-shot labels of a checkpoint that lists none (photos: the Hub checkpoints)
GENERIC_LABELS = ("a photo of a cat", "a photo of a dog", "a photo of a bird", "a photo of a car",
                  "a photo of a person", "a photo of food", "a photo of a building", "a photo of a landscape")
#: the most texts one image-text matching call scores, and labels one classification ranks
MAX_ITM_TEXTS = 16
MAX_CLASSIFY_LABELS = 50
#: the longest text or label, in characters
MAX_TEXT_CHARS = 300
#: how much patch relevance may darken the patches a text is not about
ALPHA_RANGE = (0.0, 1.0)


@dataclass(frozen=True)
class TaskSpec:
    """One VLE task: the head's model class and the pipeline that runs it."""

    title: str
    model_class: type[VLEPreTrainedModel]
    pipeline_class: type


#: task name -> how to load and run it (all heads come from the one pretraining checkpoint)
TASKS: dict[str, TaskSpec] = {
    "itm": TaskSpec("image-text matching", VLEForITM, VLEForITMPipeline),
    "pbc": TaskSpec("patch relevance", VLEForPBC, VLEForPBCPipeline),
}


@dataclass
class VLETasks:
    """The loaded task pipelines (by :data:`TASKS` name), the checkpoint they came from, or why there are none."""

    pipelines: dict[str, Any] = field(default_factory=dict)
    model_id: str | None = None
    note: str = ""
    #: the labels zero-shot classification offers first (see the module docstring)
    default_labels: list[str] = field(default_factory=lambda: list(GENERIC_LABELS))

    @property
    def available(self) -> bool:
        """Whether every task of :data:`TASKS` is loaded (the app shows their tabs)."""
        return all(name in self.pipelines for name in TASKS)

    @property
    def source(self) -> str | None:
        """The checkpoint's name and origin for people (:func:`vqa_llm.sources.model_source`), when loaded."""
        return model_source(self.model_id) if self.available else None

    def _pipeline(self, name: str) -> Any:
        """Task ``name``'s pipeline; BadSettingError (with ``note``) when it is not loaded."""
        if name not in self.pipelines:
            raise BadSettingError(self.note or f"{TASKS[name].title.capitalize()} is not available here.")
        return self.pipelines[name]

    def match(self, image: ImageSource, texts: str | Sequence[str]) -> list[float]:
        """Probability that each of ``texts`` (checked by :func:`match_texts`) describes ``image`` (one batch)."""
        pipeline = self._pipeline("itm")
        return [float(out["score"]) for out in pipeline(image=image, text=match_texts(texts))]

    def classify(self, image: ImageSource, labels: str | Sequence[str]) -> list[tuple[str, float]]:
        """Zero-shot classification through ITM: ``labels`` (checked by :func:`classify_labels`) ranked best
        first, with probabilities that sum to 1 (a softmax over the labels' match log-odds)."""
        pipeline = self._pipeline("itm")
        labels = classify_labels(labels)
        logits = torch.tensor([float(out["logit"]) for out in pipeline(image=image, text=labels)])
        probs = torch.softmax(logits, dim=0).tolist()
        return sorted(zip(labels, probs), key=lambda pair: -pair[1])

    def relevance(self, image: ImageSource, text: str, alpha: float = 0.5) -> tuple[Image.Image, np.ndarray]:
        """A heatmap of ``image`` (patches the text is not about darkened by up to ``alpha``) and the
        ``[rows, cols]`` per-patch relevance of ``text`` (both checked, see :func:`relevance_text`)."""
        pipeline = self._pipeline("pbc")
        alpha, text = relevance_alpha(alpha), relevance_text(text)
        out = pipeline(image=image, text=text, alpha=alpha)
        return out["heatmap"], out["relevance"]


def match_texts(texts: object) -> list[str]:
    """The texts to match, one per line or as a list (:func:`vqa_llm.inputs.clean_lines`); BadSettingError
    when there are none, more than :data:`MAX_ITM_TEXTS` or one is longer than :data:`MAX_TEXT_CHARS`."""
    return clean_lines(texts, "texts", MAX_ITM_TEXTS, MAX_TEXT_CHARS)


def classify_labels(labels: object) -> list[str]:
    """The labels to rank, as :func:`match_texts` checks texts (up to :data:`MAX_CLASSIFY_LABELS`); at least two."""
    lines = clean_lines(labels, "labels", MAX_CLASSIFY_LABELS, MAX_TEXT_CHARS)
    if len(lines) < 2:
        raise BadSettingError("Give at least two labels, one per line, to choose between.")
    return lines


def relevance_text(text: object) -> str:
    """The text of patch relevance, cleaned; BadSettingError when it is empty, not text or too long."""
    text = clean_text(text)[0] if isinstance(text, str) else ""
    if not text:
        raise BadSettingError("Type a text describing something in the image.")
    if len(text) > MAX_TEXT_CHARS:
        raise BadSettingError(f"The text is {len(text)} characters long; the limit is {MAX_TEXT_CHARS}. Shorten it.")
    return text


def relevance_alpha(alpha: object) -> float:
    """``alpha`` when it is a number in :data:`ALPHA_RANGE`; BadSettingError otherwise."""
    return float(check_number("alpha", alpha, *ALPHA_RANGE))


def default_labels(id_or_path: str) -> list[str]:
    """The checkpoint folder's :data:`LABELS_FILE` labels, else :data:`GENERIC_LABELS`."""
    path = Path(id_or_path).expanduser() / LABELS_FILE
    if looks_local(id_or_path) and path.is_file():
        labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if labels:
            return labels
    return list(GENERIC_LABELS)


def no_tasks_note(profile: Profile) -> str:
    """Why the task tabs are hidden for a profile without a pretraining checkpoint."""
    return (f"Image-text matching, zero-shot classification and patch relevance need a VLE pretraining checkpoint "
            f"(hfl/vle-base); the '{profile.name}' profile has none. Start with --profile base or bundled, or "
            "--vle-pretrained DIR.")


def load_heads(id_or_path: str, device: str, local_files_only: bool = False,
               precision: str = "auto") -> tuple[VLEProcessor, dict[str, VLEPreTrainedModel]]:
    """The processor and every head of :data:`TASKS` from one checkpoint (eval mode, one shared backbone), in the
    VQA model's ``precision`` (``--vqa-precision``): ``auto`` half precision on CUDA, ``fp32`` exact, ``int8``
    dynamic int8 on the CPU.

    Raises ModelUnavailableError naming the checkpoint when it is missing, incomplete or damaged, BadSettingError
    for int8 off the CPU.
    """
    check_model_dir(id_or_path, WHAT)
    if precision == "int8" and not str(device).startswith("cpu"):
        raise BadSettingError(f"VQA precision int8 runs on the CPU only, not on {device}: use --vqa-precision "
                              "fp32 there, or --device cpu.")
    with _Step(WHAT, id_or_path):
        try:
            processor = VLEProcessor.from_pretrained(id_or_path, local_files_only=local_files_only)
            dtype = resolve_dtype(torch.float32 if precision == "fp32" else None, device)
            heads = {name: spec.model_class.from_pretrained(id_or_path, local_files_only=local_files_only,
                                                            dtype=dtype).eval()
                     for name, spec in TASKS.items()}
        except Exception as exc:  # transformers/safetensors raise many types for missing or corrupt files
            raise ModelUnavailableError(describe_load_failure(WHAT, id_or_path, exc)) from exc
    first, *others = heads.values()
    for head in others:
        head.vle = first.vle  # same checkpoint, same backbone: keep one copy in memory
    if precision == "int8":
        for head in heads.values():  # in place: the shared backbone is quantised once
            quantize_int8(head)
    return processor, heads


def load_tasks(profile: Profile) -> VLETasks:
    """The task pipelines of ``profile.vle_pretrained`` on the profile's device; never raises (see the module)."""
    model_id = profile.vle_pretrained
    if not model_id or model_id.strip().lower() == "none":
        return VLETasks(note=no_tasks_note(profile))
    device = resolve_device(profile.device)
    try:
        processor, heads = load_heads(model_id, device, profile.local_files_only, profile.vqa_precision)
    except (ModelUnavailableError, BadSettingError) as exc:  # the Ask tab still works
        logger.warning("Matching and relevance tabs disabled: %s", exc)
        return VLETasks(model_id=model_id, note=(
            f"Image-text matching and patch relevance are off: could not load {model_source(model_id)} "
            f"({public_text(str(exc))}). Check the path or the network, or pass --vle-pretrained none."))
    pipelines = {name: TASKS[name].pipeline_class(model=head, device=device, vle_processor=processor)
                 for name, head in heads.items()}
    return VLETasks(pipelines, model_id=model_id, default_labels=default_labels(model_id))
