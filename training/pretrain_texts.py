"""The texts of the VLE pretraining checkpoint: captions, their paraphrases, mismatched captions, masked words.

Every text uses only words of the bundled VLE's vocabulary (the words of the easy-VQA questions), so nothing
becomes ``[UNK]``: "a red circle", "the shape is a red circle", "there is a red circle in the image", ...
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .shape_scenes import COLOR_RGB, SHAPES

COLORS = tuple(COLOR_RGB)
#: the captions of an image; the first is the one the zero-shot labels and the evaluation use
TEMPLATES = (
    "a {color} {shape}",
    "the {color} {shape}",
    "the shape is a {color} {shape}",
    "there is a {color} {shape} in the image",
    "the image does contain a {color} {shape}",
    "a {shape} of color {color}",
)
#: how a mismatched caption differs from the image
NEGATIVE_KINDS = ("color", "shape", "both")


def caption(color: str, shape: str, template: int = 0) -> str:
    """The caption ``TEMPLATES[template]`` of a ``color`` ``shape``."""
    return TEMPLATES[template].format(color=color, shape=shape)


def zero_shot_labels() -> list[str]:
    """The 24 texts "a <colour> <shape>" (the default labels of zero-shot classification)."""
    return [caption(color, shape) for shape in SHAPES for color in COLORS]


def mismatch(color: str, shape: str, kind: str, rng: random.Random) -> tuple[str, str]:
    """A (colour, shape) pair that differs from the given one in colour, in shape or in both (``kind``)."""
    if kind not in NEGATIVE_KINDS:
        raise ValueError(f"kind must be one of {NEGATIVE_KINDS}, not {kind!r}")
    new_color = rng.choice([c for c in COLORS if c != color]) if kind in ("color", "both") else color
    new_shape = rng.choice([s for s in SHAPES if s != shape]) if kind in ("shape", "both") else shape
    return new_color, new_shape


def mask_words(token_ids: Sequence[int], must_mask: Sequence[int], mask_id: int, special_ids: set[int],
               rng: random.Random, share: float = 0.15) -> tuple[list[int], list[int]]:
    """MLM input and labels: the tokens at ``must_mask`` positions, and each other ordinary token with
    probability ``share``, become ``mask_id``; labels hold the original id there and -100 elsewhere."""
    inputs, labels = list(token_ids), [-100] * len(token_ids)
    for position, token in enumerate(token_ids):
        if token in special_ids:
            continue
        if position in must_mask or rng.random() < share:
            inputs[position], labels[position] = mask_id, token
    return inputs, labels
