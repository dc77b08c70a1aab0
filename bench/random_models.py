"""Pieces the benchmark scripts share to build real-size models with random weights (nothing is downloaded).

* :data:`CORPUS` — a few sentences to build tokenizer vocabularies from; :data:`CHATML` — a ChatML chat template.
* :func:`blip_processor` — a ``BlipProcessor`` for a ``BlipConfig``: BERT-layout vocabulary of fillers.
* :func:`chat_tokenizer` — a word-level tokenizer with the ChatML template, for Qwen-shaped chat LMs.
* :func:`photo` — a 640x480 noise "photo", different for each seed (so it starts uncached).

Used by ``bench/pipeline_latency.py`` and ``bench/gpu_check.py`` as ``from random_models import ...`` (a script's
own folder is on ``sys.path`` when it runs; pytest.ini puts ``bench`` there for the tests that load them).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertTokenizer, BlipConfig, BlipImageProcessorPil, BlipProcessor, PreTrainedTokenizerFast

CORPUS = [
    "what colour is the cat sitting on the red couch?",
    "how many people are standing near the bus stop?",
    "is the man holding an umbrella in the rain?",
    "a photo of two dogs playing on the green grass",
    "which animal is eating the bread on the table?",
    "where is the woman with the blue hat going?",
]
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHAT_SPECIALS = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def blip_processor(config: BlipConfig) -> BlipProcessor:
    """A BLIP processor for ``config``: images at its size, a BERT-layout vocabulary (``[DEC]`` as BOS) of fillers."""
    text = config.text_config
    specials = {text.pad_token_id: "[PAD]", 100: "[UNK]", 101: "[CLS]", text.sep_token_id: "[SEP]", 103: "[MASK]",
                text.bos_token_id: "[DEC]"}
    vocab = {specials.get(i, f"w{i}"): i for i in range(text.vocab_size)}
    size = config.vision_config.image_size
    return BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": size, "width": size}),
                         tokenizer=BertTokenizer(vocab=vocab, bos_token="[DEC]"))


def chat_tokenizer(vocab_size: int, texts: Iterable[str] = CORPUS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with a ChatML template over ``vocab_size`` ids: the specials, the words of
    ``texts``, then fillers. BOS is ``<|im_start|>``, EOS ``<|im_end|>``, padding ``<|endoftext|>``."""
    words = sorted({w for line in texts for w in line.replace("?", " ?").split()})
    names = CHAT_SPECIALS + words
    vocab = {name: i for i, name in enumerate(names)}
    vocab.update({f"t{i}": i for i in range(len(names), vocab_size)})
    word_level = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="<unk>", pad_token="<|endoftext|>",
                                        bos_token="<|im_start|>", eos_token="<|im_end|>")
    tokenizer.chat_template = CHATML
    return tokenizer


def photo(seed: int) -> Image.Image:
    """A 640x480 noise 'photo', different for each seed (so it starts uncached)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")
