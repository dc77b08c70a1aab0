"""The app's image intake (vqa_llm.uploads) on its own: which paths it reads, how it reads inline images, and
that a refused path is never looked at on disk. The same rules over HTTP: tests/test_api_security.py."""

from __future__ import annotations

import base64
import builtins
import os

import pytest
from PIL import Image

import odd_images
from vqa_llm.errors import BadImageError
from vqa_llm.uploads import NOT_UPLOADED, UploadPolicy


@pytest.fixture
def folders(tmp_path):
    """An upload folder holding a picture, and beside it a folder the server keeps to itself."""
    uploads, private = tmp_path / "uploads", tmp_path / "private"
    (uploads / "abc").mkdir(parents=True)
    private.mkdir()
    odd_images.noise(40, 20).save(uploads / "abc" / "mine.png")
    odd_images.noise(16, 16).save(private / "secret.png")
    os.symlink(private / "secret.png", uploads / "abc" / "link.png")  # a link leading out of the folder
    os.symlink(private, uploads / "out")
    return uploads, private


REFUSED = {
    "outside": lambda u, p: str(p / "secret.png"),
    "dot-dot out of the folder": lambda u, p: f"{u}/abc/../../private/secret.png",
    "link to a file outside": lambda u, p: str(u / "abc" / "link.png"),
    "link to a folder outside": lambda u, p: str(u / "out" / "secret.png"),
    "the upload folder itself": lambda u, p: str(u),
    "a folder inside": lambda u, p: str(u / "abc"),
    "missing inside": lambda u, p: str(u / "abc" / "gone.png"),
    "a NUL in the path": lambda u, p: f"{u}/abc/mine.png\0.png",
    "relative": lambda u, p: "abc/mine.png",
    "a prefix of the folder's name": lambda u, p: f"{u}-evil/x.png",
}


@pytest.mark.parametrize("case", REFUSED)
@pytest.mark.parametrize("with_meta", [False, True])
def test_paths_outside_the_upload_folder_get_one_reply(folders, case, with_meta):
    uploads, private = folders
    value = {"path": REFUSED[case](uploads, private)}
    if with_meta:
        value["meta"] = {"_type": "gradio.FileData"}
    with pytest.raises(BadImageError) as raised:
        UploadPolicy([uploads]).open(value)
    assert str(raised.value) == NOT_UPLOADED


def test_a_path_outside_is_refused_without_looking_at_it(folders, monkeypatch):
    uploads, private = folders
    looked = []
    for name in ("stat", "lstat", "open", "listdir", "readlink"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, _real=real, _name=name, **k: looked.append((_name, a)) or
                            _real(*a, **k))
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda *a, **k: looked.append(("open", a)) or real_open(*a, **k))
    with pytest.raises(BadImageError):
        UploadPolicy([uploads]).open({"path": str(private / "secret.png")})
    assert not [call for call in looked if "private" in str(call)]


def test_an_uploaded_file_is_read_and_reduced_once(folders):
    uploads, _ = folders
    image = UploadPolicy([uploads], max_side=20).open({"path": str(uploads / "abc" / "mine.png")})
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (20, 10)
    assert UploadPolicy([uploads]).open(str(uploads / "abc" / "mine.png")).size == (40, 20)  # a plain path too
    assert UploadPolicy([uploads]).open(None) is None and UploadPolicy([uploads]).open({"path": None}) is None


def test_sizes_are_checked_before_reading(folders):
    uploads, _ = folders
    big = uploads / "abc" / "big.png"
    big.write_bytes(odd_images.encode(odd_images.noise(64, 64)))
    with pytest.raises(BadImageError, match=r"big.png is 12 KB; the limit is 1 KB: upload a smaller image"):
        UploadPolicy([uploads], max_bytes=1000).open({"path": str(big)})
    bomb = uploads / "abc" / "bomb.png"
    bomb.write_bytes(odd_images.declared_png(9000, 9000))
    with pytest.raises(BadImageError, match=r"The image is 9000x9000 pixels \(81 megapixels, the limit is 50\)"):
        UploadPolicy([uploads], max_pixels=50_000_000).open({"path": str(bomb), "orig_name": "holiday.png"})


def test_inline_images(folders):
    uploads, _ = folders
    png = odd_images.encode(odd_images.noise(30, 10))
    policy = UploadPolicy([uploads], max_bytes=len(png))
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    assert policy.open({"url": url}).size == (30, 10)
    with pytest.raises(BadImageError, match="The inline image is .* the limit is"):
        UploadPolicy([uploads], max_bytes=len(png) - 10).open({"url": url})
    with pytest.raises(BadImageError, match="must be a base64 data: URL"):
        policy.open({"url": "data:image/png,abc"})
    with pytest.raises(BadImageError, match="not valid base64"):
        policy.open({"url": "data:image/png;base64,@@@@"})
    with pytest.raises(BadImageError, match="'the inline image' is not an image file"):
        policy.open({"url": "data:image/png;base64," + base64.b64encode(b"hello").decode()})
    with pytest.raises(BadImageError, match="'cat.png' is not an image file"):
        policy.open({"url": "data:image/png;base64," + base64.b64encode(b"hello").decode(), "orig_name": "cat.png"})


@pytest.mark.parametrize("value", [5, ["a"], b"bytes"])
def test_values_that_are_no_file_object(folders, value):
    with pytest.raises(BadImageError, match="must be sent as a file object"):
        UploadPolicy([folders[0]]).open(value)


def test_the_request_limit_fits_an_inline_image_of_the_size_limit():
    policy = UploadPolicy(["/nowhere"], max_bytes=3 * 1024 * 1024)
    encoded = len(base64.b64encode(b"\0" * policy.max_bytes))
    assert encoded < policy.request_limit < encoded + 100 * 1024
