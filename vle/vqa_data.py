"""VQA dataset readers for VLE fine-tuning, the bundle builder and the evaluator.

* :func:`load_easy_vqa` reads the ``easy-vqa`` pip package (synthetic shapes: 13 answers).
* :func:`load_vqav2` reads VQAv2-format question/annotation JSON files (also OK-VQA, and A-OKVQA
  once converted to that format) and resolves each question's COCO image file.
* :func:`vqa_target_scores` and :func:`build_answer_vocab` turn human answers into the soft targets
  and the answer vocabulary of a VQA classification head.
* :func:`image_for` opens an example's image.

Images are never decoded at load time: an example only carries its image's path.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

__all__ = [
    "COCO_IMAGE_NAME_PATTERN",
    "EASY_VQA_SHAPES",
    "NUM_HUMAN_ANSWERS",
    "VQADataError",
    "VQAExample",
    "build_answer_vocab",
    "image_for",
    "load_easy_vqa",
    "load_vqav2",
    "soft_score",
    "vqa_target_scores",
]

# COCO file names, e.g. COCO_val2014_000000000042.jpg. Fields: data_subtype, image_id.
COCO_IMAGE_NAME_PATTERN = "COCO_{data_subtype}_{image_id:012d}.jpg"

# easy-VQA's shape answers; its other non yes/no answers are colours.
EASY_VQA_SHAPES = frozenset({"circle", "rectangle", "triangle"})
#: the colours of easy-VQA's shapes (this order is the bundled models' colour-label order)
EASY_VQA_COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")

_YES_NO = frozenset({"yes", "no"})
_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
_TRAILING_DIGITS = re.compile(r"(\d+)$")
# VQAv2 test-dev questions are about test2015 images.
_TEST_DEV = re.compile(r"^test-dev(\d{4})$")
# Human answers per VQAv2 question; easy-VQA's single answer is repeated this many times.
NUM_HUMAN_ANSWERS = 10


class VQADataError(ValueError):
    """A VQA data file, folder or split is missing or malformed; the message says what to do."""


@dataclass
class VQAExample:
    """One question about one image.

    Attributes:
        question_id: the dataset's question id (int for VQAv2 and easy-VQA).
        image_id: the dataset's image id, as a string.
        image_path: path of the image file (opened lazily by :func:`image_for`).
        question: the question text.
        answers: the human answers (10 for VQAv2; empty when the split has no annotations).
        answer_type: ``"yes/no"``, ``"number"`` or ``"other"`` (empty without annotations).
        question_type: VQAv2's ``question_type`` (e.g. ``"what color is the"``); for easy-VQA
            ``"shape"``, ``"color"`` or ``"yes/no"``.
    """

    question_id: int | str
    image_id: str
    image_path: str
    question: str
    answers: list[str] = field(default_factory=list)
    answer_type: str = ""
    question_type: str = ""


# --------------------------------------------------------------------------------------------
# easy-VQA


def _easy_vqa_kind(answer: str) -> str:
    """easy-VQA question kind, read off the answer (exact: each kind has its own answers)."""
    if answer in _YES_NO:
        return "yes/no"
    if answer in EASY_VQA_SHAPES:
        return "shape"
    return "color"


@functools.lru_cache(maxsize=2)
def _easy_vqa_rows(split: str) -> tuple[tuple[str, str, int, str], ...]:
    """(question, answer, image id, image path) rows of one easy-VQA split, read once."""
    try:
        import easy_vqa
    except ImportError as error:  # pragma: no cover - easy-vqa is a runtime requirement
        raise VQADataError("easy-VQA is not installed: run `pip install easy-vqa==1.0`.") from error
    if split == "train":
        questions, answers, image_ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    else:
        questions, answers, image_ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    return tuple(
        (question, answer, image_id, paths[image_id])
        for question, answer, image_id in zip(questions, answers, image_ids)
    )


def load_easy_vqa(split: Literal["train", "test"]) -> list[VQAExample]:
    """All questions of an easy-VQA split from the installed ``easy-vqa`` package.

    ``train``: 38,575 questions on 4,000 images; ``test``: 9,673 questions on 1,000 images.
    ``question_id`` is the question's index in the split's ``questions.json``; ``answers`` holds
    the single answer repeated 10 times (so VQAv2 metrics and soft scores apply unchanged);
    ``question_type`` is derived from the answer: ``yes``/``no`` -> ``"yes/no"``, a shape name
    (circle, rectangle, triangle) -> ``"shape"``, anything else (a colour) -> ``"color"``;
    ``answer_type`` is ``"yes/no"`` for yes/no questions and ``"other"`` otherwise.

    Raises:
        VQADataError: ``split`` is not ``"train"`` or ``"test"``.
    """
    if split not in ("train", "test"):
        raise VQADataError(f"easy-VQA has splits 'train' and 'test', not {split!r}.")
    examples = []
    for index, (question, answer, image_id, path) in enumerate(_easy_vqa_rows(split)):
        kind = _easy_vqa_kind(answer)
        examples.append(VQAExample(
            question_id=index,
            image_id=str(image_id),
            image_path=path,
            question=question,
            answers=[answer] * NUM_HUMAN_ANSWERS,
            answer_type="yes/no" if kind == "yes/no" else "other",
            question_type=kind,
        ))
    return examples


# --------------------------------------------------------------------------------------------
# VQAv2-format files


def _read_json(path: str | os.PathLike, list_key: str, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise VQADataError(f"{what} file not found: {path}. Check the path (VQAv2 files are named "
                           f"like v2_OpenEnded_mscoco_val2014_questions.json / "
                           f"v2_mscoco_val2014_annotations.json).")
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise VQADataError(f"{path} is not valid JSON ({error}); re-download or re-convert it.") from error
    if not isinstance(data, dict) or not isinstance(data.get(list_key), list):
        raise VQADataError(f"{path} is not a VQAv2-format {what} file: it needs a top-level "
                           f"{list_key!r} list.")
    return data


def _require_fields(entry: Any, names: Sequence[str], source: str | os.PathLike) -> None:
    """Raise a :class:`VQADataError` when a question/annotation entry lacks a field."""
    if not isinstance(entry, dict) or any(name not in entry for name in names):
        raise VQADataError(f"{source}: entry {str(entry)[:120]!r} lacks one of the fields "
                           f"{', '.join(names)}; is this a VQAv2-format file?")


def _image_subtype(data_subtype: str) -> str:
    """The image folder's subtype for a question file's ``data_subtype`` (test-devYYYY -> testYYYY)."""
    match = _TEST_DEV.match(data_subtype)
    return f"test{match.group(1)}" if match else data_subtype


def _expected_name(pattern: str, image_id: Any, data_subtype: str) -> str | None:
    """``pattern`` filled in for one image, or None when the id does not fit the pattern."""
    try:
        return pattern.format(image_id=image_id, data_subtype=data_subtype)
    except (ValueError, TypeError, KeyError, IndexError):
        return None


def _index_images(images_dir: Path) -> dict[str, str]:
    """Map image ids to files of ``images_dir``: by the stem's trailing digits (as an int, so any
    zero padding and any prefix is accepted) and by the whole stem. The first file in sorted order
    wins when two names give the same key."""
    index: dict[str, str] = {}
    for path in sorted(images_dir.iterdir()):
        if path.suffix.lower() not in _IMAGE_SUFFIXES or not path.is_file():
            continue
        index.setdefault(path.stem, str(path))
        match = _TRAILING_DIGITS.search(path.stem)
        if match:
            index.setdefault(str(int(match.group(1))), str(path))
    return index


def _id_key(image_id: Any) -> str:
    text = str(image_id)
    return str(int(text)) if text.isdigit() else text


def load_vqav2(
    questions_json: str | os.PathLike,
    annotations_json: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
    image_name_pattern: str = COCO_IMAGE_NAME_PATTERN,
    on_missing_image: Literal["error", "skip"] = "error",
) -> list[VQAExample]:
    """Read VQAv2-format questions (and optional annotations) into examples, in file order.

    Args:
        questions_json: a file with a ``questions`` list of ``{question_id, image_id, question}``;
            its ``data_subtype`` (e.g. ``val2014``) names the image subset.
        annotations_json: a file with an ``annotations`` list of ``{question_id, answers:
            [{answer, ...}], answer_type, question_type, ...}``; None for splits without answers
            (test-dev, test): examples then have no answers and empty types.
        images_dir: folder of the images. Each image is looked up first as ``image_name_pattern``
            formatted with ``image_id`` and ``data_subtype`` (``test-devYYYY`` becomes ``testYYYY``,
            where those images live), then as any image file whose name stem ends with the image id
            (zero-padded or not, any prefix: ``000000000042.jpg`` of COCO 2017 / A-OKVQA works).
            None: no lookup; ``image_path`` is then the pattern's file name, relative.
        image_name_pattern: ``str.format`` pattern with fields ``image_id`` and ``data_subtype``.
        on_missing_image: ``"error"`` raises when any image is not found; ``"skip"`` leaves those
            questions out (to evaluate on the images you have).

    Raises:
        VQADataError: a file is missing or not in VQAv2 format, a question has no annotation, or
            (with ``on_missing_image="error"``) an image is not in ``images_dir``.
    """
    if on_missing_image not in ("error", "skip"):
        raise VQADataError(f"on_missing_image must be 'error' or 'skip', not {on_missing_image!r}.")
    questions_data = _read_json(questions_json, "questions", "questions")
    annotations_data = (None if annotations_json is None
                        else _read_json(annotations_json, "annotations", "annotations"))
    data_subtype = str(questions_data.get("data_subtype")
                       or (annotations_data or {}).get("data_subtype") or "")
    image_subtype = _image_subtype(data_subtype)

    annotations: dict[Any, dict[str, Any]] = {}
    if annotations_data is not None:
        for ann in annotations_data["annotations"]:
            _require_fields(ann, ("question_id", "answers"), annotations_json)
        annotations = {ann["question_id"]: ann for ann in annotations_data["annotations"]}
        unannotated = [q["question_id"] for q in questions_data["questions"]
                       if q["question_id"] not in annotations]
        if unannotated:
            raise VQADataError(
                f"{len(unannotated)} questions of {questions_json} have no annotation in "
                f"{annotations_json} (first: question_id {unannotated[0]}); pass the annotations "
                f"file of the same split, or none for test splits.")

    folder = None if images_dir is None else Path(images_dir)
    if folder is not None and not folder.is_dir():
        raise VQADataError(f"image folder not found: {folder}. Pass the folder holding the "
                           f"{image_subtype or 'COCO'} images (e.g. .../val2014).")
    index: dict[str, str] | None = None  # built on the first miss only

    examples: list[VQAExample] = []
    missing: list[Any] = []
    for question in questions_data["questions"]:
        _require_fields(question, ("question_id", "image_id", "question"), questions_json)
        image_id = question["image_id"]
        name = _expected_name(image_name_pattern, image_id, image_subtype)
        if folder is None:
            path = name or str(image_id)
        else:
            path = str(folder / name) if name and (folder / name).is_file() else None
            if path is None:
                if index is None:
                    index = _index_images(folder)
                path = index.get(_id_key(image_id))
            if path is None:
                missing.append(image_id)
                continue
        annotation = annotations.get(question["question_id"], {})
        examples.append(VQAExample(
            question_id=question["question_id"],
            image_id=str(image_id),
            image_path=path,
            question=question["question"],
            answers=[answer["answer"] for answer in annotation.get("answers", [])],
            answer_type=annotation.get("answer_type", ""),
            question_type=annotation.get("question_type", ""),
        ))
    if missing and on_missing_image == "error":
        raise VQADataError(
            f"{len(missing)} of {len(questions_data['questions'])} questions have no image in "
            f"{folder} (first: image_id {missing[0]}, expected a file like "
            f"{_expected_name(image_name_pattern, missing[0], image_subtype)!r}). Point images_dir "
            f"at the right folder, set image_name_pattern, or pass on_missing_image='skip'.")
    return examples


# --------------------------------------------------------------------------------------------
# training targets


def soft_score(count: int) -> float:
    """VQA soft score of an answer given by ``count`` annotators: 0 -> 0.0, 1 -> 0.3, 2 -> 0.6,
    3 -> 0.9, 4 or more -> 1.0 (the table ViLT, METER and VLE train with; ``min(1, 0.3 * count)``
    except that 3 gives exactly 0.9)."""
    if count <= 0:
        return 0.0
    return (0.3, 0.6, 0.9)[count - 1] if count <= 3 else 1.0


def vqa_target_scores(
    answers: Sequence[str], normalize: Callable[[str], str] | None = None
) -> dict[str, float]:
    """Soft training target of each distinct answer, ``{answer: soft_score(count)}``.

    Answers are counted as given (as VLE's data preparation does); pass ``normalize`` (e.g. the
    evaluation's answer normaliser) to count normalised forms instead. Keys keep first-seen order.
    """
    counts = Counter(normalize(answer) if normalize else answer for answer in answers)
    return {answer: soft_score(count) for answer, count in counts.items()}


def build_answer_vocab(
    examples: Iterable[VQAExample], min_count: int = 1, max_size: int | None = None
) -> list[str]:
    """Answer vocabulary of a VQA head: answers sorted by frequency (descending), ties alphabetical.

    An answer's frequency is the number of examples among whose human answers it appears (each
    example counts once per distinct answer, so 10 identical annotations count 1). Answers below
    ``min_count`` are dropped; ``max_size`` keeps the most frequent ones.
    """
    counts: Counter[str] = Counter()
    for example in examples:
        counts.update(set(example.answers))
    ranked = sorted((answer for answer, count in counts.items() if count >= min_count),
                    key=lambda answer: (-counts[answer], answer))
    return ranked if max_size is None else ranked[:max_size]


# --------------------------------------------------------------------------------------------
# images


def image_for(example: VQAExample) -> Image.Image:
    """Open the example's image as an RGB PIL image (fully loaded; the file is closed).

    Raises:
        VQADataError: the file is missing or is not an image.
    """
    path = Path(example.image_path)
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError as error:
        raise VQADataError(f"image of question {example.question_id} not found: {path}. Check "
                           f"the images folder given to the loader.") from error
    except (OSError, Image.DecompressionBombError) as error:
        raise VQADataError(f"cannot read image {path} of question {example.question_id}: "
                           f"{error}. Replace the file.") from error
