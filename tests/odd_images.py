"""Builders of awkward image files for the image-loading and processor tests (all made in memory).

Each builder returns the encoded file as bytes. :data:`READABLE` lists those that must load; :data:`BROKEN`
those that must raise ``ImageLoadError``.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

RED, WHITE = (255, 0, 0), (255, 255, 255)
EXIF_ORIENTATION = 0x0112


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8))


def rgba_png() -> bytes:
    """Left half fully transparent, right half opaque red."""
    image = Image.new("RGBA", (8, 4), (0, 0, 255, 0))
    image.paste((255, 0, 0, 255), (4, 0, 8, 4))
    return encode(image)


def palette_transparency_png() -> bytes:
    """Palette image: index 0 (black) is transparent, index 1 is red; left half index 0."""
    image = Image.new("P", (8, 4), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    image.paste(0, (0, 0, 4, 4))
    return encode(image, transparency=0)


def gray16_png() -> bytes:
    """16-bit greyscale ramp 0, 257*k..., 65535."""
    values = np.array([[0, 257 * 64, 257 * 128, 65535]], dtype=np.uint16)
    return encode(Image.fromarray(values))


def cmyk_jpeg() -> bytes:
    """CMYK JPEG that is pure red (C=0, M=255, Y=255, K=0)."""
    return encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)


def exif_rotated_jpeg() -> bytes:
    """Stored 40x20 with a red left quarter; EXIF orientation 6 (display rotated 90 degrees clockwise).

    Shown upright it is 20x40 with the red part at the top.
    """
    image = Image.new("RGB", (40, 20), WHITE)
    image.paste(RED, (0, 0, 10, 20))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return encode(image, "JPEG", exif=exif.tobytes(), quality=95)


def one_pixel_png() -> bytes:
    return encode(Image.new("RGB", (1, 1), RED))


def strip_png(width: int = 10000, height: int = 10) -> bytes:
    return encode(Image.new("RGB", (width, height), RED))


def animated_gif() -> bytes:
    """Three frames: red, green, blue."""
    frames = []
    for index in range(3):
        frame = Image.new("P", (6, 6), index)
        frame.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0, 0, 0] * 253)
        frames.append(frame)
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def animated_png() -> bytes:
    """APNG with two frames: red, then blue."""
    frames = [Image.new("RGB", (6, 6), RED), Image.new("RGB", (6, 6), (0, 0, 255))]
    return encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50)


def truncated_png() -> bytes:
    data = encode(noise(64, 64))
    return data[: len(data) // 2]


def truncated_jpeg() -> bytes:
    data = encode(noise(64, 64), "JPEG", quality=90)
    return data[: len(data) // 2]


def not_an_image() -> bytes:
    return b"%PDF-1.4 this is not an image at all\n" * 4


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def declared_png(width: int, height: int, with_data: bool = True) -> bytes:
    """A PNG header declaring ``width`` x ``height`` RGB pixels, with (optionally) a tiny IDAT: bytes, not pixels."""
    header = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    if not with_data:
        return header
    return header + _png_chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _png_chunk(b"IEND", b"")



READABLE = {
    "rgba": rgba_png,
    "palette_transparency": palette_transparency_png,
    "gray16": gray16_png,
    "cmyk_jpeg": cmyk_jpeg,
    "exif_rotated": exif_rotated_jpeg,
    "one_pixel": one_pixel_png,
    "strip_10000x10": strip_png,
    "animated_gif": animated_gif,
    "animated_png": animated_png,
}
BROKEN = {
    "truncated_png": truncated_png,
    "truncated_jpeg": truncated_jpeg,
    "not_an_image": not_an_image,
    "bomb_40000x40000": lambda: declared_png(40000, 40000),
    "bomb_header_only": lambda: declared_png(40000, 40000, with_data=False),
    "empty": lambda: b"",
}
