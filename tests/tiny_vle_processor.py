"""A tiny VLE processor written in the ORIGINAL hfl/vle-* file layout, for tests (no downloads).

:func:`write_original_processor_files` trains a ~150-piece sentencepiece model on a few sentences (those the
VQA/ITM/PBC/VCR tests use, VCR's person names included) with :func:`training.processor_files.write_processor_files`,
which writes ``spm.model``, ``added_tokens.json``, ``special_tokens_map.json``, ``tokenizer_config.json`` and a
CLIP ``preprocessor_config.json`` naming ``VLEProcessor``.
"""

from __future__ import annotations

from pathlib import Path

from training.processor_files import write_processor_files

CORPUS = [
    "What is the color of the floor?",
    "There are dogs on the grass.",
    "a photo of a cat.",
    "a photo of dogs.",
    "pink tongues",
    "How many birds are sitting on the fence?",
    "Is the man holding an umbrella?",
    "Does Casey live in this house?",
    "No, Casey is a visitor and Riley works there.",
    "Jessie is wearing a coat and sitting in a chair reading papers.",
    "Jackie has just arrived and is settling in near the car outside.",
    "The clock on the wall shows ten, the cellphone is on the table.",
    "Yes, the red square is left of the blue circle.",
    "Avery, Jaime, Peyton, Kerry, Jody and Kendall are friends.",
    "Payton, Skyler, Frankie, Pat and Quinn dress up when they visit someone else.",
    "Which shape is green? What colour is the triangle? Is there a yellow rectangle?",
    "0 1 2 3 4 5 6 7 8 9 ! ' ( ) - : ; [ ] ,",
]


def write_original_processor_files(directory: str | Path, image_size: int = 48, vocab_size: int = 150) -> Path:
    """Write tiny VLE processor files in the original checkpoint layout into ``directory``; return it."""
    return write_processor_files(directory, CORPUS * 5, image_size=image_size, vocab_size=vocab_size)
