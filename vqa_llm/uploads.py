"""What a web request may hand the app as an image: a file a visitor uploaded, or an inline ``data:`` URL.

Gradio checks that a file object names an uploaded file only when the object says it is one (its ``meta``);
any other ``{"path": ...}`` reaches the app as sent. :class:`UploadPolicy` is the app's own check, made for
every image input of every endpoint before anything is opened:

* a path is read only when it lies inside one of the policy's folders (Gradio's upload folder, the app's
  example images), judged first from the path's text and then with links resolved. Every other path gets the
  one message :data:`NOT_UPLOADED` before it is touched, so the reply never says whether it exists or what it
  is;
* a ``data:`` URL holding more than ``max_bytes`` is refused from its length, before it is decoded;
* the bytes are then opened once with :func:`vle.image_io.load_image`: the pixel count checked from the header
  before any decoding, the image downscaled to ``max_side`` (the models use far less; the relevance heatmap
  comes back at that size), errors naming the file as the visitor named it, never where the server put it.

The result is an RGB PIL image that the pipeline and the VLE tasks use as it is. :class:`RequestSizeLimit` keeps
a request body that could not hold an image under the limit from being read into memory at all.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from collections.abc import Iterable, Mapping
from typing import Any

from PIL import Image

from project_base.memory import release_freed_memory
from vle.errors import ImageLoadError
from vle.image_io import load_image_with_geometry

from .errors import BadImageError

#: the one reply to a path that names no uploaded file (outside the folders, missing, a folder, not a file)
NOT_UPLOADED = ("No uploaded image was found for this request: upload the image first (in the page, or with a POST "
                "to the app's gradio_api/upload) and send the file object that the upload returned.")
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
#: longest side an image is reduced to on entry: the models see 384-576 px, the heatmap comes back at this size
DEFAULT_MAX_SIDE = 1024
DEFAULT_MAX_PIXELS = 50_000_000
#: images with more source pixels than this give their decoding memory back to the system when done
TRIM_AFTER_PIXELS = 4_000_000


def _megabytes(size: int) -> str:
    """A size for people: ``1.5 MB``, or ``12 KB`` below 0.1 MB."""
    return f"{size / 1024 / 1024:.1f} MB" if size >= 0.1 * 1024 * 1024 else f"{max(1, round(size / 1024))} KB"


def _within(path: str, folders: Iterable[str]) -> bool:
    """Whether the absolute ``path`` is one of ``folders`` or lies below one (compared as text)."""
    return any(path == folder or path.startswith(folder.rstrip(os.sep) + os.sep) for folder in folders)


class UploadPolicy:
    """Where uploaded images may be read from and how large they may be (see the module docstring).

    ``roots``: the folders whose files may be read; ``max_bytes``: the largest file or inline image;
    ``max_side``: the longest side an image is reduced to; ``max_pixels``: the largest pixel count a header may
    declare.
    """

    def __init__(self, roots: Iterable[str | os.PathLike], max_bytes: int = DEFAULT_MAX_BYTES,
                 max_side: int = DEFAULT_MAX_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.roots = tuple(os.path.abspath(root) for root in roots)
        self.max_bytes, self.max_side, self.max_pixels = int(max_bytes), int(max_side), int(max_pixels)
        self._real_roots = tuple(os.path.realpath(root) for root in self.roots)

    @property
    def request_limit(self) -> int:
        """The largest request body that can carry an image within ``max_bytes``: base64 (4/3 of the bytes) and
        64 KiB for the other inputs."""
        return self.max_bytes * 4 // 3 + 64 * 1024

    def __repr__(self) -> str:
        return f"UploadPolicy(roots={self.roots}, max_bytes={self.max_bytes}, max_side={self.max_side})"

    def open(self, value: Any) -> Image.Image | None:
        """The image a request sent, read under this policy; ``None`` when it sent none.

        ``value`` is a Gradio file object (``{"path": ..., "url": ..., "orig_name": ...}``, ``meta`` or not) or a
        path. Raises BadImageError: :data:`NOT_UPLOADED` for a path outside the policy's folders, else a message
        naming the visitor's file and what to do.
        """
        if value is None:
            return None
        if isinstance(value, (str, os.PathLike)):
            value = {"path": os.fspath(value)}
        if not isinstance(value, Mapping):
            raise BadImageError(f"An image must be sent as a file object, not {type(value).__name__}: upload the "
                                "image and send the file object that the upload returned.")
        url, path, name = value.get("url"), value.get("path"), value.get("orig_name")
        if isinstance(url, str) and url.startswith("data:"):
            data, shown = self._inline_bytes(url), "the inline image"
        elif isinstance(path, str) and path:
            data, shown = self._uploaded_bytes(path), os.path.basename(path)
        else:
            return None
        try:
            image, geometry = load_image_with_geometry(data, max_side=self.max_side, max_pixels=self.max_pixels,
                                                       name=name if isinstance(name, str) and name else shown)
        except ImageLoadError as exc:
            raise BadImageError(str(exc)) from exc
        if geometry.source_size[0] * geometry.source_size[1] > TRIM_AFTER_PIXELS:
            release_freed_memory()  # the full-size pixels are gone: give their memory back now
        return image

    def _uploaded_bytes(self, path: str) -> bytes:
        """The bytes of an uploaded file; NOT_UPLOADED unless it is a regular file inside the folders."""
        try:
            lexical = os.path.abspath(path)  # ".." folded from the text alone, nothing on disk looked at yet
            if not _within(lexical, self.roots + self._real_roots):
                raise BadImageError(NOT_UPLOADED)
            real = os.path.realpath(lexical)  # a link inside a folder must not lead out of it
            info = os.stat(real) if _within(real, self._real_roots) else None
        except (OSError, ValueError):  # unreadable, a NUL in the path; BadImageError is a ValueError too
            raise BadImageError(NOT_UPLOADED) from None
        if info is None or not stat.S_ISREG(info.st_mode):
            raise BadImageError(NOT_UPLOADED)
        if info.st_size > self.max_bytes:
            raise BadImageError(f"{os.path.basename(path)} is {_megabytes(info.st_size)}; the limit is "
                                f"{_megabytes(self.max_bytes)}: upload a smaller image.")
        try:
            with open(real, "rb") as handle:
                return handle.read(self.max_bytes + 1)
        except OSError:  # removed or made unreadable since the check
            raise BadImageError(NOT_UPLOADED) from None

    def _inline_bytes(self, url: str) -> bytes:
        """The bytes of a ``data:[type][;base64],DATA`` URL, refused from its length when too large."""
        header, comma, payload = url.partition(",")
        if not comma or not header.endswith(";base64"):
            raise BadImageError("An inline image must be a base64 data: URL (data:image/png;base64,...): or upload "
                                "the image file instead.")
        size = len(payload) * 3 // 4  # what it decodes to, known before decoding
        if size > self.max_bytes:
            raise BadImageError(f"The inline image is {_megabytes(size)}; the limit is {_megabytes(self.max_bytes)}: "
                                "send a smaller image.")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise BadImageError("The inline image is not valid base64: encode the image file again, or upload "
                                "it instead.") from None


class RequestSizeLimit:
    """ASGI middleware: a request body larger than ``max_bytes`` is answered ``413`` before the app sees it.

    Gradio reads a JSON request whole before it looks at it, so without this an inline image (or any value) of
    any size would sit in memory, however soon it is refused. The body is read up to the limit and handed on
    in one piece. Paths ending in one of ``exempt`` pass as they are: Gradio's upload route has its own limit.
    """

    def __init__(self, app: Any, max_bytes: int, exempt: tuple[str, ...] = ("/upload",)):
        self.app, self.max_bytes, self.exempt = app, int(max_bytes), exempt

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH") \
                or scope.get("path", "").rstrip("/").endswith(self.exempt):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._refuse(send)
                return
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        message = (f"The request is larger than {_megabytes(self.max_bytes)}: send images as uploads of at most "
                   f"the app's image size limit.").encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(message)).encode())]})
        await send({"type": "http.response.body", "body": message})
