"""Checking what a user gives before any model runs: the image, the question, ``top_k`` and the template.

Control characters are removed from questions (tabs and newlines become spaces); emoji, CJK and other
printable text, and the format characters emoji sequences need (zero-width joiner), are kept.
"""

from __future__ import annotations

import unicodedata

from PIL import Image

from prompts import available_templates
from vle.errors import ImageLoadError
from vle.image_io import ImageSource, image_sha256, load_image

from .errors import BadImageError, BadQuestionError, BadSettingError

MAX_QUESTION_CHARS = 500
_WHITESPACE_CONTROLS = {"\t", "\n", "\r", "\x0b", "\x0c", "\x85"}


def clean_question(question: object, max_chars: int = MAX_QUESTION_CHARS) -> tuple[str, list[str]]:
    """Return ``(question, notes)``: the question without control characters and surrounding spaces.

    ``notes`` says what was changed (empty when nothing was). Raises BadQuestionError when the
    question is not text, is empty after cleaning, or is longer than ``max_chars`` characters.
    """
    if question is None:
        question = ""
    if not isinstance(question, str):
        raise BadQuestionError(f"The question must be text, not {type(question).__name__}: type a question.")
    kept: list[str] = []
    removed = 0
    for char in question:
        if char in _WHITESPACE_CONTROLS:
            kept.append(" ")
        elif unicodedata.category(char) == "Cc":
            removed += 1
        else:
            kept.append(char)
    cleaned = " ".join("".join(kept).split())
    if not cleaned:
        raise BadQuestionError("The question is empty: type a question about the image.")
    if len(cleaned) > max_chars:
        raise BadQuestionError(
            f"The question is {len(cleaned)} characters long; the limit is {max_chars}. Shorten it and ask again."
        )
    notes = [f"removed {removed} control character(s) from the question"] if removed else []
    return cleaned, notes


def clamp_top_k(top_k: object, vocab_size: int) -> tuple[int, list[str]]:
    """Return ``(k, notes)`` with ``k`` clamped into ``[1, vocab_size]``; ``notes`` records any clamping.

    Raises BadSettingError when ``top_k`` is not an integer.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        try:
            if isinstance(top_k, bool) or float(top_k) != int(top_k):  # type: ignore[arg-type]
                raise ValueError
            top_k = int(top_k)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise BadSettingError(f"top_k must be a whole number, got {top_k!r}: pass e.g. 5.") from None
    upper = max(1, int(vocab_size))
    k = min(max(top_k, 1), upper)
    notes = [f"top_k {top_k} clamped to {k} (allowed: 1 to {upper})"] if k != top_k else []
    return k, notes


def template_names() -> list[str]:
    """The prompt templates a request may name."""
    return available_templates()


def check_template(template: object) -> str:
    """Return ``template`` if a prompt template of that name exists; BadSettingError listing them otherwise."""
    names = template_names()
    if not isinstance(template, str) or template not in names:
        raise BadSettingError(f"Unknown prompt template {template!r}: use one of {', '.join(names)}.")
    return template


def read_image(image: ImageSource | None, index: int | None = None) -> tuple[Image.Image, str]:
    """The image normalised once (EXIF orientation, RGB, size limits) and its content hash.

    Raises BadImageError (prefixed with ``Image #index:`` when ``index`` is given) when it cannot be read.
    """
    where = f"Image #{index}: " if index is not None else ""
    if image is None:
        raise BadImageError(where + "No image was given: upload or choose an image first.")
    try:
        pil = load_image(image)
    except ImageLoadError as exc:
        raise BadImageError(where + str(exc)) from exc
    return pil, image_sha256(pil)
