"""A tiny random VLE VQA model + processor saved in the original hfl layout, for tests (no downloads).

:func:`build_tiny_vle_vqa` saves a ``VLEForVQA`` (DeBERTa-v2 text encoder and CLIP vision tower of width 32,
32 px images, patch 8) with ``save_pretrained`` and writes the processor files beside it (sentencepiece model
trained on the fly, CLIP preprocessor config naming ``VLEProcessor``), so ``VLEForVQA.from_pretrained(dir)``
and ``VLEProcessor.from_pretrained(dir)`` both load it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from tiny_vle_processor import write_original_processor_files
from vle import VLEConfig, VLEForVQA

DEFAULT_LABELS = ("yes", "no", "red", "blue", "green", "circle", "square", "triangle")
IMAGE_SIZE = 32
TEXT_VOCAB = 160  # the trained sentencepiece model has <= 150 pieces, plus [MASK]


def tiny_vle_config(labels: Sequence[str] = DEFAULT_LABELS, image_size: int = IMAGE_SIZE) -> VLEConfig:
    """A VLE config with a 1-layer DeBERTa-v2 and CLIP vision tower (hidden 32) and ``labels`` as answers."""
    text = dict(model_type="deberta-v2", vocab_size=TEXT_VOCAB, hidden_size=32, num_hidden_layers=1,
                num_attention_heads=2, intermediate_size=64, max_position_embeddings=64, relative_attention=True,
                position_buckets=16, pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0,
                norm_rel_ebd="layer_norm", share_att_key=True)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=image_size, patch_size=8, projection_dim=32)
    return VLEConfig(text_config=text, vision_config=vision, hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=64,
                     id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})


def build_tiny_vle_vqa(directory: str | Path, labels: Sequence[str] = DEFAULT_LABELS, seed: int = 0) -> str:
    """Save a tiny random VLE VQA model and its processor into ``directory``; return the path as a string."""
    directory = Path(directory)
    write_original_processor_files(directory, image_size=IMAGE_SIZE)
    torch.manual_seed(seed)
    model = VLEForVQA(tiny_vle_config(labels))
    with torch.no_grad():  # spread the logits so the top-1 answer is not a near tie
        model.vqa_classifier[3].weight.mul_(20.0)
    model.save_pretrained(directory)
    return str(directory)
