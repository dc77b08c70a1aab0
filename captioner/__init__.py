"""BLIP image captioning (batched). Training and fine-tuning BLIP captioners: ``training.captioner_finetune``.

>>> from captioner import BlipCaptioner
>>> captioner = BlipCaptioner.from_pretrained("Salesforce/blip-image-captioning-base")
>>> captioner.caption([image])  # ['a dog running on the beach']
"""

from .blip import BlipCaptioner
from .errors import CaptionerError

__all__ = ["BlipCaptioner", "CaptionerError"]
