"""VLEProcessor: the CLIP image processor and the DeBERTa-v2 tokenizer of a VLE checkpoint, as one object.

It loads the processor files of the published ``hfl/vle-*`` checkpoints unchanged (``preprocessor_config.json``
naming ``VLEProcessor``/``CLIPImageProcessor``, ``spm.model``, ``added_tokens.json``,
``special_tokens_map.json``, ``tokenizer_config.json``) and turns images + texts into model inputs. Every image
goes through :func:`vle.image_io.load_image` first. Without torchvision the image processor is the PIL
backend (``CLIPImageProcessorPil``), chosen quietly: same algorithm, same output.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np
from transformers import BatchEncoding
from transformers.processing_utils import ProcessorMixin
from transformers.utils import IMAGE_PROCESSOR_NAME

from .errors import VLEInputError
from .image_io import ImageSource, load_image

#: cap used when the tokenizer declares no real maximum length (DeBERTa-v2 has relative positions)
DEFAULT_MAX_LENGTH = 512
_SPM_FILE = "spm.model"


class VLEProcessor(ProcessorMixin):
    """Wraps a CLIP image processor and a DeBERTa-v2 tokenizer into a single VLE processor.

    ``processor(text=..., images=...)`` returns ``input_ids``, ``attention_mask``, ``token_type_ids`` and
    ``pixel_values``. ``from_pretrained``/``save_pretrained`` read the original checkpoint layout; saving writes
    today's files plus ``preprocessor_config.json`` and ``spm.model``, so older transformers can read them too.
    """

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, **kwargs: Any):
        if image_processor is None:
            raise VLEInputError("VLEProcessor needs an image_processor (a CLIPImageProcessor).")
        if tokenizer is None:
            raise VLEInputError("VLEProcessor needs a tokenizer (a DebertaV2Tokenizer).")
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: ImageSource | Sequence[ImageSource] | None = None,
        return_tensors: str | None = "pt",
        padding: bool | str = True,
        truncation: bool | str = True,
        max_length: int | None = None,
        images_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> BatchEncoding:
        """Tokenize ``text`` and preprocess ``images`` into one batch.

        The result is always a batch (a single text or image gives a batch of one). Texts are padded to the
        longest (``padding=True``) and truncated to ``max_length`` (default: the tokenizer's
        ``model_max_length``, at most 512). One image with several texts (or one text with several images) is
        broadcast to the batch; otherwise the counts must match. ``images_kwargs`` go to the image processor,
        other keyword arguments to the tokenizer.

        Raises:
            VLEInputError: neither text nor images, or batch sizes that do not match.
            ImageLoadError: an image could not be read.
        """
        if text is None and images is None:
            raise VLEInputError("Pass text=..., images=... or both to the VLE processor.")
        texts = [text] if isinstance(text, str) else (None if text is None else list(text))
        image_list = None if images is None else (list(images) if _is_image_sequence(images) else [images])
        if texts is not None and image_list is not None:
            texts, image_list = _broadcast(texts, image_list)

        data: dict[str, Any] = {}
        if texts is not None:
            encoding = self.tokenizer(
                texts,
                padding=padding,
                truncation=truncation,
                max_length=max_length if max_length is not None else self.default_max_length,
                **kwargs,
            )
            data.update(encoding)
        if image_list is not None:
            data["pixel_values"] = self.preprocess_images(image_list, **(images_kwargs or {}))
        return BatchEncoding(data=data, tensor_type=return_tensors)

    def preprocess_images(self, images: Sequence[ImageSource], **images_kwargs: Any) -> np.ndarray:
        """Load each image safely, run the image processor once per distinct image; ``[n, 3, H, W]`` float32."""
        distinct: dict[int, int] = {}
        unique_images = []
        for image in images:
            if id(image) not in distinct:
                distinct[id(image)] = len(unique_images)
                unique_images.append(load_image(image))
        features = self.image_processor(unique_images, return_tensors="np", **images_kwargs)
        pixels = np.asarray(features["pixel_values"], dtype=np.float32)
        return pixels[[distinct[id(image)] for image in images]]

    @property
    def default_max_length(self) -> int:
        """``max_length`` used when none is given: the tokenizer's limit, capped at 512."""
        limit = getattr(self.tokenizer, "model_max_length", None) or DEFAULT_MAX_LENGTH
        return DEFAULT_MAX_LENGTH if limit > 10**6 else int(limit)

    @property
    def model_input_names(self) -> list[str]:
        return list(dict.fromkeys(self.tokenizer.model_input_names + self.image_processor.model_input_names))

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> list[str]:
        """Save like any transformers processor, plus the original layout's ``preprocessor_config.json`` and
        ``spm.model`` (so the directory also loads with the transformers 4.x VLE code)."""
        files = super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        legacy_config = self.image_processor.to_dict()
        legacy_config["processor_class"] = type(self).__name__
        legacy_path = os.path.join(save_directory, IMAGE_PROCESSOR_NAME)
        with open(legacy_path, "w", encoding="utf-8") as handle:
            json.dump(legacy_config, handle, indent=2, sort_keys=True)
            handle.write("\n")
        files = list(files) + [legacy_path]
        vocab_file = getattr(self.tokenizer, "vocab_file", None)
        target = os.path.join(save_directory, _SPM_FILE)
        if vocab_file and os.path.isfile(vocab_file) and os.path.abspath(vocab_file) != os.path.abspath(target):
            shutil.copyfile(vocab_file, target)
            files.append(target)
        return files


def _is_image_sequence(images: Any) -> bool:
    return isinstance(images, (list, tuple))


def _broadcast(texts: list[str], images: list[Any]) -> tuple[list[str], list[Any]]:
    if len(texts) == len(images):
        return texts, images
    if len(images) == 1:
        return texts, images * len(texts)
    if len(texts) == 1:
        return texts * len(images), images
    raise VLEInputError(
        f"Got {len(texts)} texts and {len(images)} images: pass one image per text, or a single image (or text) "
        "to pair with all of them."
    )
