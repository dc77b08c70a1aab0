"""Task pipelines for VLE models, with the call style of the original VLE README.

::

    vqa = VLEForVQAPipeline(model=model, device="cpu", vle_processor=processor)
    vqa(image=image, question="What is the color of the floor?", top_k=5)   # [{"answer", "score"}, ...]

* :class:`VLEForVQAPipeline` - top-k answers; batched questions; precomputed ``image_embeds`` (image cache).
* :class:`VLEForITMPipeline` - probability that a text matches an image.
* :class:`VLEForPBCPipeline` - per-patch relevance of a text, and a heatmap over the input image.
* :class:`VLEForVCRQ2APipeline` / :class:`VLEForVCRQA2RPipeline` - VCR multiple choice from an annotation.

All are ``transformers.Pipeline`` subclasses: ``preprocess`` -> ``_forward`` -> ``postprocess``, lists of
``{"image": ..., "question"/"text": ...}`` dicts and datasets work as with any pipeline. Images may be PIL
images, paths, bytes or arrays; they are read with :func:`vle.image_io.load_image`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import Pipeline

from .errors import VLEInputError
from .heatmap import paint_relevance
from .image_io import ImageSource, load_image_with_geometry
from .patch_geometry import patch_grid_map, processor_map
from .processing_vle import VLEProcessor
from .vcr_encoding import choice_texts, collate_vcr, encode_vcr_item
from .vcr_inputs import MAX_TEXT_LEN

SCORE_FUNCTIONS = ("softmax", "sigmoid")


def _is_image_like(value: Any) -> bool:
    return isinstance(value, (Image.Image, str, os.PathLike, bytes, bytearray, np.ndarray, torch.Tensor))


class _VLEPipeline(Pipeline):
    """Shared plumbing: holds the :class:`VLEProcessor`, routes the original call styles to ``Pipeline``."""

    #: name of the text argument ("question" or "text")
    text_key = "text"

    def __init__(self, vle_processor: VLEProcessor, *args: Any, **kwargs: Any):
        self.vle_processor = vle_processor
        super().__init__(*args, processor=vle_processor, **kwargs)

    def _sanitize_parameters(self, **kwargs: Any) -> tuple[dict, dict, dict]:
        return {}, {}, {}

    def _run(self, inputs: Any, kwargs: dict[str, Any]) -> Any:
        """``transformers.Pipeline.__call__`` (preprocess -> forward -> postprocess, or over a list/dataset)."""
        return Pipeline.__call__(self, inputs, **kwargs)

    def _route(self, image: Any, text: Any, kwargs: dict[str, Any]) -> Any:
        """``image=..., text=...`` (either may be a list: one batch) becomes one input dict; the original styles
        (``{"image", "<text>"}`` dicts, lists of them, datasets, generators) go to ``Pipeline`` as they are."""
        if text is not None:
            return self._run({"image": image, self.text_key: text}, kwargs)
        if image is None or _is_image_like(image) or (
            isinstance(image, (list, tuple)) and image and all(_is_image_like(item) for item in image)
        ):
            raise VLEInputError(f"Pass {self.text_key}=... together with the image.")
        return self._run(image, kwargs)

    def _texts(self, inputs: Mapping[str, Any]) -> tuple[list[str], bool]:
        """The input's text(s) as a list, and whether the caller passed a list (a batch)."""
        value = inputs.get(self.text_key)
        batched = isinstance(value, (list, tuple))
        texts = list(value) if batched else [value]
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise VLEInputError(f"The {self.text_key} is empty: type a {self.text_key} about the image.")
        return texts, batched

    def _images(self, inputs: Mapping[str, Any], count: int) -> list[Any]:
        image = inputs.get("image")
        if image is None:
            raise VLEInputError("No image was given: pass image=... (a PIL image, a path, bytes or an array).")
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        if len(images) not in (1, count):
            raise VLEInputError(f"Got {len(images)} images for {count} texts: pass one image, or one per text.")
        return images

    def encode_image(self, image: ImageSource) -> torch.Tensor:
        """The model's image-side encoding of one image, ``[1, 1 + patches, hidden]``, for ``image_embeds=``."""
        pixel_values = torch.from_numpy(self.vle_processor.preprocess_images([image]))
        with torch.no_grad(), self.device_placement():
            return self.model.encode_image(pixel_values.to(self.device)).cpu()

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        outputs = self.model(**model_inputs["model_inputs"])
        return {**{k: v for k, v in model_inputs.items() if k != "model_inputs"}, "logits": outputs.logits}


class VLEForVQAPipeline(_VLEPipeline):
    """Visual question answering: ``pipe(image=..., question=..., top_k=5)`` -> ``[{"answer", "score"}]``.

    ``score="softmax"`` (default, as the original) normalises over all answers; ``score="sigmoid"`` gives each
    answer's independent probability (the head was trained with binary cross-entropy). Lists of questions (and
    one image or one image per question) run as one batch and return one list per question. ``image_embeds``
    from :meth:`encode_image` replace the image, so several questions about one image encode it once.
    """

    text_key = "question"

    def _sanitize_parameters(self, top_k: int | None = None, score: str | None = None, **kwargs: Any):
        postprocess: dict[str, Any] = {}
        if top_k is not None:
            postprocess["top_k"] = top_k
        if score is not None:
            if score not in SCORE_FUNCTIONS:
                raise VLEInputError(f"score must be one of {SCORE_FUNCTIONS}, got {score!r}.")
            postprocess["score"] = score
        return {}, {}, postprocess

    def __call__(
        self,
        image: Any = None,
        question: str | Sequence[str] | None = None,
        *,
        image_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Answer ``question`` about ``image`` (or about precomputed ``image_embeds``)."""
        if image_embeds is not None:
            if question is None:
                raise VLEInputError("Pass question=... together with image_embeds.")
            return self._run({"image": image, "question": question, "image_embeds": image_embeds}, kwargs)
        return self._route(image, question, kwargs)

    def preprocess(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        questions, batched = self._texts(inputs)
        image_embeds = inputs.get("image_embeds")
        if image_embeds is None:
            model_inputs = dict(self.vle_processor(text=questions, images=self._images(inputs, len(questions))))
        else:
            model_inputs = dict(self.vle_processor(text=questions))
            model_inputs["image_embeds"] = _batch_image_embeds(image_embeds, len(questions))
        return {"model_inputs": model_inputs, "batched": batched}

    def postprocess(self, model_outputs: dict[str, Any], top_k: int = 5, score: str = "softmax") -> Any:
        ranked, _ = top_answers(model_outputs["logits"], self.model.config.id2label, top_k, score)
        answers = [[{"answer": answer, "score": value} for answer, value in row] for row in ranked]
        return answers if model_outputs["batched"] else answers[0]


def top_answers(
    logits: torch.Tensor, id2label: Mapping[int, str], top_k: int = 5, score: str = "softmax"
) -> tuple[list[list[tuple[str, float]]], torch.Tensor]:
    """Ranked ``(answer, score)`` lists (``top_k`` clamped to [1, labels]) and the score matrix of VQA logits.

    ``score="softmax"`` normalises over all answers (as the original VLE pipeline); ``"sigmoid"`` scores each
    answer on its own (the head was trained with BCE).
    """
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1) if score == "softmax" else torch.sigmoid(logits)
    k = max(1, min(int(top_k), probs.shape[-1]))
    values, indices = probs.topk(k, dim=-1)
    ranked = [
        [(id2label[int(i)], float(v)) for v, i in zip(row_values, row_indices)]
        for row_values, row_indices in zip(values.tolist(), indices.tolist())
    ]
    return ranked, probs


class VLEForITMPipeline(_VLEPipeline):
    """Image-text matching: ``pipe(image=..., text=...)`` -> ``{"score": P(match), "match": bool, "logit": the
    match log-odds}`` (``logit`` ranks texts where ``score`` has rounded to 1.0).

    Several texts for one image (``text=[...]``) run as one batch and return a list.
    """

    def __call__(self, image: Any = None, text: str | Sequence[str] | None = None, **kwargs: Any) -> Any:
        """Probability that ``text`` describes ``image``."""
        return self._route(image, text, kwargs)

    def preprocess(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        texts, batched = self._texts(inputs)
        model_inputs = dict(self.vle_processor(text=texts, images=self._images(inputs, len(texts))))
        return {"model_inputs": model_inputs, "batched": batched}

    def postprocess(self, model_outputs: dict[str, Any]) -> Any:
        logits = model_outputs["logits"].float()
        match = torch.softmax(logits, dim=-1)[:, 1].tolist()
        odds = (logits[:, 1] - logits[:, 0]).tolist()
        results = [{"score": p, "match": p > 0.5, "logit": z} for p, z in zip(match, odds)]
        return results if model_outputs["batched"] else results[0]


class VLEForPBCPipeline(_VLEPipeline):
    """Patch-box classification: which image patches does ``text`` talk about?

    ``pipe(image=..., text=..., alpha=0.5)`` -> ``{"relevance": [rows, cols] array of P(patch relevant),
    "heatmap": PIL image of the input's size with low-relevance areas darkened by up to ``alpha``,
    "image": the same heatmap (original key), "score": per-patch ``[P(no), P(yes)]`` (original key)}``.
    """

    def _sanitize_parameters(self, alpha: float | None = None, **kwargs: Any):
        if alpha is not None and not 0.0 <= float(alpha) <= 1.0:
            raise VLEInputError(f"alpha must be between 0 and 1, got {alpha}.")
        return {}, {}, ({} if alpha is None else {"alpha": float(alpha)})

    def __call__(self, image: Any = None, text: str | Sequence[str] | None = None, **kwargs: Any) -> Any:
        """Relevance of each image patch to ``text``, and a heatmap of it."""
        return self._route(image, text, kwargs)

    def preprocess(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        texts, batched = self._texts(inputs)
        loaded = [load_image_with_geometry(image) for image in self._images(inputs, len(texts))]
        model_inputs = dict(self.vle_processor(text=texts, images=[image for image, _ in loaded]))
        if len(loaded) == 1:
            loaded = loaded * len(texts)
        patch_size = self.model.config.vision_config.patch_size
        grid = tuple(side // patch_size for side in model_inputs["pixel_values"].shape[-2:])
        return {"model_inputs": model_inputs, "batched": batched, "loaded": loaded, "grid": grid}

    def postprocess(self, model_outputs: dict[str, Any], alpha: float = 0.5) -> Any:
        probs = torch.softmax(model_outputs["logits"].float(), dim=-1)
        patch_size = self.model.config.vision_config.patch_size
        results = []
        rows, cols = model_outputs["grid"]
        for item_probs, (image, geometry) in zip(probs, model_outputs["loaded"]):
            to_pixels, _ = processor_map(self.vle_processor.image_processor, *image.size)
            relevance = item_probs[:, 1].reshape(rows, cols).numpy()
            painted = paint_relevance(image, relevance, patch_grid_map(to_pixels, patch_size), alpha=alpha)
            heatmap = _back_to_source(painted, geometry)
            results.append({"relevance": relevance, "heatmap": heatmap, "image": heatmap, "score": item_probs.tolist()})
        return results if model_outputs["batched"] else results[0]


def _back_to_source(image: Image.Image, geometry: Any) -> Image.Image:
    """Undo load_image's padding and downscaling so the result has the source image's size."""
    left, top = geometry.offset
    width = round(geometry.source_size[0] * geometry.scale[0])
    height = round(geometry.source_size[1] * geometry.scale[1])
    if (left, top, width, height) != (0, 0, *image.size):
        image = image.crop((left, top, left + width, top + height))
    if image.size != geometry.source_size:
        image = image.resize(geometry.source_size, Image.Resampling.BICUBIC)
    return image


def _batch_image_embeds(image_embeds: Any, batch: int) -> torch.Tensor:
    embeds = torch.as_tensor(image_embeds)
    if embeds.dim() == 2:
        embeds = embeds.unsqueeze(0)
    if embeds.dim() != 3 or embeds.shape[0] not in (1, batch):
        raise VLEInputError(
            f"image_embeds of shape {tuple(embeds.shape)} do not fit {batch} question(s): pass the output of "
            "encode_image for one image ([1, tokens, hidden]) or one row per question."
        )
    return embeds.expand(batch, -1, -1) if embeds.shape[0] != batch else embeds


class _VLEForVCRPipeline(_VLEPipeline):
    """VCR multiple choice from an annotation; subclasses say which texts the choices are."""

    max_text_len = MAX_TEXT_LEN

    def __call__(
        self,
        vcr_image_root: str | os.PathLike | None = None,
        meta_inputs: Mapping[str, Any] | None = None,
        *,
        image: ImageSource | None = None,
        metadata: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """Score the choices of the VCR annotation ``meta_inputs``.

        The image is ``image``, else ``meta_inputs["img_fn"]`` under ``vcr_image_root``; the box metadata
        (``boxes`` as ``[x1, y1, x2, y2, score]``, ``width``, ``height``) is ``metadata``, else those keys of
        ``meta_inputs``, else the JSON file ``meta_inputs["metadata_fn"]`` under ``vcr_image_root``.
        Returns ``[{"score": softmax over the choices, "logits": ..., "pred": [index of the best choice]}]``
        (a one-item list, like the original).
        """
        if not isinstance(meta_inputs, Mapping):
            raise VLEInputError("Pass the VCR annotation as meta_inputs={...} (a dict in the VCR format).")
        if image is None:
            image = _vcr_path(vcr_image_root, meta_inputs, "img_fn")
        if metadata is None:
            if "boxes" in meta_inputs:
                metadata = meta_inputs
            else:
                with open(_vcr_path(vcr_image_root, meta_inputs, "metadata_fn"), encoding="utf-8") as handle:
                    metadata = json.load(handle)
        inputs = {"annotation": meta_inputs, "image": image, "metadata": metadata}
        return self._run(inputs, kwargs)

    #: ``q2a`` or ``qa2r`` (:data:`vle.vcr_encoding.VCR_TASKS`)
    vcr_task: str

    def choice_texts(self, annotation: Mapping[str, Any]) -> list:
        """The tagged choice texts of ``annotation`` (see :mod:`vle.vcr_inputs`)."""
        return choice_texts(annotation, self.vle_processor.tokenizer, self.vcr_task, self.max_text_len)

    def preprocess(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        item = encode_vcr_item(inputs["annotation"], inputs["image"], inputs["metadata"], self.vle_processor,
                               self.model.config, self.vcr_task, self.max_text_len)
        pad_id = self.vle_processor.tokenizer.pad_token_id or 0
        return {"model_inputs": collate_vcr([item], pad_id=pad_id, pad_to=self.max_text_len)}

    def postprocess(self, model_outputs: dict[str, Any]) -> list[dict[str, Any]]:
        logits = model_outputs["logits"].float()
        probs = torch.softmax(logits, dim=-1)
        return [
            {"score": row.tolist(), "logits": row_logits.tolist(), "pred": [int(row.argmax())]}
            for row, row_logits in zip(probs, logits)
        ]


class VLEForVCRQ2APipeline(_VLEForVCRPipeline):
    """VCR Q->A: which of the ``answer_choices`` answers the ``question``? (see ``__call__``)."""

    vcr_task = "q2a"


class VLEForVCRQA2RPipeline(_VLEForVCRPipeline):
    """VCR QA->R: which of the ``rationale_choices`` explains the right answer (``answer_label``)?"""

    vcr_task = "qa2r"


def _vcr_path(root: str | os.PathLike | None, annotation: Mapping[str, Any], key: str) -> str:
    if root is None or key not in annotation:
        what = "image" if key == "img_fn" else "box metadata"
        raise VLEInputError(
            f"No {what} for the VCR annotation: pass {'image' if key == 'img_fn' else 'metadata'}=... or "
            f"vcr_image_root=... with an annotation that has {key!r}."
        )
    return os.path.join(os.fspath(root), str(annotation[key]))
