"""Tensors kept within a byte budget for VQA training: the preprocessed images of a data process and, with a frozen
vision tower, the tower's outputs per image on the device (:class:`FrozenVisionCache`)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from vle.modeling_vle import VLEForVQA


class TensorLRU:
    """Tensors by key within a byte budget: the least recently used go first (``max_bytes`` 0 keeps nothing)."""

    def __init__(self, max_bytes: float):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[Any, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Any) -> bool:
        return key in self._items

    def get(self, key: Any) -> torch.Tensor | None:
        tensor = self._items.get(key)
        if tensor is not None:
            self._items.move_to_end(key)
        return tensor

    def put(self, key: Any, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if size > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old.numel() * old.element_size()
        self._items[key] = tensor
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self.bytes -= dropped.numel() * dropped.element_size()



class FrozenVisionCache:
    """With a frozen vision tower, each image's CLIP output is computed once and reused while it stays in a
    cache of ``max_mb`` on the device (least recently used dropped first; 0: computed every time)."""

    def __init__(self, model: VLEForVQA, max_mb: float = 1024):
        self.tower = model.vle.vision_model
        self.projection = model.vle.image_projection_layer
        self.features = TensorLRU(max_mb * 2**20)

    def image_embeds(self, pixel_values: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
        ids = image_ids.tolist()
        found = {image_id: self.features.get(image_id) for image_id in ids}
        missing = [i for i, image_id in enumerate(ids) if found[image_id] is None]
        if missing:
            self.tower.eval()  # the Trainer puts the whole model in training mode at each step
            with torch.no_grad():
                hidden = self.tower(pixel_values[missing]).last_hidden_state
                hidden = self.tower.vision_model.post_layernorm(hidden)
            for row, i in enumerate(missing):
                found[ids[i]] = hidden[row].clone()  # a view would keep the whole batch alive
                self.features.put(ids[i], found[ids[i]])
        return self.projection(torch.stack([found[image_id] for image_id in ids]))

