"""Safe image loading: any user image (file, bytes, PIL, array) -> an upright 8-bit RGB PIL image.

Everything that reaches the VLE processor goes through :func:`load_image` first, so that odd inputs
(EXIF-rotated photos, transparency, 16-bit or CMYK files, animations, decompression bombs, damaged files,
10000x10 strips) either become a sane RGB image or fail with an :class:`~vle.errors.ImageLoadError` whose
message says what to do. :func:`load_image_with_geometry` also returns how the result relates to the
source image (scale and padding), which the PBC heatmap and the VCR box mapping need.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, BinaryIO, Union

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .errors import ImageLoadError

logger = logging.getLogger(__name__)

ImageSource = Union[Image.Image, str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, np.ndarray]

#: colour that transparent areas are composited on and that padding uses
BACKGROUND_RGB = (255, 255, 255)
_ALPHA_MODES = {"RGBA", "LA", "La", "RGBa", "PA"}
_ORIENTATIONS_THAT_SWAP_AXES = {5, 6, 7, 8}


@dataclass(frozen=True)
class ImageGeometry:
    """How a loaded image relates to its source: ``loaded = source * scale + offset`` on each axis.

    ``source_size`` is the (width, height) of the upright source image (after EXIF orientation, before any
    downscaling or padding); ``size`` is the (width, height) of the loaded image.
    """

    source_size: tuple[int, int]
    size: tuple[int, int]
    scale: tuple[float, float] = (1.0, 1.0)
    offset: tuple[int, int] = (0, 0)


def load_image(
    src: ImageSource, *, max_side: int = 4096, max_pixels: int = 50_000_000, max_aspect: float = 8.0,
    name: str | None = None,
) -> Image.Image:
    """Read ``src`` into an upright 8-bit RGB PIL image that is safe to preprocess.

    Accepts a PIL image, a path, bytes or a binary file object, or a numpy array (HxW, HxWx1/3/4 or
    1/3/4xHxW; uint8, uint16, bool, other integers or floats in [0, 1] / [0, 255]). EXIF orientation is
    applied; transparency is composited on white; 16-bit and float images are scaled to 8 bits; CMYK and
    other modes become RGB; animations give their first frame. Images declaring more than ``max_pixels``
    pixels are refused before decoding; a longest side above ``max_side`` is downscaled (aspect kept); an
    aspect ratio beyond ``max_aspect``:1 is padded (white) so later resizing cannot explode. An RGB PIL
    image that needs none of this is returned as is (not copied). ``name`` is how error messages call the
    image (default: its path, "the given bytes" or "the given file object").

    Raises:
        ImageLoadError: the input is not a readable image, is damaged/truncated, or is too large.
    """
    return load_image_with_geometry(src, max_side=max_side, max_pixels=max_pixels, max_aspect=max_aspect,
                                    name=name)[0]


def load_image_with_geometry(
    src: ImageSource, *, max_side: int = 4096, max_pixels: int = 50_000_000, max_aspect: float = 8.0,
    name: str | None = None,
) -> tuple[Image.Image, ImageGeometry]:
    """Like :func:`load_image`, and also return the :class:`ImageGeometry` mapping source to result."""
    if max_side < 1 or max_pixels < 1 or max_aspect < 1:
        raise ValueError("max_side and max_pixels must be >= 1 and max_aspect >= 1")
    if isinstance(src, Image.Image):
        image, source_size = _decode(src, max_side, max_pixels, owned=False)
    elif isinstance(src, np.ndarray) or _is_tensor(src):
        image, source_size = _from_array(src, max_pixels)
    else:
        image, source_size = _decode(_open(src, name), max_side, max_pixels, owned=True)
    image, scale = _limit_side(image, source_size, max_side)
    image, offset = _limit_aspect(image, max_aspect)
    return image, ImageGeometry(source_size=source_size, size=image.size, scale=scale, offset=offset)


def image_sha256(img: Image.Image) -> str:
    """Hex SHA-256 of an image's RGB pixels and size: the key of the per-image cache.

    Call it on the output of :func:`load_image`; other modes are converted to RGB first.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    digest = hashlib.sha256(f"RGB {img.width}x{img.height}\n".encode())
    digest.update(img.tobytes())
    return digest.hexdigest()


# --- opening -----------------------------------------------------------------------------------------------


def _open(src: Any, name: str | None = None) -> Image.Image:
    """Open (without decoding) an image from a path, bytes or a file object; messages call it ``name`` if given."""
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if os.path.isdir(path):
            raise ImageLoadError(f"{path!r} is a folder, not an image file: pass the path of one image in it.")
        if not os.path.isfile(path):
            raise ImageLoadError(f"No image file at {path!r}: check the path.")
        with open(path, "rb") as handle:  # read it all: no file handle stays open behind a lazy PIL image
            data = handle.read()
        origin = repr(path)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        data, origin = bytes(src), "the given bytes"
    elif hasattr(src, "read"):
        data, origin = src.read(), "the given file object"
        if not isinstance(data, (bytes, bytearray)):
            raise ImageLoadError("The file object returned text, not bytes: open the image file in binary mode ('rb').")
    else:
        raise ImageLoadError(
            f"Unsupported image input of type {type(src).__name__}: pass a PIL image, a file path, bytes, "
            "a binary file object or a numpy array."
        )
    origin = origin if name is None else repr(name)
    if not data:
        raise ImageLoadError(f"The image data in {origin} is empty: upload the image again.")
    try:
        with _bomb_warnings_as_errors():
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _too_large(None, None, None, detail=str(err)) from err
    except UnidentifiedImageError as err:
        raise ImageLoadError(
            f"{origin} is not an image file PIL can read: upload a JPEG, PNG, GIF, WebP, BMP or TIFF image."
        ) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"Could not read the image in {origin} ({err}): re-export or re-download it.") from err


def _decode(
    image: Image.Image, max_side: int, max_pixels: int, owned: bool
) -> tuple[Image.Image, tuple[int, int]]:
    """Size-check, decode, orient upright and convert to RGB; return the image and its upright source size.

    ``owned``: the image was opened here (so the JPEG decoder may be told to downscale while decoding).
    """
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageLoadError(f"The image is {width}x{height} pixels, which is empty: upload a real image.")
    if width * height > max_pixels:
        raise _too_large(width, height, max_pixels)
    if owned and image.format == "JPEG" and max(width, height) > max_side:
        # let the JPEG decoder downscale by 2/4/8 while decoding (never below the final size)
        shrink = max_side / max(width, height)
        image.draft(None, (max(1, math.ceil(width * shrink)), max(1, math.ceil(height * shrink))))
    try:
        with _bomb_warnings_as_errors():
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _too_large(width, height, max_pixels, detail=str(err)) from err
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as err:
        raise ImageLoadError(
            f"The image file is damaged or truncated ({err}): re-export or re-download it and try again."
        ) from err

    orientation = _exif_orientation(image)
    if orientation not in (None, 1):
        try:
            image = ImageOps.exif_transpose(image)
        except Exception as err:  # a broken EXIF block must not make a readable image unusable
            logger.warning("Ignoring unusable EXIF orientation %r: %s", orientation, err)
        else:
            if orientation in _ORIENTATIONS_THAT_SWAP_AXES:
                width, height = height, width
    return _to_rgb(image), (width, height)


def _exif_orientation(image: Image.Image) -> int | None:
    try:
        return image.getexif().get(ExifTags.Base.Orientation)
    except Exception:  # malformed EXIF: treat as "no orientation"
        return None


class _bomb_warnings_as_errors(warnings.catch_warnings):
    """Context manager: PIL's DecompressionBombWarning raises instead of printing."""

    def __enter__(self):
        result = super().__enter__()
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return result


def _too_large(width: int | None, height: int | None, max_pixels: int | None, detail: str = "") -> ImageLoadError:
    if width is not None and max_pixels is not None:
        what = f"{width}x{height} pixels ({width * height / 1e6:.0f} megapixels, the limit is {max_pixels / 1e6:g})"
    else:
        what = f"too large to decode safely ({detail})"
    return ImageLoadError(f"The image is {what}: downscale it (e.g. to at most 4096 pixels per side) and try again.")


# --- mode conversion ---------------------------------------------------------------------------------------


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (transparency over white, high bit depths scaled down)."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return _composite_on_background(image.convert("RGBA"))
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_scale_to_uint8(np.asarray(image)), mode="L").convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageLoadError(f"Images in colour mode {mode} are not supported: save the image as RGB.") from err


def _composite_on_background(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGB", rgba.size, BACKGROUND_RGB)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """Map an integer/float/bool array to uint8: [0,1] floats and 16-bit ranges are scaled, 8-bit kept."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageLoadError("The image array contains NaN or infinite values: pass finite pixel values.")
        peak = float(array.max()) if array.size else 0.0
        scaled = array * 255.0 if peak <= 1.0 else array
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        low, peak = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low < 0:
            raise ImageLoadError("The image array has negative pixel values: pass 0-255 or 0-65535 values.")
        if array.dtype == np.uint16 or 255 < peak <= 65535:
            return np.rint(array.astype(np.float32) / 257.0).astype(np.uint8)
        if peak <= 255:
            return array.astype(np.uint8)
        return np.rint(array.astype(np.float64) * (255.0 / peak)).astype(np.uint8)
    raise ImageLoadError(f"Image arrays of dtype {array.dtype} are not supported: pass uint8, uint16 or float pixels.")


def _is_tensor(obj: Any) -> bool:
    return hasattr(obj, "detach") and hasattr(obj, "cpu") and hasattr(obj, "numpy")


def _from_array(array: Any, max_pixels: int) -> tuple[Image.Image, tuple[int, int]]:
    """Build an RGB image from an HxW / HxWxC / CxHxW array or tensor."""
    if _is_tensor(array):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first -> channels-last
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageLoadError(
            f"Cannot read an image array of shape {array.shape}: pass HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA)."
        )
    height, width = array.shape[:2]
    if width < 1 or height < 1:
        raise ImageLoadError(f"The image array has shape {array.shape}, which is empty: pass a real image.")
    if width * height > max_pixels:
        raise _too_large(width, height, max_pixels)
    pixels = np.ascontiguousarray(_scale_to_uint8(array))
    mode = "L" if pixels.ndim == 2 else ("RGB" if pixels.shape[-1] == 3 else "RGBA")
    return _to_rgb(Image.fromarray(pixels, mode=mode)), (width, height)


# --- size limits -------------------------------------------------------------------------------------------


def _limit_side(
    image: Image.Image, source_size: tuple[int, int], max_side: int
) -> tuple[Image.Image, tuple[float, float]]:
    """Downscale so that the longest side is at most ``max_side``; return the image and the (x, y) scale."""
    src_w, src_h = source_size
    if max(src_w, src_h) <= max_side and image.size == source_size:
        return image, (1.0, 1.0)
    shrink = min(1.0, max_side / max(src_w, src_h))
    target = (max(1, round(src_w * shrink)), max(1, round(src_h * shrink)))
    if image.size != target:
        image = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image, (target[0] / src_w, target[1] / src_h)


def _limit_aspect(image: Image.Image, max_aspect: float) -> tuple[Image.Image, tuple[int, int]]:
    """Pad the short side (image centred, white) so that long/short <= ``max_aspect``; return image and offset."""
    width, height = image.size
    if width > max_aspect * height:
        canvas_size = (width, math.ceil(width / max_aspect))
    elif height > max_aspect * width:
        canvas_size = (math.ceil(height / max_aspect), height)
    else:
        return image, (0, 0)
    canvas = Image.new("RGB", canvas_size, BACKGROUND_RGB)
    offset = ((canvas_size[0] - width) // 2, (canvas_size[1] - height) // 2)
    canvas.paste(image, offset)
    return canvas, offset

