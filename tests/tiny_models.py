"""Tiny random models for tests, built on the fly and saved with ``save_pretrained`` (no downloads).

* :func:`build_tiny_blip` — a ``BlipForConditionalGeneration`` (~35k parameters, 32 px images) with a
  ``BlipProcessor`` whose tokenizer is a tiny BERT WordPiece vocabulary (``[DEC]`` as BOS, like BLIP's).
* :func:`build_tiny_chat_lm` — a ``LlamaForCausalLM`` (~40k parameters) with a tiny BPE tokenizer and a
  ChatML chat template (``<|im_start|>``/``<|im_end|>``), like SmolLM2/Qwen chat models.

Both return the directory they saved into, ready for ``from_pretrained``. :func:`single_thread` is a
context manager for test fixtures: one torch thread is faster for such tiny models;
:func:`single_thread_fixture` makes a test module run all its tests so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessorPil,
    BlipProcessor,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

CAPTIONS = [
    "a red circle on a white background",
    "a blue square in the middle of the picture",
    "a green triangle next to a yellow rectangle",
    "a picture of a gray shape",
    "two cats sleeping on a couch",
]
CHAT_CORPUS = [
    "You answer questions about an image that you cannot see.",
    "Caption: a red ball on the grass. Candidate answers: A. red (0.91) B. blue (0.05)",
    "<question>what colour is the ball?</question> Answer: red Explanation: the caption says so.",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 { } $ ? ! , . :",
]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread inside the block: tiny models are faster so, above all on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def single_thread_fixture():
    """A module-scoped autouse fixture that runs a test module under :func:`single_thread`.

    Assign it at module level in the test file: ``one_thread = single_thread_fixture()``.
    """

    @pytest.fixture(scope="module", autouse=True)
    def one_thread() -> Iterator[None]:
        with single_thread():
            yield

    return one_thread


def build_tiny_blip(directory: str | Path, image_size: int = 32, seed: int = 0) -> str:
    """Save a tiny random BLIP captioner + processor into ``directory``; return the path as a string."""
    directory = Path(directory)
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.train_from_iterator(
        CAPTIONS,
        trainers.WordPieceTrainer(
            vocab_size=120, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
        ),
    )
    tokenizer = BertTokenizer(vocab=wordpiece.get_vocab(), bos_token="[DEC]")
    image_processor = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=64,
            bos_token_id=tokenizer.bos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            sep_token_id=tokenizer.sep_token_id,
            eos_token_id=tokenizer.sep_token_id,
            initializer_range=0.2,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=8,
            initializer_range=0.2,
        ),
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


def build_tiny_chat_lm(directory: str | Path, seed: int = 0, max_position_embeddings: int = 256) -> str:
    """Save a tiny random ChatML chat LM (Llama architecture) + tokenizer into ``directory``; return the path."""
    directory = Path(directory)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.normalizer = normalizers.NFKC()
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.decoder = decoders.Metaspace()
    specials = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe.train_from_iterator(CHAT_CORPUS, trainers.BpeTrainer(vocab_size=200, special_tokens=specials))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
    )
    tokenizer.chat_template = CHATML
    # A large init range makes the logits peaky, so greedy decoding is stable under padding.
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        initializer_range=0.5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)
