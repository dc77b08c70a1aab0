"""Visual commonsense reasoning (VCR) on one image: the two VCR models of a profile, one record checked, the
objects drawn as numbered boxes, Q->A and then QA->R. The app's VCR tab and ``/vcr`` use it; so can Python code:

    >>> vcr = load_vcr_models(profile)                  # profile.vcr_q2a / vcr_qa2r; never raises
    >>> vcr.available, vcr.note                         # why not, when it is not
    >>> image = Image.open("scene.png")
    >>> item = read_record(open("scene.json").read(), image.size)   # JSON text or a dict, boxes inline
    >>> prediction = vcr.run(image, item)               # loads both models at the first call
    >>> prediction.answer_index, prediction.rationale_index       # 0..3 each
    >>> prediction.answer_scores, prediction.rationale_scores     # 4 + 4 probabilities
    >>> draw_boxes(image, item).save("boxes.png")        # the objects as numbered boxes

A record is one VCR annotation (``objects``, ``question``, ``answer_choices``, ``rationale_choices``; texts as
token lists in which an object reference is a list of object indices) with its ``boxes`` inline
(``[x1, y1, x2, y2(, score)]`` per object, in the pixels of a ``width`` x ``height`` frame, by default the
image's size). :func:`read_record` checks it with the checks of :func:`vle.vcr_data.load_vcr` (the fields, four
choices each, object references against the objects and their boxes) and with what only an image can tell: every
box inside the image, the frame in the image's proportions. ``img_fn`` and ``metadata_fn`` are never looked at:
the image and the boxes come with the request.

Q->A scores the four answers; QA->R then scores the four rationales given the *chosen* answer (the record's
``answer_label`` is replaced by the predicted index, as a visitor has no right answer to give). The models load
lazily, at the first prediction (:meth:`VCRModels.load`): start-up only checks that the folders look like
models, and a profile without both models, or with one that is missing, has ``available`` false and a ``note``.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from project_base.paths import REPO_ROOT
from vle import VLEError, VLEForVCRQ2APipeline, VLEForVCRQA2RPipeline
from vle.image_io import ImageSource, load_image_with_geometry
from vle.vcr_data import NUM_CHOICES, VCRDataError, VCRItem, inline_item
from vle.vcr_encoding import VCR_TASKS
from vle.vcr_inputs import object_names

from .devices import resolve_device
from .errors import BadImageError, BadSettingError, ModelUnavailableError
from .inputs import clean_text
from .loading import check_model_dir
from .profiles import Profile
from .sources import model_source, public_text
from .vcr_loading import WHAT, load_vcr_model

logger = logging.getLogger(__name__)

#: the two models' pipelines, in the order they run
PIPELINES = {"q2a": VLEForVCRQ2APipeline, "qa2r": VLEForVCRQA2RPipeline}
#: the longest record a request may send, as JSON text (a real VCR record with 30 boxes is about 3,000)
MAX_RECORD_CHARS = 20_000
#: the most objects (and boxes) one record may name
MAX_OBJECTS = 100
#: how far (pixels of the frame) a box may reach past the image's edge: detectors' rounding
BOX_SLACK = 1.0
#: how far the frame's proportions may differ from the image's (relative): rounding of a downscaled image
ASPECT_SLACK = 0.03
#: the generated shape scenes the app offers as examples (``NAME.png`` + ``NAME.json``)
EXAMPLES_DIR = REPO_ROOT / "assets" / "examples" / "vcr"
#: letters naming the four choices for people (the API uses indices 0-3)
LETTERS = "ABCD"
#: punctuation tokens written without a space before them
_ATTACHED = {".", ",", "?", "!", ";", ":", "'s", "n't", "'re", "'m", "'ve", "'ll", "'d", ")", "%"}
#: box colours, one per object in turn (readable white text on each)
PALETTE = ((220, 38, 38), (37, 99, 235), (22, 163, 74), (217, 119, 6), (147, 51, 234), (8, 145, 178),
           (190, 24, 93), (75, 85, 99))


# ------------------------------------------------------------------------------------------ records
def read_record(value: Any, image_size: tuple[int, int], frame_known: bool = True) -> VCRItem:
    """The record ``value`` (JSON text, or an already parsed dict) checked for an image of ``image_size``.

    Words are cleaned like every text of the app (:func:`vqa_llm.inputs.clean_text`); the record's ``width`` x
    ``height`` is the boxes' frame, by default ``image_size``. ``frame_known=False`` says that ``image_size`` may
    not be the size the boxes were drawn for (an image reduced on entry): then the record must name its frame.
    Raises BadSettingError with one message saying what is wrong and what to do.
    """
    record = _parse(value)
    if "boxes" not in record:
        raise BadSettingError("The VCR record has no boxes: give \"boxes\": [[x1, y1, x2, y2], ...] in the image's "
                              "pixels, one per object (the app never reads a metadata_fn file).")
    for key in ("objects", "boxes"):
        if isinstance(record.get(key), list) and len(record[key]) > MAX_OBJECTS:
            raise BadSettingError(f"The VCR record has {len(record[key])} {key}; the limit is {MAX_OBJECTS}.")
    framed = "width" in record or "height" in record
    if not framed and not frame_known:
        raise BadSettingError(
            f"The image ({image_size[0]} x {image_size[1]} px) was reduced on entry, so its boxes cannot be placed "
            "without their frame: give the record's width and height (the size of the image the boxes are in).")
    try:
        item = inline_item(_cleaned(record), default_size=tuple(map(float, image_size)))
    except VCRDataError as exc:
        raise BadSettingError(f"The VCR record is not usable: {exc}") from None
    _check_frame(item, image_size, framed)
    return item


def _parse(value: Any) -> dict[str, Any]:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadSettingError("No VCR record was given: paste one annotation record as JSON (objects, question, "
                              "answer_choices, rationale_choices, boxes), or pick an example.")
    if isinstance(value, Mapping):
        text = json.dumps(value, default=str)
    elif isinstance(value, str):
        text = value
    else:
        raise BadSettingError(f"The VCR record must be JSON text, not {type(value).__name__}.")
    if len(text) > MAX_RECORD_CHARS:
        raise BadSettingError(f"The VCR record is {len(text)} characters long; the limit is {MAX_RECORD_CHARS}. "
                              "Leave out what the app does not use (segms, names, other records).")
    if isinstance(value, Mapping):
        return dict(value)
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadSettingError(f"The VCR record is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                              f"{exc.msg}): paste one record, a JSON object.") from None
    except RecursionError:
        raise BadSettingError("The VCR record is nested too deeply to be a VCR record.") from None
    if not isinstance(record, dict):
        raise BadSettingError(f"The VCR record must be a JSON object, not a JSON {type(record).__name__}: paste "
                              "one record, {\"objects\": ..., ...}.")
    return record


def _cleaned(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``record`` whose words and object names are cleaned (empty words dropped); other values as sent,
    for the record checks to judge."""
    def words(tokens: Any) -> Any:
        if not isinstance(tokens, list):
            return tokens
        cleaned = [clean_text(token)[0] if isinstance(token, str) else token for token in tokens]
        return [token for token in cleaned if token != ""]

    out = dict(record)
    if isinstance(out.get("objects"), list):
        out["objects"] = [clean_text(name)[0] if isinstance(name, str) else name for name in out["objects"]]
    out["question"] = words(out.get("question"))
    for key in ("answer_choices", "rationale_choices"):
        if isinstance(out.get(key), list):
            out[key] = [words(choice) for choice in out[key]]
    return {key: value for key, value in out.items() if value is not None or key in record}


def _check_frame(item: VCRItem, image_size: tuple[int, int], framed: bool) -> None:
    """Every box of an object inside the frame, and the frame in the image's proportions."""
    width, height = image_size
    if framed and abs((item.width / item.height) / (width / height) - 1) > ASPECT_SLACK:
        raise BadSettingError(
            f"The record's width x height ({item.width:g} x {item.height:g}) does not have the image's proportions "
            f"({width} x {height}): give the size of the image the boxes were drawn on, or leave both out.")
    frame = f"the record's {item.width:g} x {item.height:g} frame" if framed else \
        f"the image ({width} x {height} px)"
    for index, box in enumerate(item.boxes[:len(item.objects)]):
        x1, y1, x2, y2 = box[:4]
        if min(x1, y1) < -BOX_SLACK or x2 > item.width + BOX_SLACK or y2 > item.height + BOX_SLACK:
            raise BadSettingError(f"Box {index} {[round(v, 2) for v in box[:4]]} lies outside {frame}: boxes are "
                                  "[x1, y1, x2, y2] in the image's pixels.")


def record_text(tokens: Sequence[Any], objects: Sequence[str]) -> str:
    """A VCR token list as people read it: object references as ``name [index]`` (people get the names the models
    read, :func:`vle.vcr_inputs.object_names`), punctuation attached."""
    names = object_names(objects)
    words: list[str] = []
    for token in tokens:
        if isinstance(token, list):
            words.append(" and ".join(f"{names[i]} [{i}]" for i in token))
        elif words and str(token) in _ATTACHED:
            words[-1] += str(token)
        else:
            words.append(str(token))
    return " ".join(words)


def format_record(record: Mapping[str, Any]) -> str:
    """A record as JSON text with one field a line (how the tab shows an example)."""
    lines = [f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}" for key, value in record.items()]
    return "{\n" + ",\n".join(lines) + "\n}"


# -------------------------------------------------------------------------------------------- boxes
def draw_boxes(image: Image.Image, item: VCRItem, min_side: int = 384) -> Image.Image:
    """A copy of ``image`` with each object of ``item`` drawn as a box tagged ``name [index]``; small images are
    enlarged first (to ``min_side`` on the longest side, whole multiples) so that the tags can be read."""
    scale = max(1, math.ceil(min_side / max(image.size)))
    canvas = image.convert("RGB")
    canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.BICUBIC) if scale > 1 else \
        canvas.copy()
    sx, sy = canvas.width / item.width, canvas.height / item.height
    line = max(2, round(max(canvas.size) / 200))
    font = _font(max(12, round(max(canvas.size) / 32)))
    draw = ImageDraw.Draw(canvas)
    for index, name in enumerate(object_names(item.objects)):
        colour = PALETTE[index % len(PALETTE)]
        x1, y1, x2, y2 = (v * s for v, s in zip(item.boxes[index][:4], (sx, sy, sx, sy)))
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        tag = f"{name} [{index}]"
        left, top, right, bottom = draw.textbbox((0, 0), tag, font=font)
        tag_w, tag_h = right - left + 2 * line, bottom - top + 2 * line
        tx = min(max(0.0, x1), max(0.0, canvas.width - tag_w))
        ty = y1 - tag_h if y1 - tag_h >= 0 else min(y1, canvas.height - tag_h)  # above the box, else inside
        draw.rectangle((tx, ty, tx + tag_w, ty + tag_h), fill=colour)
        draw.text((tx + line - left, ty + line - top), tag, fill=(255, 255, 255), font=font)
    return canvas


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError, ImportError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


# ------------------------------------------------------------------------------------------ models
@dataclass
class VCRPrediction:
    """What the two models say about one item: the chosen answer and rationale (indices 0-3) and the scores of
    all four of each (probabilities that sum to 1)."""

    item: VCRItem
    answer_index: int
    rationale_index: int
    answer_scores: list[float]
    rationale_scores: list[float]
    seconds: float = 0.0

    def answers(self) -> list[str]:
        """The four answers as text."""
        return [record_text(choice, self.item.objects) for choice in self.item.answer_choices]

    def rationales(self) -> list[str]:
        """The four rationales as text."""
        return [record_text(choice, self.item.objects) for choice in self.item.rationale_choices]

    def to_dict(self) -> dict[str, Any]:
        """The prediction as JSON: indices, the 4 + 4 scores, the texts, and the record's labels when it has them
        (``None`` otherwise; the models never see them)."""
        return {"answer_index": self.answer_index, "rationale_index": self.rationale_index,
                "answer_scores": list(self.answer_scores), "rationale_scores": list(self.rationale_scores),
                "question": record_text(self.item.question, self.item.objects),
                "answer": self.answers()[self.answer_index], "rationale": self.rationales()[self.rationale_index],
                "answer_label": self.item.answer_label, "rationale_label": self.item.rationale_label,
                "seconds": round(self.seconds, 3)}


def load_vcr_pipeline(id_or_path: str, task: str, device: str, local_files_only: bool = False,
                      precision: str = "auto") -> Any:
    """The pipeline of VCR model ``task`` (``q2a`` or ``qa2r``) from a Hub id or folder, loaded and checked by
    :func:`vqa_llm.vcr_loading.load_vcr_model` (ModelUnavailableError, BadSettingError)."""
    loaded = load_vcr_model(task, id_or_path, device, local_files_only, precision)
    return PIPELINES[task](model=loaded.model, device=device, vle_processor=loaded.processor)


def no_vcr_note(profile: Profile) -> str:
    """Why the VCR tab is absent for a profile without both VCR models."""
    return (f"Visual commonsense (VCR) needs a question->answer and a question+answer->rationale model; the "
            f"'{profile.name}' profile has {'only one' if profile.vcr_q2a or profile.vcr_qa2r else 'none'}. Pass "
            "--vcr-q2a and --vcr-qa2r (Hub ids or folders), or use --profile base.")


@dataclass
class VCRModels:
    """The two VCR models of a profile, loaded at first use (see the module docstring).

    ``model_ids``: ``{"q2a": id, "qa2r": id}``; ``note``: why VCR is not available (empty when it is);
    ``pipelines``: the loaded pipelines by name (pass them to use models already in memory).
    """

    model_ids: dict[str, str | None] = field(default_factory=lambda: dict.fromkeys(VCR_TASKS))
    device: str = "cpu"
    local_files_only: bool = False
    precision: str = "auto"
    note: str = ""
    pipelines: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @classmethod
    def from_profile(cls, profile: Profile) -> VCRModels:
        """The profile's VCR models, not loaded yet; never raises. Local folders are checked now (cheaply, no
        weights read): a missing one makes VCR unavailable, with a note saying why."""
        ids = {"q2a": profile.vcr_q2a, "qa2r": profile.vcr_qa2r}
        settings = {"device": resolve_device(profile.device), "local_files_only": profile.local_files_only,
                    "precision": profile.vqa_precision}
        if not all(ids.values()):
            return cls(ids, note=no_vcr_note(profile), **settings)
        try:
            for task, ident in ids.items():
                check_model_dir(ident, WHAT[task])
        except ModelUnavailableError as exc:
            logger.warning("Visual commonsense (VCR) disabled: %s", exc)
            return cls(ids, note=f"Visual commonsense (VCR) is off: {public_text(str(exc))}", **settings)
        return cls(ids, **settings)

    @property
    def available(self) -> bool:
        """Whether both models are named (and their folders looked usable at start-up)."""
        return not self.note and all(self.model_ids.get(task) or task in self.pipelines for task in VCR_TASKS)

    @property
    def sources(self) -> dict[str, str | None]:
        """The models' names and origins for people (:func:`vqa_llm.sources.model_source`)."""
        return {task: model_source(self.model_ids.get(task)) for task in VCR_TASKS}

    def load(self) -> dict[str, Any]:
        """Both pipelines, loaded now unless they are already (one load at a time). Raises BadSettingError when
        VCR is not available, ModelUnavailableError when a model cannot be loaded."""
        if not self.available:
            raise BadSettingError(self.note or "Visual commonsense (VCR) is not available here.")
        with self._lock:
            for task in VCR_TASKS:
                if task not in self.pipelines:
                    self.pipelines[task] = load_vcr_pipeline(self.model_ids[task], task, self.device,
                                                             self.local_files_only, self.precision)
        return self.pipelines

    def run(self, image: Image.Image, item: VCRItem) -> VCRPrediction:
        """Q->A on ``item`` (checked by :func:`read_record` for this image), then QA->R given the chosen answer."""
        pipelines = self.load()
        started = time.perf_counter()
        annotation, metadata = item.annotation(), item.metadata()
        q2a = pipelines["q2a"](meta_inputs=annotation, image=image, metadata=metadata)[0]
        answer = int(q2a["pred"][0])
        qa2r = pipelines["qa2r"](meta_inputs={**annotation, "answer_label": answer}, image=image,
                                 metadata=metadata)[0]
        scores = [[float(s) for s in out["score"]] for out in (q2a, qa2r)]
        if any(len(s) != NUM_CHOICES for s in scores):
            raise BadSettingError(f"The VCR models returned {[len(s) for s in scores]} scores, not {NUM_CHOICES} "
                                  "each: check that both are VLE VCR checkpoints.")
        return VCRPrediction(item, answer, int(qa2r["pred"][0]), *scores, seconds=time.perf_counter() - started)

    def predict(self, image: ImageSource, record: Any) -> VCRPrediction:
        """:meth:`run` on any image (path, bytes, PIL, array: :func:`vle.image_io.load_image`) and a record
        (JSON text or dict); the boxes' default frame is the image's own size, before any downscaling."""
        try:
            picture, geometry = load_image_with_geometry(image)
        except VLEError as exc:
            raise BadImageError(str(exc)) from exc
        return self.run(picture, read_record(record, geometry.source_size))  # the frame maps onto any size


def load_vcr_models(profile: Profile) -> VCRModels:
    """:meth:`VCRModels.from_profile`: the profile's VCR models, loaded at first use; never raises."""
    return VCRModels.from_profile(profile)


# ---------------------------------------------------------------------------------------- examples
@dataclass(frozen=True)
class VCRExample:
    """One example of the tab: an image, its record as JSON text, and a short label (the question)."""

    image: str
    record: str
    label: str


def load_vcr_examples(directory: str | Path = EXAMPLES_DIR) -> list[VCRExample]:
    """The examples in ``directory``: each ``NAME.png`` with its record ``NAME.json`` (boxes inline), sorted by name.
    Unreadable or broken ones are skipped with a warning; a missing folder gives ``[]``."""
    examples = []
    for image in sorted(Path(directory).glob("*.png")) if Path(directory).is_dir() else []:
        try:
            record = json.loads(image.with_suffix(".json").read_text(encoding="utf-8"))
            with Image.open(image) as opened:
                size = opened.size
            item = read_record(record, size)
        except (OSError, ValueError) as exc:  # json, PIL and BadSettingError are ValueErrors or OSErrors
            logger.warning("Ignoring the VCR example %s: %s", image.name, exc)
            continue
        examples.append(VCRExample(str(image), format_record(record), record_text(item.question, item.objects)))
    return examples
