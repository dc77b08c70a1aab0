"""Building a NEW small BLIP captioner from scratch: a WordPiece vocabulary trained on the captions,
a ``BlipProcessor`` around it, and a small ``BlipConfig`` / randomly initialised model.

The defaults (64 px images, 8 px patches, 3 vision layers of width 128, 2 text layers of width 128)
suit synthetic data such as easy-VQA; every size is a keyword argument.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor

from captioner.errors import CaptionerError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]


def train_wordpiece_tokenizer(
    captions: Iterable[str], vocab_size: int = 1000, lowercase: bool = True, min_frequency: int = 1
) -> BertTokenizer:
    """Train a BERT-style WordPiece vocabulary on ``captions``; ``[DEC]`` is the BOS token, as in BLIP."""
    captions = [c for c in captions if isinstance(c, str) and c.strip()]
    if not captions:
        raise CaptionerError("No captions to build a vocabulary from; pass (image, caption) pairs with text.")
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS
    )
    wordpiece.train_from_iterator(captions, trainer)
    return BertTokenizer(vocab=wordpiece.get_vocab(), do_lower_case=lowercase, bos_token="[DEC]")


def small_blip_config(
    tokenizer,
    image_size: int = 64,
    patch_size: int = 8,
    vision_hidden: int = 128,
    vision_layers: int = 3,
    vision_heads: int = 4,
    text_hidden: int = 128,
    text_layers: int = 2,
    text_heads: int = 4,
    max_caption_tokens: int = 64,
    dropout: float = 0.0,
    label_smoothing: float = 0.0,
) -> BlipConfig:
    """A small ``BlipConfig`` whose special-token ids come from ``tokenizer`` (BOS = ``[DEC]``, EOS = ``[SEP]``)."""
    if image_size % patch_size:
        raise CaptionerError(f"image_size {image_size} must be a multiple of patch_size {patch_size}.")
    return BlipConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=text_hidden,
            intermediate_size=4 * text_hidden,
            num_hidden_layers=text_layers,
            num_attention_heads=text_heads,
            max_position_embeddings=max_caption_tokens,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            bos_token_id=tokenizer.bos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            sep_token_id=tokenizer.sep_token_id,
            eos_token_id=tokenizer.sep_token_id,
            label_smoothing=label_smoothing,
        ),
        vision_config=dict(
            hidden_size=vision_hidden,
            intermediate_size=4 * vision_hidden,
            num_hidden_layers=vision_layers,
            num_attention_heads=vision_heads,
            image_size=image_size,
            patch_size=patch_size,
            attention_dropout=dropout,
            initializer_range=0.02,
        ),
        label_smoothing=label_smoothing,
    )


def new_blip(
    captions: Iterable[str], vocab_size: int = 1000, image_size: int = 64, seed: int = 0, **config_kwargs
) -> tuple[BlipForConditionalGeneration, BlipProcessor]:
    """A randomly initialised small BLIP captioner and its processor, with a vocabulary trained on ``captions``.

    ``config_kwargs`` go to :func:`small_blip_config` (patch_size, vision_hidden, text_layers, ...).
    """
    tokenizer = train_wordpiece_tokenizer(captions, vocab_size=vocab_size)
    image_processor = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = small_blip_config(tokenizer, image_size=image_size, **config_kwargs)
    torch.manual_seed(seed)
    return BlipForConditionalGeneration(config), processor
