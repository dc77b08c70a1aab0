"""Tiny random VCR models for tests (no downloads), in the layout of ``hfl/vle-base-for-vcr-q2a`` / ``-qa2r``.

:func:`build_tiny_vcr_model` saves a ``VLEForVCRQ2A`` or ``VLEForVCRQA2R`` of the tiny test size with 83 token
types (as the published VCR checkpoints) and its processor, whose vocabulary covers the words of the VCR
fixture and of the generated shape scenes. :data:`VCR_FIXTURE` is the hand-written VCR-format fixture.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tiny_vle import IMAGE_SIZE, tiny_vle_config
from tiny_vle_processor import CORPUS
from training.processor_files import write_processor_files
from vle import VLEForVCRQ2A, VLEForVCRQA2R

VCR_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "vcr"
#: token types of the published VCR checkpoints (0 text, 1 image, 2.. objects)
VCR_TOKEN_TYPES = 83
SCENE_WORDS = [
    "What color is it ? It is red blue green black brown gray teal yellow .",
    "Which shape is left of above bigger than itself ? No shape is left of . Both and .",
    "Do and have the same color ? Yes , both are red . No , is red and is blue .",
    "How many other shapes have the color of ? None . One . Two . Three .",
    "is filled with a circle rectangle triangle not There are 2 3 4 shapes .",
]


def build_tiny_vcr_model(directory: str | Path, task: str = "q2a", seed: int = 0,
                         num_token_types: int = VCR_TOKEN_TYPES) -> str:
    """Save a tiny random VCR model (``task``: ``q2a`` or ``qa2r``) and its processor; return the path."""
    directory = Path(directory)
    write_processor_files(directory, (CORPUS + SCENE_WORDS) * 5, image_size=IMAGE_SIZE, vocab_size=150)
    torch.manual_seed(seed)
    config = tiny_vle_config()
    config.num_token_types = num_token_types
    model = (VLEForVCRQ2A if task == "q2a" else VLEForVCRQA2R)(config)
    model.save_pretrained(directory)
    return str(directory)
