"""Paint per-patch relevance (VLE's patch-box classification) over the source image, vectorised.

Look of the original VLE demo: the most relevant patches stay as they are, the others are darkened, the
least relevant ones (and anything the model did not see, outside its centre crop) by ``alpha``. Relevance is
rescaled between its maximum and a floor 40 % of the way up from its minimum, as the original did.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .patch_geometry import PlaneMap

#: the original demo put the colour-map floor 2/5 of the way from the minimum to the maximum
_FLOOR_FRACTION = 0.4


def darkness_grid(relevance: np.ndarray, alpha: float) -> np.ndarray:
    """Per-patch opacity (0..1) of the dark overlay: ``alpha`` for the least relevant patches, 0 for the most."""
    relevance = np.asarray(relevance, dtype=np.float64)
    low, high = float(relevance.min()), float(relevance.max())
    floor = low + _FLOOR_FRACTION * (high - low)
    if high - floor <= 1e-12:
        return np.zeros_like(relevance)
    level = np.clip((relevance - floor) / (high - floor), 0.0, 1.0)
    return alpha * (1.0 - level)


def paint_relevance(
    image: Image.Image, relevance: np.ndarray, source_to_grid: PlaneMap, alpha: float = 0.5
) -> Image.Image:
    """Return a copy of ``image`` (RGB, same size) darkened where ``relevance`` (``[rows, cols]``) is low.

    ``source_to_grid`` maps ``image`` pixel coordinates to patch-grid units (see
    :mod:`vle.patch_geometry`); pixels that fall outside the grid get the full ``alpha``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    image = image.convert("RGB") if image.mode != "RGB" else image
    opacity = np.rint(darkness_grid(relevance, alpha) * 255).astype(np.uint8)
    grid = Image.fromarray(np.ascontiguousarray(opacity), mode="L")
    # Image.transform samples the grid at (a*x + b*y + c, d*x + e*y + f) for each output pixel (x, y)
    x_map, y_map = source_to_grid.x, source_to_grid.y
    coefficients = (x_map.scale, 0.0, x_map.offset, 0.0, y_map.scale, y_map.offset)
    mask = grid.transform(
        image.size, Image.Transform.AFFINE, coefficients, resample=Image.Resampling.NEAREST,
        fillcolor=int(round(alpha * 255)),
    )
    return Image.composite(Image.new("RGB", image.size, (0, 0, 0)), image, mask)
