"""Caption training data: reading ``{"image": path, "caption": str}`` JSONL files, and batching
(image, caption) pairs into BLIP inputs (pixels, decoder ids starting with BOS, labels).

Images may be PIL images (in-memory pairs) or file paths; paths are opened lazily, batch by batch. In a JSONL
file a relative image path is relative to the folder of the JSONL file (not the current folder), so a file and
its images can be moved together.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from captioner.errors import CaptionerError

ImageLike = Image.Image | str | Path


@dataclass(frozen=True)
class CaptionPair:
    """One training example: an image (PIL or path), its caption, and an optional class label."""

    image: ImageLike
    caption: str
    label: str | None = None


def read_pairs_jsonl(path: str | Path) -> list[CaptionPair]:
    """Read ``{"image": path, "caption": str[, "label": str]}`` lines; relative image paths are relative to the
    folder of ``path``. CaptionerError names the line of a malformed entry or of an image file that is missing."""
    path = Path(path)
    if not path.is_file():
        raise CaptionerError(
            f'Pairs file {path} does not exist; pass a JSONL file of {{"image": path, "caption": text}} lines.'
        )
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image, caption = row["image"], row["caption"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CaptionerError(f"{path}:{n}: expected a JSON object with 'image' and 'caption' ({exc}).") from exc
        image_path = Path(image)
        if not image_path.is_absolute():
            image_path = path.parent / image_path
        if not image_path.is_file():
            raise CaptionerError(f"{path}:{n}: no image file at {image_path} (relative image paths are relative "
                                 f"to the folder of {path.name}).")
        label = row.get("label")
        pairs.append(CaptionPair(image_path, str(caption), None if label is None else str(label)))
    if not pairs:
        raise CaptionerError(f"{path} holds no pairs.")
    return pairs


def as_pairs(pairs: Sequence) -> list[CaptionPair]:
    """Normalise ``(image, caption)`` / ``(image, caption, label)`` tuples or CaptionPairs to CaptionPairs."""
    out = []
    for i, item in enumerate(pairs):
        if isinstance(item, CaptionPair):
            out.append(item)
            continue
        try:
            image, caption, *rest = item
        except (TypeError, ValueError) as exc:
            raise CaptionerError(f"pair #{i} is {item!r}; pass (image, caption) tuples.") from exc
        if not isinstance(caption, str):
            raise CaptionerError(f"pair #{i}: the caption must be a string, got {type(caption).__name__}.")
        out.append(CaptionPair(image, caption, str(rest[0]) if rest and rest[0] is not None else None))
    return out


def load_image(image: ImageLike) -> Image.Image:
    """An RGB PIL image from a PIL image or a path; CaptionerError when the file cannot be read."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    try:
        with Image.open(image) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as exc:
        raise CaptionerError(f"Cannot read image {image}: {exc}") from exc


class ListDataset(Dataset):
    """A map-style dataset over a list (the collate function does the work)."""

    def __init__(self, items: Sequence):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


class CaptionCollator:
    """Turns a list of CaptionPairs into ``pixel_values``, ``input_ids``, ``attention_mask`` and ``labels``.

    The first decoder token is BOS (what ``BlipForConditionalGeneration.generate`` feeds), padding
    and the optional conditional ``prompt`` are masked out of the labels.
    """

    def __init__(self, processor, bos_token_id: int, max_tokens: int = 40, prompt: str | None = None):
        self.processor = processor
        self.bos_token_id = bos_token_id
        self.max_tokens = max_tokens
        self.prompt = (prompt or "").strip()
        # [CLS] + prompt tokens (the trailing [SEP] of the tokenised prompt is not part of the prefix).
        self.prompt_len = len(processor.tokenizer(self.prompt).input_ids) - 1 if self.prompt else 1

    def texts(self, pairs: Sequence[CaptionPair]) -> list[str]:
        return [f"{self.prompt} {p.caption}".strip() for p in pairs]

    def __call__(self, pairs: Sequence[CaptionPair]) -> dict[str, torch.Tensor]:
        images = [load_image(p.image) for p in pairs]
        pixel_values = self.processor(images=images, return_tensors="pt").pixel_values
        enc = self.processor.tokenizer(
            self.texts(pairs), padding="longest", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        input_ids = enc.input_ids.clone()
        input_ids[:, 0] = self.bos_token_id
        labels = input_ids.masked_fill(enc.attention_mask == 0, -100)
        labels[:, : self.prompt_len] = -100
        return {
            "pixel_values": pixel_values,
            "input_ids": input_ids,
            "attention_mask": enc.attention_mask,
            "labels": labels,
        }


class LabelCollator:
    """Turns (image, class index) items into ``pixel_values`` and ``labels`` for vision pre-training."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, items: Sequence[tuple[ImageLike, int]]) -> dict[str, torch.Tensor]:
        pixel_values = self.image_processor(
            images=[load_image(im) for im, _ in items], return_tensors="pt"
        ).pixel_values
        return {"pixel_values": pixel_values, "labels": torch.tensor([y for _, y in items], dtype=torch.long)}
