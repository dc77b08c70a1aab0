"""Batched image captioning with BLIP (transformers' ``BlipForConditionalGeneration`` + ``BlipProcessor``).

Defaults (3 beams, up to 30 new tokens) suit Salesforce/blip-image-captioning-base and -large. An
optional conditional prefix (``prompt="a picture of"``) is fed to the decoder and left out of the
returned captions. BLIP's ``generate`` replaces the first prompt token by BOS and drops the last one,
so prompts are always tokenised with the processor's ``[CLS] ... [SEP]`` framing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import BlipForConditionalGeneration, BlipProcessor

from .errors import CaptionerError

_UNSET = object()


def check_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """The weights' dtype: ``dtype`` itself, float32 for ``None``; CaptionerError for anything else."""
    if dtype is None:
        return torch.float32
    if not isinstance(dtype, torch.dtype):
        raise CaptionerError(f"dtype must be a torch.dtype (e.g. torch.float16) or None for float32, got {dtype!r}.")
    return dtype


class BlipCaptioner:
    """Captions images with a BLIP model. Build it with :meth:`from_pretrained`, call :meth:`caption`."""

    def __init__(
        self,
        model: BlipForConditionalGeneration,
        processor: BlipProcessor,
        model_id: str,
        prompt: str | None = None,
        num_beams: int = 3,
        max_new_tokens: int = 30,
        min_new_tokens: int = 1,
    ):
        self.model = model.eval()
        self.processor = processor
        self.model_id = model_id
        self.prompt = prompt or None
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens

    @classmethod
    def from_pretrained(
        cls,
        id_or_path: str,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        prompt: str | None = None,
        num_beams: int = 3,
        max_new_tokens: int = 30,
        min_new_tokens: int = 1,
        local_files_only: bool = False,
    ) -> "BlipCaptioner":
        """Load a BLIP captioning model and its processor from a Hub id or a local folder, in ``dtype``
        (``None``: float32; the app picks bf16 or fp16 on CUDA) on ``device``.

        Raises CaptionerError naming the path and the fix when the files are missing or not a BLIP captioner.
        """
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = check_dtype(dtype)
        looks_local = Path(id_or_path).is_absolute() or str(id_or_path).startswith((".", "~"))
        if looks_local and not Path(id_or_path).expanduser().is_dir():
            raise CaptionerError(
                f"Captioning model folder {id_or_path} does not exist; pass a folder saved with "
                "save_pretrained (model + processor) or a Hub id such as "
                "Salesforce/blip-image-captioning-base."
            )
        try:
            processor = BlipProcessor.from_pretrained(id_or_path, local_files_only=local_files_only)
            model = BlipForConditionalGeneration.from_pretrained(
                id_or_path, dtype=torch_dtype, local_files_only=local_files_only
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CaptionerError(
                f"Could not load a BLIP captioner from {id_or_path!r}: {exc}. Pass a folder with config.json, the "
                "weights and the processor files (tokenizer + preprocessor/processor config), or a Hub id such as "
                "Salesforce/blip-image-captioning-base with network access (or already in the Hugging Face cache)."
            ) from exc
        if getattr(model.config, "model_type", None) != "blip":
            raise CaptionerError(
                f"{id_or_path!r} holds a {model.config.model_type!r} model, not BLIP; "
                "pass a BLIP image-captioning checkpoint."
            )
        return cls(
            model.to(device),
            processor,
            str(id_or_path),
            prompt=prompt,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
        )

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _prompt_ids(self, prompt: str | None, batch: int) -> torch.Tensor | None:
        """``[CLS] prompt [SEP]`` ids repeated ``batch`` times (generate turns CLS into BOS, drops SEP)."""
        if not prompt:
            return None
        ids = self.processor.tokenizer(prompt, add_special_tokens=True, return_tensors="pt").input_ids
        if ids.shape[1] < 3:  # only [CLS] [SEP]: nothing to condition on
            return None
        return ids.repeat(batch, 1).to(self.device)

    @torch.inference_mode()
    def caption(
        self,
        images: Sequence[Image.Image],
        batch_size: int = 16,
        *,
        prompt: str | None = _UNSET,
        num_beams: int | None = None,
        max_new_tokens: int | None = None,
        min_new_tokens: int | None = None,
        **generate_kwargs,
    ) -> list[str]:
        """One caption per image, generated ``batch_size`` images at a time.

        ``prompt``, ``num_beams`` (1 = greedy), ``max_new_tokens`` and ``min_new_tokens`` override the
        instance settings for this call; other keyword arguments go to ``generate``.
        """
        images = list(images)
        for i, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise CaptionerError(f"image #{i} is a {type(image).__name__}; pass PIL images.")
        if batch_size < 1:
            raise CaptionerError(f"batch_size must be >= 1, got {batch_size}.")
        prompt = self.prompt if prompt is _UNSET else prompt
        settings = {
            "num_beams": num_beams or self.num_beams,
            "max_new_tokens": max_new_tokens or self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens if min_new_tokens is None else min_new_tokens,
            **generate_kwargs,
        }
        captions: list[str] = []
        for start in range(0, len(images), batch_size):
            chunk = [im if im.mode == "RGB" else im.convert("RGB") for im in images[start : start + batch_size]]
            pixel_values = self.processor(images=chunk, return_tensors="pt").pixel_values
            pixel_values = pixel_values.to(self.device, self.model.dtype)
            input_ids = self._prompt_ids(prompt, len(chunk))
            out = self.model.generate(pixel_values=pixel_values, input_ids=input_ids, **settings)
            texts = self.processor.tokenizer.batch_decode(out, skip_special_tokens=True)
            if input_ids is not None:
                prefix = self.processor.tokenizer.decode(input_ids[0], skip_special_tokens=True)
                texts = [self._strip_prefix(t, prefix) for t in texts]
            captions += [" ".join(t.split()) for t in texts]
        return captions

    @staticmethod
    def _strip_prefix(text: str, prefix: str) -> str:
        """``text`` without the decoded prompt ``prefix`` it starts with (case- and space-insensitive)."""
        text, prefix = " ".join(text.split()), " ".join(prefix.split())
        if text.lower().startswith(prefix.lower()):
            return text[len(prefix) :].strip()
        return text
