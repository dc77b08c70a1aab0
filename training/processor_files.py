"""Create a new VLE processor from a text corpus: a sentencepiece model served by the DeBERTa-v2 tokenizer.

The files are written in the layout of the published ``hfl/vle-*`` checkpoints (``spm.model`` with ids 0-3 =
``[PAD] [CLS] [SEP] [UNK]`` like DeBERTa-v3, ``added_tokens.json`` with ``[MASK]`` right after the
sentencepiece vocabulary, ``special_tokens_map.json``, ``tokenizer_config.json`` and a CLIP
``preprocessor_config.json`` naming ``VLEProcessor``), so a model trained with it goes through exactly the
processor code path of the real VLE.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def write_processor_files(
    directory: str | Path,
    corpus: Iterable[str],
    image_size: int = 224,
    vocab_size: int = 150,
    model_type: str = "unigram",
    seed_sentences: Iterable[str] = (),
    do_lower_case: bool = False,
    split_by_punct: bool = False,
    character_coverage: float = 0.9995,
) -> Path:
    """Train a sentencepiece model on ``corpus`` and write VLE processor files into ``directory``; return it.

    ``vocab_size`` is a soft limit (a small corpus may give fewer pieces). ``do_lower_case`` makes the
    tokenizer lower-case its input (useful for a small all-lower-case corpus); ``split_by_punct`` makes it split
    punctuation off before sentencepiece (then the corpus is split the same way for training).
    ``character_coverage`` is sentencepiece's: characters rarer than that share of the corpus (a digit seen once)
    are left out, with the words holding them; 1.0 keeps every character.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    sentences = [*seed_sentences, *corpus]
    if split_by_punct:
        sentences = [re.sub(r"([^\w\s])", r" \1 ", sentence) for sentence in sentences]
    if do_lower_case:
        sentences = [sentence.lower() for sentence in sentences]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size, model_type=model_type,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]",
        unk_piece="[UNK]", hard_vocab_limit=False, minloglevel=2, num_threads=1,
        character_coverage=character_coverage,
    )
    (directory / "spm.model").write_bytes(model.getvalue())
    pieces = spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
    _write_json(directory / "added_tokens.json", {"[MASK]": pieces})
    _write_json(directory / "special_tokens_map.json", {
        "bos_token": "[CLS]", "cls_token": "[CLS]", "eos_token": "[SEP]", "mask_token": "[MASK]",
        "pad_token": "[PAD]", "sep_token": "[SEP]", "unk_token": "[UNK]",
    })
    _write_json(directory / "tokenizer_config.json", {
        "bos_token": "[CLS]", "cls_token": "[CLS]", "do_lower_case": do_lower_case, "eos_token": "[SEP]",
        "mask_token": "[MASK]", "model_max_length": 512, "pad_token": "[PAD]", "sep_token": "[SEP]",
        "sp_model_kwargs": {}, "split_by_punct": split_by_punct, "tokenizer_class": "DebertaV2Tokenizer",
        "unk_token": "[UNK]", "vocab_type": "spm",
    })
    _write_json(directory / "preprocessor_config.json", {
        "crop_size": {"height": image_size, "width": image_size}, "do_center_crop": True, "do_convert_rgb": True,
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": CLIP_MEAN,
        "image_processor_type": "CLIPImageProcessor", "image_std": CLIP_STD, "processor_class": "VLEProcessor",
        "resample": 3, "rescale_factor": 1 / 255, "size": {"shortest_edge": image_size},
    })
    return directory


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
