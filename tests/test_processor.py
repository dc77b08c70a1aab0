"""VLEProcessor: loads the original hfl/vle-* processor layout, batches images + texts, round-trips."""

from __future__ import annotations

import json
import logging
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, DebertaV2Tokenizer
from transformers.utils import logging as hf_logging

import odd_images as odd
from tiny_vle_processor import write_original_processor_files
from vle.configuration_vle import VLEConfig
from vle.errors import ImageLoadError, VLEInputError
from vle.processing_vle import VLEProcessor
from vle_reference import oracle

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def processor_dir(tmp_path_factory):
    return write_original_processor_files(tmp_path_factory.mktemp("vle_processor"), image_size=48)


@pytest.fixture(scope="module")
def processor(processor_dir):
    return VLEProcessor.from_pretrained(processor_dir)


def test_loads_the_original_layout(processor, processor_dir):
    assert sorted(p.name for p in processor_dir.iterdir()) == [
        "added_tokens.json", "preprocessor_config.json", "special_tokens_map.json", "spm.model",
        "tokenizer_config.json",
    ]
    tokenizer = processor.tokenizer
    assert isinstance(tokenizer, DebertaV2Tokenizer)
    added = json.loads((processor_dir / "added_tokens.json").read_text())
    assert tokenizer.mask_token_id == added["[MASK]"]
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
    assert type(processor.image_processor).__name__.startswith("CLIPImageProcessor")
    assert processor.image_processor.crop_size["height"] == 48


def test_batches_images_with_padded_questions(processor):
    images = [odd.noise(60, 40), np.zeros((10, 10, 3), np.uint8)]
    batch = processor(text=["What is the color of the floor?", "dogs"], images=images)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "pixel_values"}
    assert batch["pixel_values"].shape == (2, 3, 48, 48) and batch["pixel_values"].dtype == torch.float32
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape == batch["token_type_ids"].shape and ids.shape[0] == 2
    assert mask[0].all() and not mask[1].all()  # the short question is padded ...
    assert (ids[1][mask[1] == 0] == processor.tokenizer.pad_token_id).all()  # ... with [PAD]
    assert ids[0, 0] == processor.tokenizer.cls_token_id
    assert (batch["token_type_ids"] == 0).all()


def test_single_image_is_broadcast_to_several_texts(processor):
    batch = processor(text=["a photo of a cat.", "a photo of dogs.", "pink"], images=odd.noise(30, 30))
    pixels = batch["pixel_values"]
    assert pixels.shape[0] == 3 and torch.equal(pixels[0], pixels[2])
    with pytest.raises(VLEInputError, match="one image per text"):
        processor(text=["a", "b", "c"], images=[odd.noise(8, 8), odd.noise(8, 8)])
    with pytest.raises(VLEInputError):
        processor()


def test_text_only_and_images_only(processor):
    assert set(processor(text="a photo")) == {"input_ids", "attention_mask", "token_type_ids"}
    assert set(processor(images=odd.noise(20, 20))) == {"pixel_values"}


def test_truncation_to_max_length(processor):
    batch = processor(text="a photo of dogs " * 100, max_length=16)
    assert batch["input_ids"].shape == (1, 16)
    assert batch["input_ids"][0, -1] == processor.tokenizer.sep_token_id


def test_pil_backend_matches_clip_preprocessing(processor):
    """Resize shortest edge (bicubic), centre crop, rescale, normalise: what CLIPImageProcessor always did."""
    image = odd.noise(100, 70, seed=3)
    pixels = processor(images=image)["pixel_values"][0].numpy()
    size = 48
    resized = image.resize((int(size * 100 / 70), size), Image.Resampling.BICUBIC)
    left = (resized.width - size) // 2
    crop = np.asarray(resized, dtype=np.float64)[:, left : left + size] / 255.0
    expected = ((crop - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)
    np.testing.assert_allclose(pixels, expected, atol=1e-5)


def test_no_warnings_when_loading_and_calling(processor_dir, capfd):
    hf_logging.enable_propagation()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("transformers").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            processor = VLEProcessor.from_pretrained(processor_dir)
            for _ in range(3):
                processor(text=["a photo", "dogs"], images=[odd.noise(40, 30), odd.noise(1, 1)])
    finally:
        logging.getLogger("transformers").removeHandler(handler)
        hf_logging.disable_propagation()
    assert [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)] == []
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []
    assert "warn" not in capfd.readouterr().err.lower()


def test_save_and_reload_round_trip(processor, tmp_path):
    saved = tmp_path / "saved"
    processor.save_pretrained(saved)
    legacy = json.loads((saved / "preprocessor_config.json").read_text())
    assert legacy["processor_class"] == "VLEProcessor" and legacy["image_processor_type"] == "CLIPImageProcessor"
    assert (saved / "spm.model").is_file()
    reloaded = VLEProcessor.from_pretrained(saved)
    inputs = dict(text=["What is the color of the floor?", "dogs"], images=[odd.noise(50, 30), odd.noise(30, 50)])
    first, second = processor(**inputs), reloaded(**inputs)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert reloaded.tokenizer.mask_token_id == processor.tokenizer.mask_token_id


def test_auto_processor_finds_vle_processor(processor_dir, tmp_path):
    AutoProcessor.register(VLEConfig, VLEProcessor, exist_ok=True)
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(processor_dir, checkpoint)
    # a real checkpoint folder also has the model config
    shutil.copy(oracle("VLEForVQA/config.json"), checkpoint / "config.json")
    assert isinstance(AutoProcessor.from_pretrained(checkpoint), VLEProcessor)


@pytest.mark.parametrize("name", sorted(odd.READABLE))
def test_odd_images_through_the_processor(processor, name):
    pixels = processor(text="what is it?", images=odd.READABLE[name]())["pixel_values"]
    assert pixels.shape == (1, 3, 48, 48)
    assert torch.isfinite(pixels).all()


def test_tiny_images_are_not_mistaken_for_channels_first(processor):
    # a 3x5 RGB image looks like (3, 5, 3): channels-first guessing would scramble it
    image = Image.new("RGB", (5, 3), odd.RED)
    pixels = processor(images=image)["pixel_values"][0]
    expected = (np.array(odd.RED) / 255.0 - CLIP_MEAN) / CLIP_STD
    np.testing.assert_allclose(pixels[:, 24, 24].numpy(), expected, atol=1e-4)


@pytest.mark.parametrize("name", sorted(odd.BROKEN))
def test_broken_images_raise_through_the_processor(processor, name):
    with pytest.raises(ImageLoadError):
        processor(text="what is it?", images=odd.BROKEN[name]())


def test_paths_are_accepted(processor, tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(odd.encode(odd.noise(20, 20)))
    from_path = processor(images=str(path))["pixel_values"]
    from_image = processor(images=odd.noise(20, 20))["pixel_values"]
    assert torch.equal(from_path, from_image)
