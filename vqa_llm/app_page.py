"""The app page's Blocks and the upload policy of its image inputs.

:class:`DemoPage` gives a message to requests whose inputs Gradio itself refuses before an event function
runs; :func:`default_upload_policy` says which files the page's events may read, up to which size.
"""

from __future__ import annotations

import argparse
import inspect
import re
from typing import Any

import gradio as gr
from gradio.exceptions import InvalidPathError
from gradio.utils import get_upload_folder
from gradio_client.utils import is_http_url_like

from .app_examples import EXAMPLES_DIR
from .uploads import NOT_UPLOADED, UploadPolicy

DEFAULT_MAX_FILE_SIZE = "10mb"
_FILE_SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024 ** 2, "gb": 1024 ** 3}


def file_size(text: str | int) -> int:
    """A size such as ``10mb``, ``500kb`` or ``2048`` (bytes) in bytes (units of 1024, as Gradio counts them)."""
    match = re.fullmatch(r"(\d+)\s*([kmg]?b)?", str(text).strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: write e.g. 500kb or 10mb.")
    return int(match.group(1)) * _FILE_SIZE_UNITS[match.group(2) or "b"]


def default_upload_policy(max_file_size: int = file_size(DEFAULT_MAX_FILE_SIZE)) -> UploadPolicy:
    """Images may be read from Gradio's upload folder and the example images, up to ``max_file_size`` bytes."""
    return UploadPolicy([get_upload_folder(), EXAMPLES_DIR], max_bytes=max_file_size)


class DemoPage(gr.Blocks):
    """The page's Blocks. A request whose inputs Gradio itself refuses before an event function runs gets a
    message saying what was wrong, instead of an empty error: too few values, a file object naming a file
    nobody uploaded (the same reply as :class:`~vqa_llm.uploads.UploadPolicy` gives), a value of the wrong
    shape. ``uploads`` is the policy of the page's image inputs (its size limit is the server's upload limit).
    """

    def __init__(self, uploads: UploadPolicy, **kwargs: Any):
        super().__init__(**kwargs)
        self.uploads = uploads

    async def preprocess_data(self, block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False):
        if any(isinstance(value, dict) and is_http_url_like(str(value.get("path", ""))) for value in inputs):
            raise gr.Error(NOT_UPLOADED)  # Gradio would fetch it: a URL is not an upload
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except InvalidPathError as exc:
            raise gr.Error(NOT_UPLOADED) from exc
        except Exception as exc:
            names = list(inspect.signature(block_fn.fn).parameters)[:len(block_fn.inputs)]
            if len(inputs) < len(block_fn.inputs):
                raise gr.Error(f"This endpoint takes {len(block_fn.inputs)} inputs ({', '.join(names)}); the "
                               f"request sent {len(inputs)}.") from exc
            raise gr.Error(f"An input of the request has the wrong form ({type(exc).__name__}): send the inputs "
                           f"{', '.join(names)} as /gradio_api/info describes them.") from exc
