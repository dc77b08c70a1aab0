"""Stage 2: the VQA stage. Caption and VLE image-side encoding of each image, cached per image hash, then VLE
fusion of each question with its image: top-k candidates, fused representation and answer scores.

The distinct images the cache cannot answer are captioned and encoded in batches; the fusion of all questions
is one batch. :func:`run_vqa` returns a :class:`VQAOutcome` (plain values, tensors on the CPU) with its own
timings, so it can run as a ZeroGPU stage; there the cache lives in the GPU worker and does not outlast it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image

from captioner import BlipCaptioner
from vle import VLEForVQA
from vle.openvino_vqa import OpenVINOVLEForVQA
from vle.pipeline_vle import top_answers
from vle.processing_vle import VLEProcessor

from ..cache import CachedImage, ImageCache
from .clock import Clock


@dataclass(frozen=True)
class VLEParts:
    """The models of the VQA stage, the cache of their image-level work and how answers are scored."""

    vqa_model: VLEForVQA | OpenVINOVLEForVQA
    processor: VLEProcessor
    captioner: BlipCaptioner | None
    cache: ImageCache
    id2label: dict[int, str]
    score_function: str = "softmax"


@dataclass(frozen=True)
class Images:
    """The images of a batch (one per question, repeats allowed), their hashes, and what to compute for them."""

    pils: Sequence[Image.Image]
    keys: Sequence[str]
    describe: bool = True
    encode: bool = True
    batch_size: int = 16


@dataclass
class VQAOutcome:
    """What the VQA stage gives, per question: ``captions`` ("" without one), ``candidates`` (top-k
    ``(answer, score)``), ``fused`` representations (L2-normalised) and ``scores`` (answer-score vectors),
    both float32 on the CPU, and ``hits`` (its image needed no model work). ``timings``: seconds per stage."""

    captions: list[str]
    candidates: list[list[tuple[str, float]]] = field(default_factory=list)
    fused: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    hits: list[bool] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _device_dtype(model: VLEForVQA | OpenVINOVLEForVQA) -> tuple[torch.device, torch.dtype]:
    if isinstance(model, torch.nn.Module):
        param = next(model.parameters())
        return param.device, param.dtype
    return model.device, model.dtype  # the OpenVINO int8 model: CPU, float32 inputs


@torch.inference_mode()
def encode_images(parts: VLEParts, images: list[Image.Image], batch_size: int) -> list[torch.Tensor]:
    """VLE image-side encodings (``[1, tokens, hidden]`` each), ``batch_size`` images at a time."""
    device, dtype = _device_dtype(parts.vqa_model)
    out: list[torch.Tensor] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        pixels = parts.processor(images=chunk, return_tensors="pt")["pixel_values"].to(device, dtype)
        embeds = parts.vqa_model.encode_image(pixels)
        out += [embeds] if len(chunk) == 1 else [e.unsqueeze(0).clone() for e in embeds]
    return out


def image_features(parts: VLEParts, images: Images, clock: Clock) -> tuple[list[CachedImage], list[bool]]:
    """Caption (when ``describe`` and there is a captioner) and encoding (when ``encode``) of each image, from
    the cache when known; the distinct others are computed in batches and cached. Returns the entries in input
    order and, per image, whether the cache held everything (nothing was computed for it)."""
    want_caption = images.describe and parts.captioner is not None
    by_key = dict(zip(images.keys, images.pils))
    cached = {k: parts.cache.get(k, need_caption=want_caption, need_embeds=images.encode) for k in by_key}
    no_caption = [k for k, e in cached.items() if want_caption and (e is None or e.caption is None)]
    no_embeds = [k for k, e in cached.items() if images.encode and (e is None or e.image_embeds is None)]
    captions: dict[str, str] = {}
    embeds: dict[str, torch.Tensor] = {}
    if no_caption:
        with clock("caption"):
            texts = parts.captioner.caption([by_key[k] for k in no_caption], batch_size=images.batch_size)
        captions = dict(zip(no_caption, texts))
    if no_embeds:
        with clock("vision_encode"):
            embeds = dict(zip(no_embeds, encode_images(parts, [by_key[k] for k in no_embeds], images.batch_size)))
    entries: dict[str, CachedImage] = {}
    for k, old in cached.items():
        entries[k] = CachedImage(
            caption=captions.get(k, old.caption if old is not None else None),
            image_embeds=embeds.get(k, old.image_embeds if old is not None else None),
        )
        if k in captions or k in embeds:
            parts.cache.update(k, caption=entries[k].caption, image_embeds=entries[k].image_embeds)
    computed = set(captions) | set(embeds)
    return [entries[k] for k in images.keys], [k not in computed for k in images.keys]


@torch.inference_mode()
def fuse(parts: VLEParts, questions: list[str], image_embeds: list[torch.Tensor], top_k: int) -> VQAOutcome:
    """Top-``top_k`` candidates, fused representations and answer scores of each (question, image encoding)
    pair, in one fusion batch (``captions``/``hits`` left empty)."""
    device, dtype = _device_dtype(parts.vqa_model)
    enc = parts.processor(text=questions, return_tensors="pt")
    inputs = {k: enc[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    embeds = torch.cat([e.to(device, dtype) for e in image_embeds])
    output = parts.vqa_model(**inputs, image_embeds=embeds)
    candidates, probs = top_answers(output.logits, parts.id2label, top_k, parts.score_function)
    fused = F.normalize(output.pooler_output.float(), dim=-1)
    return VQAOutcome([], candidates, fused.cpu(), probs.cpu())


def run_vqa(parts: VLEParts, images: Images, questions: list[str], top_k: int) -> VQAOutcome:
    """The VQA stage for ``questions[i]`` about ``images.pils[i]``: image features (cached), then fusion."""
    clock = Clock({})
    entries, hits = image_features(parts, images, clock)
    with clock("vqa_fusion"):
        outcome = fuse(parts, questions, [e.image_embeds for e in entries], top_k)
    outcome.captions = [e.caption or "" for e in entries]
    outcome.hits = hits
    outcome.timings = clock.timings
    return outcome


def caption_only(parts: VLEParts, image: Image.Image, key: str) -> str:
    """The caption of one image ("" without a captioner), from the cache when known; no vision encoding."""
    (entry,), _ = image_features(parts, Images([image], [key], encode=False), Clock({}))
    return entry.caption or ""
