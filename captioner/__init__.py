"""BLIP image captioning (batched), plus training and fine-tuning of BLIP captioners (``captioner.finetune``).

>>> from captioner import BlipCaptioner
>>> captioner = BlipCaptioner.from_pretrained("Salesforce/blip-image-captioning-base")
>>> captioner.caption([image])  # ['a dog running on the beach']
"""

from .blip import BlipCaptioner
from .errors import CaptionerError

__all__ = ["BlipCaptioner", "CaptionerError"]
