"""Where a source-image pixel lands on the model's patch grid.

The chain is: source image --(load_image: downscale, pad)--> loaded image --(image processor: resize, centre
crop)--> model input pixels --(/ patch_size)--> patch grid. Every step is an axis-aligned affine map, so the
whole chain is one :class:`PlaneMap`. The PBC heatmap uses it to paint patch relevance back onto the source
image; the VCR pipeline uses it to find the patches under each object box.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .image_io import ImageGeometry


@dataclass(frozen=True)
class AxisMap:
    """``v -> v * scale + offset`` on one axis."""

    scale: float = 1.0
    offset: float = 0.0

    def __call__(self, value: float) -> float:
        return value * self.scale + self.offset

    def then(self, other: AxisMap) -> AxisMap:
        """The map that applies ``self`` first, then ``other``."""
        return AxisMap(self.scale * other.scale, self.offset * other.scale + other.offset)


@dataclass(frozen=True)
class PlaneMap:
    """Independent affine maps for x and y."""

    x: AxisMap = AxisMap()
    y: AxisMap = AxisMap()

    def then(self, other: PlaneMap) -> PlaneMap:
        """The map that applies ``self`` first, then ``other``."""
        return PlaneMap(self.x.then(other.x), self.y.then(other.y))


def loading_map(geometry: ImageGeometry) -> PlaneMap:
    """Source-image pixels -> loaded-image pixels (what :func:`vle.image_io.load_image` did)."""
    return PlaneMap(AxisMap(geometry.scale[0], geometry.offset[0]), AxisMap(geometry.scale[1], geometry.offset[1]))


def _size_value(size: Any, key: str) -> int | None:
    if size is None:
        return None
    if isinstance(size, Mapping):
        return size.get(key)
    if isinstance(size, int):
        return size if key == "shortest_edge" else None
    return getattr(size, key, None)


def processor_map(image_processor: Any, width: int, height: int) -> tuple[PlaneMap, tuple[int, int]]:
    """Loaded-image pixels -> model-input pixels for a CLIP-style image processor; also the input (w, h).

    Follows the processor's resize (``shortest_edge`` or ``height``/``width``) and centre crop, with the
    same integer rounding transformers uses. Unknown resize settings fall back to stretching the whole image
    over the crop, which is what the original VLE pipelines assumed.
    """
    new_w, new_h = width, height
    if getattr(image_processor, "do_resize", False):
        size = getattr(image_processor, "size", None)
        shortest = _size_value(size, "shortest_edge")
        fixed_h, fixed_w = _size_value(size, "height"), _size_value(size, "width")
        if shortest and not _size_value(size, "longest_edge"):
            if width <= height:
                new_w, new_h = shortest, int(shortest * height / width)
            else:
                new_w, new_h = int(shortest * width / height), shortest
        elif fixed_h and fixed_w:
            new_w, new_h = fixed_w, fixed_h
        else:
            crop = getattr(image_processor, "crop_size", None)
            new_w = _size_value(crop, "width") or width
            new_h = _size_value(crop, "height") or height
    resize = PlaneMap(AxisMap(new_w / width), AxisMap(new_h / height))
    if not getattr(image_processor, "do_center_crop", False):
        return resize, (new_w, new_h)
    crop = getattr(image_processor, "crop_size", None)
    crop_w, crop_h = _size_value(crop, "width") or new_w, _size_value(crop, "height") or new_h
    left = (new_w - crop_w) // 2 if new_w >= crop_w else -math.ceil((crop_w - new_w) / 2)
    top = (new_h - crop_h) // 2 if new_h >= crop_h else -math.ceil((crop_h - new_h) / 2)
    crop_map = PlaneMap(AxisMap(1.0, -left), AxisMap(1.0, -top))
    return resize.then(crop_map), (crop_w, crop_h)


def patch_grid_map(to_model_pixels: PlaneMap, patch_size: int) -> PlaneMap:
    """Append the division by the patch size: the result maps into patch-grid units (column, row)."""
    per_patch = AxisMap(1.0 / patch_size)
    return to_model_pixels.then(PlaneMap(per_patch, per_patch))


def box_patch_ids(box: Sequence[float], to_grid: PlaneMap, grid_w: int, grid_h: int) -> list[int]:
    """Row-major, 0-based indices (CLS excluded) of the patches under ``box = (x1, y1, x2, y2, ...)``.

    Like the original VLE pipeline: the patch holding ``x1``/``y1`` up to and including the patch holding
    ``x2``/``y2``, clamped to the grid. A box entirely outside the model's view keeps its nearest patch, so
    the list is never empty (an empty one would average to NaN in the model).
    """
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    col_start, col_end = _patch_range(to_grid.x(x1), to_grid.x(x2), grid_w)
    row_start, row_end = _patch_range(to_grid.y(y1), to_grid.y(y2), grid_h)
    return [row * grid_w + col for row in range(row_start, row_end) for col in range(col_start, col_end)]


def _patch_range(start: float, end: float, count: int) -> tuple[int, int]:
    first = min(max(math.floor(start), 0), count - 1)
    stop = min(max(math.floor(end) + 1, first + 1), count)
    return first, stop
