"""A VCR item -> the inputs of :class:`~vle.VLEForVCRQ2A` / :class:`~vle.VLEForVCRQA2R`, and items -> one batch.

:func:`encode_vcr_item` does the work of one item: the choice texts with their object tags
(:mod:`vle.vcr_inputs`), the image preprocessed once, and per choice the patches under each named object's box
and the object token types. :func:`collate_vcr` stacks items into the keyword arguments the VCR models take (one
list entry per choice, each a batch). The VCR pipelines, fine-tuning and the evaluator all build their inputs
this way, so a model is trained on exactly what it is later asked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import VLEInputError
from .image_io import ImageSource, load_image_with_geometry
from .patch_geometry import AxisMap, PlaneMap, box_patch_ids, loading_map, patch_grid_map, processor_map
from .vcr_inputs import MAX_TEXT_LEN, encode_tagged, object_token_types, q2a_texts, qa2r_texts

#: the two VCR tasks: question -> answer, question + right answer -> rationale
VCR_TASKS = ("q2a", "qa2r")


@dataclass
class VCRChoice:
    """One choice of an item: ``[CLS] text [SEP]`` ids, per position its token type, and the objects it names
    (their extra image tokens' types and the patch indices under each one's box)."""

    input_ids: list[int]
    text_types: list[int]
    added_types: list[int]
    patch_ids: list[list[int]]


@dataclass
class VCREncodedItem:
    """The preprocessed image (``[3, H, W]``) and the encoded choices of one item."""

    pixel_values: torch.Tensor
    choices: list[VCRChoice]


def choice_texts(annotation: Mapping[str, Any], tokenizer: Any, task: str, max_text_len: int = MAX_TEXT_LEN) -> list:
    """The tagged choice texts of ``task`` (``q2a`` or ``qa2r``) for ``annotation``."""
    if task == "q2a":
        return q2a_texts(annotation, tokenizer, max_text_len)
    if task == "qa2r":
        return qa2r_texts(annotation, tokenizer, max_text_len)
    raise VLEInputError(f"Unknown VCR task {task!r}: use one of {', '.join(VCR_TASKS)}.")


def encode_vcr_item(
    annotation: Mapping[str, Any],
    image: ImageSource,
    metadata: Mapping[str, Any],
    processor: Any,
    config: Any,
    task: str,
    max_text_len: int = MAX_TEXT_LEN,
) -> VCREncodedItem:
    """Encode one VCR item for a model with ``config`` (a :class:`~vle.VLEConfig`).

    ``metadata`` holds ``boxes`` (``[x1, y1, x2, y2(, score)]`` per object) in its ``width`` x ``height`` frame
    (the image's own size when absent). A config with ``vcr_object_tokens=False`` gets no object tokens or types.
    Raises VLEInputError when a choice names more objects than the model has
    token types for, or an object without a box.
    """
    tokenizer = processor.tokenizer
    texts = choice_texts(annotation, tokenizer, task, max_text_len)
    loaded, geometry = load_image_with_geometry(image)
    pixel_values = torch.from_numpy(processor.preprocess_images([loaded]))[0]
    patch_size = config.vision_config.patch_size
    grid_h, grid_w = (side // patch_size for side in pixel_values.shape[-2:])
    box_to_grid = _box_to_grid(metadata, geometry, loaded.size, processor.image_processor, patch_size)
    boxes = metadata_boxes(metadata)
    limit = config.num_token_types
    with_objects = config.vcr_object_tokens
    choices = []
    for text in texts:
        object_ids, added_types, text_types = object_token_types(text)
        if not with_objects:  # the ablation: no object image tokens, object mentions typed as text
            object_ids, added_types, text_types = [], [], [0] * len(text_types)
        if added_types and max(added_types) >= limit:
            raise VLEInputError(
                f"A choice names {len(object_ids)} different objects; this model tells apart at most "
                f"{limit - 2}: shorten the annotation."
            )
        for obj in object_ids:
            if obj >= len(boxes):
                raise VLEInputError(f"Object {obj} has no box: the metadata lists {len(boxes)} boxes.")
        ids = encode_tagged(text, tokenizer, max_text_len)
        length = sum(ids["attention_mask"])
        choices.append(VCRChoice(
            input_ids=ids["input_ids"][:length], text_types=text_types, added_types=added_types,
            patch_ids=[box_patch_ids(boxes[obj], box_to_grid, grid_w, grid_h) for obj in object_ids],
        ))
    return VCREncodedItem(pixel_values, choices)


def collate_vcr(items: Sequence[VCREncodedItem], pad_id: int = 0, pad_to: int | None = None) -> dict[str, Any]:
    """The keyword arguments of a VCR model for ``items`` (all with the same number of choices): per choice the
    padded ``input_ids``/``attention_mask``/``token_type_ids`` (``[batch, length]``, length the longest text, or
    ``pad_to``), ``patch_ids`` and ``extend_token_type_ids``; ``pixel_values`` ``[batch, 3, H, W]``."""
    counts = {len(item.choices) for item in items}
    if len(counts) != 1:
        raise VLEInputError(f"VCR items in one batch need the same number of choices, got {sorted(counts)}.")
    batch: dict[str, Any] = {key: [] for key in ("input_ids", "attention_mask", "token_type_ids", "patch_ids",
                                                 "extend_token_type_ids")}
    for c in range(counts.pop()):
        choices = [item.choices[c] for item in items]
        length = max(pad_to or 0, max(len(choice.input_ids) for choice in choices))
        input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), length), dtype=torch.long)
        for row, choice in enumerate(choices):
            input_ids[row, : len(choice.input_ids)] = torch.tensor(choice.input_ids)
            attention_mask[row, : len(choice.input_ids)] = 1
        batch["input_ids"].append(input_ids)
        batch["attention_mask"].append(attention_mask)
        batch["token_type_ids"].append(torch.zeros_like(input_ids))
        batch["patch_ids"].append([choice.patch_ids for choice in choices])
        batch["extend_token_type_ids"].append([[choice.added_types for choice in choices],
                                               [choice.text_types for choice in choices]])
    batch["pixel_values"] = torch.stack([item.pixel_values for item in items])
    return batch


def metadata_boxes(metadata: Mapping[str, Any]) -> list[Sequence[float]]:
    """The ``boxes`` list of VCR box metadata; VLEInputError when there is none."""
    boxes = metadata.get("boxes")
    if not isinstance(boxes, (list, tuple, np.ndarray)):
        raise VLEInputError("The VCR box metadata has no 'boxes' list ([x1, y1, x2, y2, score] per object).")
    return list(boxes)


def _box_to_grid(metadata: Mapping[str, Any], geometry: Any, loaded_size: tuple[int, int], image_processor: Any,
                 patch_size: int) -> PlaneMap:
    """Box coordinates (in the metadata's width x height frame) -> patch-grid units."""
    src_w, src_h = geometry.source_size
    meta_w, meta_h = metadata.get("width", src_w), metadata.get("height", src_h)
    to_source = PlaneMap(AxisMap(src_w / float(meta_w)), AxisMap(src_h / float(meta_h)))
    to_pixels, _ = processor_map(image_processor, *loaded_size)
    return to_source.then(loading_map(geometry)).then(patch_grid_map(to_pixels, patch_size))
