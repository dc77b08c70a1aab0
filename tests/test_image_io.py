"""vle.image_io: odd, damaged and hostile images become sane RGB images or an ImageLoadError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

import odd_images as odd
from vle.errors import ImageLoadError
from vle.image_io import image_sha256, load_image, load_image_with_geometry


def pixel(image: Image.Image, x: int, y: int) -> tuple[int, int, int]:
    return image.getpixel((x, y))


def close(color, expected, tol=8) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(color, expected))


def test_rgba_is_composited_on_white():
    image = load_image(odd.rgba_png())
    assert image.mode == "RGB" and image.size == (8, 4)
    assert pixel(image, 0, 0) == odd.WHITE  # fully transparent blue -> white, not blue or black
    assert pixel(image, 6, 2) == odd.RED


def test_semi_transparent_pixels_blend_with_white():
    image = load_image(np.array([[[0, 0, 0, 128]]], dtype=np.uint8))
    assert close(pixel(image, 0, 0), (127, 127, 127), tol=2)


def test_palette_with_transparency_is_composited_on_white():
    assert Image.open(io.BytesIO(odd.palette_transparency_png())).mode == "P"
    image = load_image(odd.palette_transparency_png())
    assert pixel(image, 1, 1) == odd.WHITE
    assert pixel(image, 6, 1) == odd.RED


def test_16_bit_grey_is_scaled_to_8_bit():
    assert Image.open(io.BytesIO(odd.gray16_png())).mode.startswith("I")
    image = load_image(odd.gray16_png())
    assert image.mode == "RGB"
    assert [pixel(image, x, 0)[0] for x in range(4)] == [0, 64, 128, 255]


def test_cmyk_jpeg_becomes_rgb():
    assert Image.open(io.BytesIO(odd.cmyk_jpeg())).mode == "CMYK"
    image = load_image(odd.cmyk_jpeg())
    assert image.mode == "RGB"
    assert close(pixel(image, 8, 8), odd.RED, tol=12)


def test_exif_orientation_is_applied():
    image, geometry = load_image_with_geometry(odd.exif_rotated_jpeg())
    assert image.size == (20, 40)  # stored 40x20, displayed upright as 20x40
    assert geometry.source_size == (20, 40)
    assert close(pixel(image, 10, 3), odd.RED, tol=30)  # the red quarter is now at the top
    assert close(pixel(image, 10, 36), odd.WHITE, tol=30)


def test_one_pixel_image():
    image = load_image(odd.one_pixel_png())
    assert image.size == (1, 1) and pixel(image, 0, 0) == odd.RED


def test_extreme_strip_is_downscaled_and_padded():
    image, geometry = load_image_with_geometry(odd.strip_png(10000, 10))
    width, height = image.size
    assert width == 4096 and width / height <= 8.0
    assert geometry.source_size == (10000, 10)
    top = geometry.offset[1]
    assert top > 0 and pixel(image, 2000, top) == odd.RED  # the strip sits in the middle ...
    assert pixel(image, 2000, 0) == odd.WHITE and pixel(image, 2000, height - 1) == odd.WHITE  # ... padded


def test_tall_strip_is_padded_sideways():
    image = load_image(Image.new("RGB", (3, 300), odd.RED))
    assert image.size == (38, 300)  # ceil(300 / 8)
    assert pixel(image, 18, 150) == odd.RED and pixel(image, 0, 150) == odd.WHITE


def test_long_side_is_capped_with_aspect_kept():
    image, geometry = load_image_with_geometry(Image.new("RGB", (5000, 1000)), max_side=1000)
    assert image.size == (1000, 200)
    assert geometry.scale == pytest.approx((0.2, 0.2))


def test_large_jpeg_is_downscaled_while_decoding():
    data = odd.encode(odd.noise(3000, 1500), "JPEG", quality=80)
    image = load_image(data, max_side=500)
    assert image.size == (500, 250)


@pytest.mark.parametrize("builder, first_color", [(odd.animated_gif, odd.RED), (odd.animated_png, odd.RED)])
def test_animation_gives_first_frame(builder, first_color):
    assert getattr(Image.open(io.BytesIO(builder())), "n_frames", 1) > 1
    image = load_image(builder())
    assert pixel(image, 3, 3) == first_color


@pytest.mark.parametrize("name", sorted(odd.BROKEN))
def test_broken_inputs_raise_image_load_error(name):
    with pytest.raises(ImageLoadError) as info:
        load_image(odd.BROKEN[name]())
    assert isinstance(info.value, ValueError)
    assert len(str(info.value)) > 20


@pytest.mark.parametrize(
    "width, height, limit", [(40000, 40000, 50_000_000), (8000, 8000, 50_000_000), (3000, 3000, 1_000_000)]
)
def test_decompression_bomb_is_refused_before_decoding(monkeypatch, width, height, limit):
    def forbidden_load(self):  # pragma: no cover - fails the test if reached
        raise AssertionError("the pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden_load)
    with pytest.raises(ImageLoadError, match="downscale"):
        load_image(odd.declared_png(width, height), max_pixels=limit)


def test_pil_bomb_warning_is_turned_into_an_error():
    # above PIL's warning threshold (~89.5 MP) but below our (raised) limit: PIL's own check must still refuse
    with pytest.raises(ImageLoadError):
        load_image(odd.declared_png(9500, 9500), max_pixels=10**9)


def test_paths_and_file_objects(tmp_path):
    path = tmp_path / "red.png"
    path.write_bytes(odd.one_pixel_png())
    assert pixel(load_image(path), 0, 0) == odd.RED
    assert pixel(load_image(str(path)), 0, 0) == odd.RED
    with open(path, "rb") as handle:
        assert pixel(load_image(handle), 0, 0) == odd.RED
    with pytest.raises(ImageLoadError, match="No image file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageLoadError, match="Unsupported"):
        load_image(12345)


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.full((2, 3), 200, dtype=np.uint8), (200, 200, 200)),
        (np.full((2, 3, 3), 65535, dtype=np.uint16), (255, 255, 255)),
        (np.full((2, 3, 3), 0.5, dtype=np.float32), (128, 128, 128)),
        (np.full((2, 3, 3), 100.0), (100, 100, 100)),
        (np.full((3, 2, 5), 1.0, dtype=np.float32), (255, 255, 255)),  # channels-first
        (np.ones((2, 3, 1), dtype=bool), (255, 255, 255)),
        (np.full((2, 3, 4), 255, dtype=np.uint8), (255, 255, 255)),
    ],
)
def test_numpy_arrays(array, expected):
    image = load_image(array)
    assert image.mode == "RGB"
    assert pixel(image, 0, 0) == expected


@pytest.mark.parametrize(
    "array", [np.zeros((2, 3, 7)), np.full((2, 2), np.nan), np.zeros((0, 4, 3)), np.full((2, 2), -5)]
)
def test_unusable_arrays_raise(array):
    with pytest.raises(ImageLoadError):
        load_image(array)


def test_rgb_pil_image_is_returned_unchanged():
    image = odd.noise(30, 20)
    assert load_image(image) is image


def test_image_sha256_depends_on_pixels_and_size():
    a = odd.noise(6, 4, seed=1)
    assert image_sha256(a) == image_sha256(a.copy())
    b = a.copy()
    b.putpixel((0, 0), (0, 0, 0) if a.getpixel((0, 0)) != (0, 0, 0) else (1, 1, 1))
    assert image_sha256(b) != image_sha256(a)
    same_bytes = Image.frombytes("RGB", (4, 6), a.tobytes())  # same raw bytes, other shape
    assert image_sha256(same_bytes) != image_sha256(a)
    assert image_sha256(load_image(odd.encode(a))) == image_sha256(a)  # PNG round trip is lossless
