"""Checking what a user gives before any model runs: the image, the question and other texts, the settings.

Control characters are removed from texts (tabs and newlines become spaces), and so are invisible format
characters: bidirectional overrides and isolates (which make text display in another order than it is
read, e.g. U+202E), zero-width spaces, the byte-order mark, soft hyphens, tag characters. Emoji, CJK and
other printable text are kept, with the joiners some scripts and emoji sequences need (U+200C, U+200D).
"""

from __future__ import annotations

import math
import numbers
import unicodedata

from PIL import Image

from prompts import available_templates
from vle.errors import ImageLoadError
from vle.image_io import ImageSource, image_sha256, load_image

from .errors import BadImageError, BadQuestionError, BadSettingError

MAX_QUESTION_CHARS = 500
_WHITESPACE_CONTROLS = {"\t", "\n", "\r", "\x0b", "\x0c", "\x85", "\u2028", "\u2029"}
#: format characters that carry meaning in text: zero-width non-joiner and joiner (Persian, Indic scripts, emoji)
_KEPT_FORMAT_CHARACTERS = {"\u200c", "\u200d"}


def clean_text(text: str) -> tuple[str, int]:
    """``text`` on one line without control or invisible format characters (see the module docstring), runs of
    whitespace as one space, trimmed; and how many characters were removed."""
    kept: list[str] = []
    removed = 0
    for char in text:
        if char in _WHITESPACE_CONTROLS:
            kept.append(" ")
        elif unicodedata.category(char) in ("Cc", "Cf") and char not in _KEPT_FORMAT_CHARACTERS:
            removed += 1
        else:
            kept.append(char)
    return " ".join("".join(kept).split()), removed


def clean_question(question: object, max_chars: int = MAX_QUESTION_CHARS) -> tuple[str, list[str]]:
    """Return ``(question, notes)``: the question cleaned by :func:`clean_text`.

    ``notes`` says what was changed (empty when nothing was). Raises BadQuestionError when the
    question is not text, is empty after cleaning, or is longer than ``max_chars`` characters.
    """
    if question is None:
        question = ""
    if not isinstance(question, str):
        raise BadQuestionError(f"The question must be text, not {type(question).__name__}: type a question.")
    cleaned, removed = clean_text(question)
    if not cleaned:
        raise BadQuestionError("The question is empty: type a question about the image.")
    if len(cleaned) > max_chars:
        raise BadQuestionError(
            f"The question is {len(cleaned)} characters long; the limit is {max_chars}. Shorten it and ask again."
        )
    notes = [f"removed {removed} control character(s) from the question"] if removed else []
    return cleaned, notes


def clean_lines(texts: object, what: str, limit: int, max_chars: int) -> list[str]:
    """``texts`` (e.g. labels) each cleaned by :func:`clean_text`: one per line in a string (what a text box
    sends; empty lines are dropped and duplicates merged), or a list or tuple of strings (kept one for one, so
    results line up with them: none may be empty). BadSettingError when ``texts`` is neither, when a listed
    text is empty, or when no text, more than ``limit`` texts or one longer than ``max_chars`` remain; ``what``
    names the texts in messages ("labels")."""
    if texts is None:
        texts = ""
    if isinstance(texts, str):
        lines = list(dict.fromkeys(filter(None, (clean_text(line)[0] for line in texts.splitlines()))))
    elif isinstance(texts, (list, tuple)) and all(isinstance(text, str) for text in texts):
        lines = [clean_text(text)[0] for text in texts]
        if texts and not all(lines):
            raise BadSettingError(f"The {what} include an empty one (#{lines.index('')}): give each some words.")
    else:
        raise BadSettingError(f"The {what} must be text, not {type(texts).__name__}: type them one per line.")
    if not lines:
        raise BadSettingError(f"Type one or more {what}, one per line.")
    if len(lines) > limit:
        raise BadSettingError(f"{len(lines)} {what} given; the limit is {limit}. Remove some lines.")
    too_long = [line for line in lines if len(line) > max_chars]
    if too_long:
        raise BadSettingError(f"A line is {len(too_long[0])} characters long; the limit is {max_chars}. Shorten it.")
    return lines


def whole_number(name: str, value: object) -> int:
    """``value`` as an int when it is a whole number (``3`` or ``3.0``); BadSettingError for anything else
    (``True``, ``"3"``, ``3.5``, NaN, infinity, ``None``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value != int(value):
        raise BadSettingError(f"{name} must be a whole number, got {value!r}: pass e.g. 5.")
    return int(value)


def check_number(name: str, value: object, low: float, high: float, whole: bool = False) -> float | int:
    """``value`` when it is a finite number in ``[low, high]`` (a whole one if ``whole``, returned as int);
    BadSettingError naming the setting and its range otherwise (strings, ``None``, booleans, NaN, infinity)."""
    if whole:
        number: float | int = whole_number(name, value)
    elif isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise BadSettingError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}.")
    else:
        number = float(value)
    if not low <= number <= high:
        raise BadSettingError(f"{name} must be from {low:g} to {high:g}, got {value!r}.")
    return number


def check_flag(name: str, value: object) -> bool:
    """``value`` when it is ``True`` or ``False``; BadSettingError otherwise (``"no"`` is not false)."""
    if not isinstance(value, bool):
        raise BadSettingError(f"{name} must be true or false, got {value!r}.")
    return value


def clamp_top_k(top_k: object, vocab_size: int) -> tuple[int, list[str]]:
    """Return ``(k, notes)`` with ``k`` clamped into ``[1, vocab_size]``; ``notes`` records any clamping.

    Raises BadSettingError when ``top_k`` is not a whole number.
    """
    top_k = whole_number("top_k", top_k)
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
