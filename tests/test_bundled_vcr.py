"""The committed VCR checkpoints: the bundled profile names them, they keep the published layout, and through the
evaluator they beat chance on generated scenes of the seed kept for measuring (never used in training)."""

from __future__ import annotations

import pytest

from training.bundle import MODELS_DIR
from training.vcr_bundle import TEST_SEED, VCR_DIR_NAMES, evaluate_vcr_models
from training.vcr_scenes import write_scenes
from vle import VLEForVCRQ2A, VLEForVCRQA2R, VLEProcessor
from vqa_llm.profiles import resolve_profile

CLASSES = {"q2a": VLEForVCRQ2A, "qa2r": VLEForVCRQA2R}
#: four choices each: a model that ignored everything would score about 25%
CHANCE = 25.0


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_the_bundled_profile_names_the_committed_vcr_checkpoints():
    profile, _ = resolve_profile("bundled", environ={})
    assert (profile.vcr_q2a, profile.vcr_qa2r) == tuple(str(MODELS_DIR / n) for n in VCR_DIR_NAMES.values())


@pytest.mark.parametrize("task", list(VCR_DIR_NAMES))
def test_vcr_checkpoints_are_small_documented_and_in_the_published_layout(task):
    folder = MODELS_DIR / VCR_DIR_NAMES[task]
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 10 * 2**20
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    card = (folder / "README.md").read_text()
    assert "Command" in card and "held-out" in card and "%" in card
    model = CLASSES[task].from_pretrained(folder, local_files_only=True)
    processor = VLEProcessor.from_pretrained(folder, local_files_only=True)
    assert model.config.num_token_types == 83 and hasattr(model, f"vcr_{task}_logit")
    words = processor.tokenizer("which shape is left of the circle it is teal", add_special_tokens=False)
    assert processor.tokenizer.unk_token_id not in words["input_ids"]  # the scenes' words are in its vocabulary


def test_bundled_vcr_models_beat_chance_on_held_out_scenes(tmp_path):
    scenes = tmp_path / "scenes"
    write_scenes(scenes, TEST_SEED, 60, "test")
    summary = evaluate_vcr_models(*(MODELS_DIR / n for n in VCR_DIR_NAMES.values()), scenes, tmp_path / "run")
    overall = summary["overall"]
    assert overall["n"] == 60 and overall["failed"] == 0
    assert overall["q2a_accuracy"] >= CHANCE + 20 and overall["qa2r_accuracy"] >= CHANCE + 20, overall
