"""The VLE tasks the app offers beside question answering: image-text matching and patch relevance.

    >>> tasks = load_tasks(profile)             # profile.vle_pretrained: Hub id or folder ($VQA_LLM_VLE_PRETRAINED)
    >>> tasks.match("photo.jpg", ["a red circle", "a blue square"])     # [P(match), ...]
    >>> heatmap, relevance = tasks.relevance("photo.jpg", "the red circle")

Every task is a head of one VLE pretraining checkpoint (hfl/vle-base has them all), loaded through the checks
of :mod:`vqa_llm.loading`; the heads share one backbone in memory. A task is one :class:`TaskSpec` in
:data:`TASKS` plus a method of :class:`VLETasks` that calls its pipeline, so a new head (a further tab of the
app) is one entry and one method. Loading never raises: without a checkpoint, or when it cannot be loaded,
:class:`VLETasks` is empty and ``note`` says why (the app hides the tabs and shows the note).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from vle import VLEForITM, VLEForPBC, VLEPreTrainedModel
from vle.image_io import ImageSource
from vle.pipeline_vle import VLEForITMPipeline, VLEForPBCPipeline
from vle.processing_vle import VLEProcessor

from .errors import BadSettingError, ModelUnavailableError
from .loading import _Step, check_model_dir, describe_load_failure, resolve_device, resolve_dtype
from .profiles import Profile
from .sources import model_source, public_text
from .zerogpu import gpu_stage

logger = logging.getLogger(__name__)

WHAT = "VLE pretraining checkpoint"


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

    @property
    def available(self) -> bool:
        """Whether every task of :data:`TASKS` is loaded (the app shows their tabs)."""
        return all(name in self.pipelines for name in TASKS)

    @property
    def source(self) -> str | None:
        """The checkpoint's name and origin for people (:func:`vqa_llm.sources.model_source`), when loaded."""
        return model_source(self.model_id) if self.available else None

    def __post_init__(self) -> None:
        self._on_gpu = gpu_stage(self._call)  # every task runs as one GPU stage (see vqa_llm.zerogpu)

    def _call(self, name: str, inputs: dict[str, Any]) -> Any:
        return self.pipelines[name](**inputs)

    def _run(self, name: str, **inputs: Any) -> Any:
        """The output of task ``name``'s pipeline; BadSettingError (with ``note``) when it is not loaded."""
        if name not in self.pipelines:
            raise BadSettingError(self.note or f"{TASKS[name].title.capitalize()} is not available here.")
        return self._on_gpu(name, inputs)

    def match(self, image: ImageSource, texts: Sequence[str]) -> list[float]:
        """Probability that each of ``texts`` describes ``image`` (one batch)."""
        return [float(out["score"]) for out in self._run("itm", image=image, text=list(texts))]

    def relevance(self, image: ImageSource, text: str, alpha: float = 0.5) -> tuple[Image.Image, np.ndarray]:
        """A heatmap of ``image`` (patches the text is not about darkened by up to ``alpha``) and the
        ``[rows, cols]`` per-patch relevance of ``text``."""
        out = self._run("pbc", image=image, text=text, alpha=float(alpha))
        return out["heatmap"], out["relevance"]


def no_tasks_note(profile: Profile) -> str:
    """Why the task tabs are hidden for a profile without a pretraining checkpoint."""
    return (f"Image-text matching and patch relevance need a VLE pretraining checkpoint (hfl/vle-base); the "
            f"'{profile.name}' profile has none. Start with --profile base, or --vle-pretrained DIR.")


def load_heads(id_or_path: str, device: str,
               local_files_only: bool = False) -> tuple[VLEProcessor, dict[str, VLEPreTrainedModel]]:
    """The processor and every head of :data:`TASKS` from one checkpoint (eval mode, one shared backbone).

    Raises ModelUnavailableError naming the checkpoint when it is missing, incomplete or damaged.
    """
    check_model_dir(id_or_path, WHAT)
    with _Step(WHAT, id_or_path):
        try:
            processor = VLEProcessor.from_pretrained(id_or_path, local_files_only=local_files_only)
            dtype = resolve_dtype(None, device)  # half precision on CUDA, as the VQA model
            heads = {name: spec.model_class.from_pretrained(id_or_path, local_files_only=local_files_only,
                                                            dtype=dtype).eval()
                     for name, spec in TASKS.items()}
        except Exception as exc:  # transformers/safetensors raise many types for missing or corrupt files
            raise ModelUnavailableError(describe_load_failure(WHAT, id_or_path, exc)) from exc
    first, *others = heads.values()
    for head in others:
        head.vle = first.vle  # same checkpoint, same backbone: keep one copy in memory
    return processor, heads


def load_tasks(profile: Profile) -> VLETasks:
    """The task pipelines of ``profile.vle_pretrained`` on the profile's device; never raises (see the module)."""
    model_id = profile.vle_pretrained
    if not model_id or model_id.strip().lower() == "none":
        return VLETasks(note=no_tasks_note(profile))
    device = resolve_device(profile.device)
    try:
        processor, heads = load_heads(model_id, device, profile.local_files_only)
    except ModelUnavailableError as exc:  # the Ask tab still works
        logger.warning("Matching and relevance tabs disabled: %s", exc)
        return VLETasks(model_id=model_id, note=(
            f"Image-text matching and patch relevance are off: could not load {model_source(model_id)} "
            f"({public_text(str(exc))}). Check the path or the network, or pass --vle-pretrained none."))
    pipelines = {name: TASKS[name].pipeline_class(model=head, device=device, vle_processor=processor)
                 for name, head in heads.items()}
    return VLETasks(pipelines, model_id=model_id)
