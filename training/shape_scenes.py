"""What an easy-VQA image shows, read from its pixels: the shape's mask, its colour and its kind.

An easy-VQA image is one shape, filled with one of eight pure colours, drawn on a plain light background.
:func:`read_scene` finds the shape's pixels (those that differ clearly from the background colour, read from
the corner), names its colour (the palette colour nearest to its most common pixel) and its kind (from the share
of its bounding box it fills: a triangle about half, a circle about pi/4, a rectangle all of it), so every image
of both splits gets labels, not only those whose questions happen to name both. :func:`patch_labels` says which
patches of the VLE's patch grid the shape covers (the PBC labels of the pretraining checkpoint).

    >>> scene = read_scene("easy_vqa/data/test/images/0.png")
    >>> scene.caption, patch_labels(scene.mask, 8, 8).sum()
    ('a red triangle', 2)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vle.vqa_data import EASY_VQA_COLORS, EASY_VQA_SHAPES

#: the RGB fill of each easy-VQA colour name
COLOR_RGB = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "black": (0, 0, 0),
    "gray": (128, 128, 128), "teal": (0, 128, 128), "brown": (165, 42, 42), "yellow": (255, 255, 0),
}
assert set(COLOR_RGB) == set(EASY_VQA_COLORS)
SHAPES = tuple(sorted(EASY_VQA_SHAPES))
#: a pixel belongs to the shape when one channel differs from the background by more than this
SHAPE_PIXEL_DIFF = 60
#: share of the bounding box a shape fills: triangles 0.50-0.70, circles 0.74-0.91, rectangles 0.97-1 (measured
#: on every train and test image whose questions name the shape)
TRIANGLE_MAX_FILL = 0.72
CIRCLE_MAX_FILL = 0.94
#: a patch is the shape's when at least this share of its pixels are
PATCH_SHARE = 0.25


class SceneError(ValueError):
    """The image holds no shape that stands out from its background."""


@dataclass(frozen=True)
class Scene:
    """One easy-VQA image's content: ``mask`` is ``[height, width]``, True on the shape's pixels."""

    color: str
    shape: str
    mask: np.ndarray

    @property
    def caption(self) -> str:
        """``"a red triangle"``."""
        return f"a {self.color} {self.shape}"


def read_scene(image: str | Path | Image.Image) -> Scene:
    """The colour, kind and pixel mask of the shape in an easy-VQA image (a path or a PIL image)."""
    picture = image if isinstance(image, Image.Image) else Image.open(image)
    pixels = np.asarray(picture.convert("RGB")).astype(np.int16)
    background = pixels[0, 0]
    mask = np.abs(pixels - background).max(axis=-1) > SHAPE_PIXEL_DIFF
    if not mask.any():
        raise SceneError("No shape stands out from the background of this image.")
    fill = Counter(map(tuple, pixels[mask].tolist())).most_common(1)[0][0]
    color = min(COLOR_RGB, key=lambda name: sum((a - b) ** 2 for a, b in zip(COLOR_RGB[name], fill)))
    rows, cols = np.nonzero(mask)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    share = mask.sum() / box
    shape = "triangle" if share < TRIANGLE_MAX_FILL else "circle" if share < CIRCLE_MAX_FILL else "rectangle"
    return Scene(color, shape, mask)


def patch_labels(mask: np.ndarray, rows: int, cols: int, min_share: float = PATCH_SHARE) -> np.ndarray:
    """``[rows, cols]`` 0/1: the patches at least ``min_share`` covered by the mask (the most covered one when
    none is, so that a tiny shape still has its patch). The image is cut into equal blocks, as the VLE's
    processor and patch grid do for square images."""
    height, width = mask.shape
    ys = np.linspace(0, height, rows + 1).round().astype(int)
    xs = np.linspace(0, width, cols + 1).round().astype(int)
    share = np.array([[mask[ys[r]:ys[r + 1], xs[c]:xs[c + 1]].mean() for c in range(cols)] for r in range(rows)])
    labels = (share >= min_share).astype(np.int64)
    if not labels.any():
        labels[np.unravel_index(share.argmax(), share.shape)] = 1
    return labels
