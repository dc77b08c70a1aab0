"""Tests for BlipCaptioner on a tiny random BLIP saved to disk (no downloads)."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from captioner import BlipCaptioner, CaptionerError
from tiny_models import build_tiny_blip, build_tiny_chat_lm, single_thread


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory) -> str:
    return build_tiny_blip(tmp_path_factory.mktemp("tiny_blip"))


@pytest.fixture(scope="module")
def captioner(blip_dir) -> BlipCaptioner:
    return BlipCaptioner.from_pretrained(blip_dir, device="cpu", max_new_tokens=8)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 255, (30 + 7 * i, 40, 3), dtype=np.uint8)) for i in range(5)]
    return noise + [
        Image.new("RGB", (50, 40), (220, 20, 20)),
        Image.new("L", (33, 33), 90),
        Image.new("RGBA", (20, 24), (0, 0, 255, 128)),
    ]


def reference_captions(captioner: BlipCaptioner, images, prompt: str | None = None, **generate_kwargs) -> list[str]:
    """Captions straight from transformers (model.generate + decode), for comparison."""
    rgb = [im.convert("RGB") for im in images]
    inputs = captioner.processor(images=rgb, text=[prompt] * len(rgb) if prompt else None, return_tensors="pt")
    out = captioner.model.generate(**inputs, **generate_kwargs)
    return [" ".join(t.split()) for t in captioner.processor.tokenizer.batch_decode(out, skip_special_tokens=True)]


def test_loads_with_defaults_for_blip_base(blip_dir):
    cap = BlipCaptioner.from_pretrained(blip_dir, device="cpu")
    assert cap.model_id == blip_dir
    assert (cap.num_beams, cap.max_new_tokens, cap.min_new_tokens, cap.prompt) == (3, 30, 1, None)
    assert cap.model.dtype == torch.float32 and cap.device.type == "cpu"


def test_captions_match_transformers_beam_search(captioner, images):
    captions = captioner.caption(images)
    assert len(captions) == len(images) and all(isinstance(c, str) and c for c in captions)
    assert captions == reference_captions(captioner, images, num_beams=3, max_new_tokens=8, min_new_tokens=1)
    assert len(set(captions)) > 1  # the captions depend on the image


def test_batch_size_does_not_change_captions(captioner, images):
    assert captioner.caption(images, batch_size=3) == captioner.caption(images, batch_size=16)
    assert captioner.caption([]) == []


def test_per_call_overrides(captioner, images):
    greedy = captioner.caption(images, num_beams=1, max_new_tokens=3)
    assert greedy == reference_captions(captioner, images, num_beams=1, max_new_tokens=3, min_new_tokens=1)
    assert captioner.num_beams == 3 and captioner.max_new_tokens == 8  # instance settings unchanged


@pytest.mark.parametrize("prompt", ["a picture of", "a"])
def test_conditional_prompt_is_stripped(blip_dir, images, prompt):
    cap = BlipCaptioner.from_pretrained(blip_dir, device="cpu", prompt=prompt, num_beams=1, max_new_tokens=6)
    captions = cap.caption(images)
    full = reference_captions(cap, images, prompt=prompt, num_beams=1, max_new_tokens=6, min_new_tokens=1)
    for caption, whole in zip(captions, full, strict=True):
        assert whole.startswith(prompt)
        assert caption == whole[len(prompt) :].strip()
    assert cap.caption(images, prompt=None) == cap.caption(images, prompt="")  # per-call override: no prefix


def test_bad_inputs_raise_captioner_error(captioner):
    with pytest.raises(CaptionerError, match="image #1 is a str"):
        captioner.caption([Image.new("RGB", (8, 8)), "photo.jpg"])
    with pytest.raises(CaptionerError, match="batch_size"):
        captioner.caption([Image.new("RGB", (8, 8))], batch_size=0)


def test_missing_model_names_the_path_and_the_fix(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(CaptionerError, match=re.escape(str(missing)) + ".*save_pretrained"):
        BlipCaptioner.from_pretrained(str(missing))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CaptionerError, match=re.escape(str(empty)) + ".*Salesforce/blip-image-captioning-base"):
        BlipCaptioner.from_pretrained(str(empty), local_files_only=True)


def test_non_blip_model_is_refused(tmp_path):
    other = build_tiny_chat_lm(tmp_path / "llama")
    with pytest.raises(CaptionerError, match=re.escape(other)):
        BlipCaptioner.from_pretrained(other, local_files_only=True)
