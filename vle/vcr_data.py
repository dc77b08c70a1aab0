"""VCR data in its official layout: annotation files (``*.jsonl``) and, under an images root, the images and their
box metadata.

Each line of ``train.jsonl`` / ``val.jsonl`` / ``test.jsonl`` is one item::

    {"annot_id": "val-0", "objects": ["person", "person", "car"], "img_fn": "movie/frame.jpg",
     "metadata_fn": "movie/frame.json", "question": ["Why", "is", [0], "here", "?"],
     "answer_choices": [[...], [...], [...], [...]], "rationale_choices": [[...], [...], [...], [...]],
     "answer_label": 2, "rationale_label": 0}

Texts are token lists in which an object reference is a list of indices into ``objects`` (``[0, 2]`` names two
objects). The metadata file (``metadata_fn``, JSON) holds ``boxes`` as ``[x1, y1, x2, y2, score]`` in the image's
``width`` x ``height`` frame, one per object. Test files have no labels: they are read for prediction.

:func:`load_vcr` reads and checks every record before anything uses it: the fields and their types, four choices,
labels in range, every object reference naming an object that has a box, the image and the metadata file present.
The first bad record stops the read with a :class:`VCRDataError` naming the file, the line and the ``annot_id``.
Images are never decoded here. :meth:`VCRItem.annotation` and :meth:`VCRItem.metadata` are what the VCR pipelines
(:class:`~vle.VLEForVCRQ2APipeline`, :class:`~vle.VLEForVCRQA2RPipeline`) take.

:func:`inline_item` checks one record held in memory whose ``boxes`` (and optionally ``width``/``height``) come
with it, with the same checks (:func:`check_record`, :func:`check_metadata`) and without looking at any file:
``img_fn`` and ``metadata_fn`` are not needed there and never opened.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["NUM_CHOICES", "VCRDataError", "VCRItem", "check_metadata", "check_record", "inline_item", "load_vcr"]

#: answers and rationales per item
NUM_CHOICES = 4
_REQUIRED = ("annot_id", "objects", "img_fn", "metadata_fn", "question", "answer_choices", "rationale_choices")
#: fields an inline record (:func:`inline_item`) may leave out
_INLINE_OPTIONAL = ("annot_id", "img_fn", "metadata_fn")


class VCRDataError(ValueError):
    """A VCR file or record is unusable; the message names it and says what is wrong."""


@dataclass(frozen=True)
class VCRItem:
    """One VCR item: the question about an image, four answers, four rationales and (except in test files) which
    of them are right. ``boxes``, ``width`` and ``height`` come from the item's metadata file. ``question_kind``: the
    record's ``question_kind`` when it has one as a string (generated shape scenes do; real VCR files do not)."""

    annot_id: str
    objects: tuple[str, ...]
    question: list
    answer_choices: list
    rationale_choices: list
    answer_label: int | None
    rationale_label: int | None
    image_path: str
    boxes: list
    width: float
    height: float
    question_kind: str | None = None

    @property
    def labelled(self) -> bool:
        """Whether the item says which answer and rationale are right (test files do not)."""
        return self.answer_label is not None and self.rationale_label is not None

    def annotation(self) -> dict[str, Any]:
        """The annotation as the VCR pipelines take it (``meta_inputs``)."""
        record: dict[str, Any] = {"annot_id": self.annot_id, "objects": list(self.objects),
                                  "question": self.question, "answer_choices": self.answer_choices,
                                  "rationale_choices": self.rationale_choices}
        if self.answer_label is not None:
            record["answer_label"] = self.answer_label
        if self.rationale_label is not None:
            record["rationale_label"] = self.rationale_label
        return record

    def metadata(self) -> dict[str, Any]:
        """The box metadata as the VCR pipelines take it (``metadata``)."""
        return {"boxes": self.boxes, "width": self.width, "height": self.height}


def load_vcr(annotations: str | os.PathLike, images_root: str | os.PathLike,
             require_labels: bool | None = None) -> list[VCRItem]:
    """Every item of a VCR annotation file, checked (see the module docstring).

    ``images_root`` is the folder ``img_fn`` and ``metadata_fn`` are relative to. ``require_labels``: ``True``
    refuses items without labels (training, evaluation), ``False`` reads them as unlabelled even when they have
    labels (prediction), ``None`` keeps what each record has.

    Raises:
        VCRDataError: a missing or unreadable file, or the first bad record (file, line, ``annot_id``, what).
    """
    path, root = Path(annotations), Path(images_root)
    if not path.is_file():
        raise VCRDataError(f"No VCR annotation file at {path}: pass the path of a *.jsonl file (e.g. val.jsonl).")
    if not root.is_dir():
        raise VCRDataError(f"No VCR images folder at {root}: pass the folder that img_fn and metadata_fn are "
                           "relative to.")
    items, seen = [], set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise VCRDataError(f"Could not read {path} ({exc}).") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise VCRDataError(f"{path}, line {number}: not a JSON object ({exc.msg}); each line of a VCR file is "
                               "one record.") from None
        where = f"{path}, line {number}" + (f" ({record['annot_id']})" if isinstance(record, dict)
                                           and isinstance(record.get("annot_id"), str) else "")
        try:
            item = _item(record, root, require_labels)
        except VCRDataError as exc:
            raise VCRDataError(f"{where}: {exc}") from None
        if item.annot_id in seen:
            raise VCRDataError(f"{where}: annot_id {item.annot_id!r} appears twice in the file.")
        seen.add(item.annot_id)
        items.append(item)
    if not items:
        raise VCRDataError(f"{path} holds no VCR records.")
    return items


def _item(record: Any, root: Path, require_labels: bool | None) -> VCRItem:
    labels = check_record(record, require_labels)
    objects = record["objects"]
    image = _inside(root, record["img_fn"], "image")
    boxes, width, height = _read_metadata(_inside(root, record["metadata_fn"], "metadata file"), len(objects))
    kind = record.get("question_kind")
    return VCRItem(record["annot_id"], tuple(objects), record["question"], record["answer_choices"],
                   record["rationale_choices"], labels["answer_label"], labels["rationale_label"], str(image),
                   boxes, width, height, kind if isinstance(kind, str) else None)


def check_record(record: Any, require_labels: bool | None = None, inline: bool = False) -> dict[str, int | None]:
    """Check one record's fields (see the module docstring) and return its labels, ``{"answer_label": ...,
    "rationale_label": ...}`` (``None`` where it has none; all ``None`` when ``require_labels`` is ``False``).

    ``inline``: a record whose image and boxes come with it (:func:`inline_item`): ``annot_id``, ``img_fn`` and
    ``metadata_fn`` may be left out, and the file names are not looked at. Raises VCRDataError saying what is
    wrong; the caller names the record.
    """
    if not isinstance(record, dict):
        raise VCRDataError(f"a record must be a JSON object, not {type(record).__name__}.")
    missing = [key for key in _REQUIRED if key not in record and not (inline and key in _INLINE_OPTIONAL)]
    if missing:
        raise VCRDataError(f"missing field(s) {', '.join(missing)}.")
    objects = record["objects"]
    if not isinstance(objects, list) or not all(isinstance(o, str) and o for o in objects):
        raise VCRDataError("objects must be a list of object names (strings).")
    for key in ("annot_id",) if inline else ("annot_id", "img_fn", "metadata_fn"):
        if key in record and (not isinstance(record[key], str) or not record[key]):
            raise VCRDataError(f"{key} must be a non-empty string.")
    _check_text(record["question"], "question", len(objects))
    for key in ("answer_choices", "rationale_choices"):
        choices = record[key]
        if not isinstance(choices, list) or len(choices) != NUM_CHOICES:
            raise VCRDataError(f"{key} must be a list of {NUM_CHOICES} token lists.")
        for index, choice in enumerate(choices):
            _check_text(choice, f"{key}[{index}]", len(objects))
    labels = {key: _label(record, key) for key in ("answer_label", "rationale_label")}
    if require_labels and None in labels.values():
        raise VCRDataError("no answer_label/rationale_label: this use needs labelled items (a train or val file).")
    if require_labels is False:
        labels = dict.fromkeys(labels)
    return labels


def inline_item(record: Any, default_size: tuple[float, float] | None = None,
                require_labels: bool | None = None) -> VCRItem:
    """One record held in memory, with its ``boxes`` (and optionally ``width``/``height``, the boxes' frame) in
    the record itself, checked like a line of a file (see the module docstring) without looking at any file.

    ``default_size``: the frame when the record names none (the image's size). ``image_path`` is empty: the
    caller has the image. Raises VCRDataError saying what is wrong.
    """
    labels = check_record(record, require_labels, inline=True)
    boxes, width, height = check_metadata(record, len(record["objects"]), "the record", default_size)
    kind = record.get("question_kind")
    return VCRItem(str(record.get("annot_id", "")), tuple(record["objects"]), record["question"],
                   record["answer_choices"], record["rationale_choices"], labels["answer_label"],
                   labels["rationale_label"], "", boxes, width, height, kind if isinstance(kind, str) else None)


def _check_text(tokens: Any, what: str, num_objects: int) -> None:
    """A token list: words (non-empty strings) and object references (non-empty lists of object indices)."""
    if not isinstance(tokens, list) or not tokens:
        raise VCRDataError(f"{what} must be a non-empty list of tokens.")
    for token in tokens:
        if isinstance(token, str) and token:
            continue
        if not isinstance(token, list) or not token or not all(isinstance(i, int) and not isinstance(i, bool)
                                                               for i in token):
            raise VCRDataError(f"{what} has the token {token!r}: a token is a word or a list of object indices.")
        wrong = [i for i in token if not 0 <= i < num_objects]
        if wrong:
            raise VCRDataError(f"{what} refers to object {wrong[0]}, but the record has {num_objects} objects "
                               f"(0 to {num_objects - 1}).")


def _label(record: Mapping[str, Any], key: str) -> int | None:
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < NUM_CHOICES:
        raise VCRDataError(f"{key} must be 0 to {NUM_CHOICES - 1}, got {value!r}.")
    return value


def _inside(root: Path, name: str, what: str) -> Path:
    """``root / name`` when it is a file inside ``root``; VCRDataError otherwise."""
    path = (root / name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise VCRDataError(f"the {what} {name!r} lies outside the images folder.")
    if not path.is_file():
        raise VCRDataError(f"no {what} at {root / name}.")
    return path


def _read_metadata(path: Path, num_objects: int) -> tuple[list, float, float]:
    """``(boxes, width, height)`` of a metadata file, one box per object at least."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VCRDataError(f"the metadata file {path.name} is not readable JSON ({exc}).") from None
    return check_metadata(data, num_objects, f"{path.name} (metadata file)")


def check_metadata(data: Any, num_objects: int, where: str,
                   default_size: tuple[float, float] | None = None) -> tuple[list, float, float]:
    """``(boxes, width, height)`` of VCR box metadata (a metadata file's object, or a record with inline boxes):
    one box ``[x1, y1, x2, y2(, score)]`` per object at least, in a positive ``width`` x ``height`` frame
    (``default_size`` when the data names neither and it is given). ``where`` names the data in messages."""
    if not isinstance(data, Mapping):
        raise VCRDataError(f"{where} must hold a JSON object with boxes, width, height.")
    width, height, boxes = data.get("width"), data.get("height"), data.get("boxes")
    if default_size is not None and width is None and height is None:
        width, height = default_size
    if not all(_positive(v) for v in (width, height)):
        raise VCRDataError(f"{where} needs a positive width and height.")
    if not isinstance(boxes, list) or len(boxes) < num_objects:
        raise VCRDataError(f"{where} has {len(boxes) if isinstance(boxes, list) else 'no'} boxes for "
                           f"{num_objects} objects: every object needs its box.")
    for index, box in enumerate(boxes[:num_objects]):
        if not _is_box(box):
            raise VCRDataError(f"box {index} in {where} is {box!r}: a box is [x1, y1, x2, y2] or "
                               "[x1, y1, x2, y2, score] with x1 <= x2 and y1 <= y2.")
    return boxes, float(width), float(height)


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _is_box(box: Any) -> bool:
    if not isinstance(box, Sequence) or isinstance(box, str) or len(box) not in (4, 5):
        return False
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box):
        return False
    return box[0] <= box[2] and box[1] <= box[3]
