"""VLE model family: oracle equivalence with the original implementation, checkpoint compatibility, Auto classes."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForVisualQuestionAnswering

import vle
from vle import VLEConfig, VLEForVQA, VLEModel
from vle.modeling_vle import interpolate_position_embedding
from vle_reference import ORACLE, manifest_path, manifests

PLAIN_CLASSES = ["VLEModel", "VLEForVQA", "VLEForITM", "VLEForPBC", "VLEForMLM"]
VCR_CLASSES = ["VLEForVCRQ2A", "VLEForVCRQA2R"]


def _inputs():
    data = np.load(ORACLE / "inputs.npz")
    return {k: torch.from_numpy(data[k]) for k in data.files}


def _vcr_inputs():
    data = np.load(ORACLE / "vcr_inputs.npz")
    lists = json.loads((ORACLE / "vcr_lists.json").read_text())
    return dict(
        input_ids=[torch.from_numpy(data[f"input_ids_{c}"]) for c in range(4)],
        attention_mask=[torch.from_numpy(data[f"attention_mask_{c}"]) for c in range(4)],
        token_type_ids=[torch.from_numpy(data[f"token_type_ids_{c}"]) for c in range(4)],
        pixel_values=_inputs()["pixel_values"],
        patch_ids=lists["patch_ids"],
        extend_token_type_ids=lists["extend_token_type_ids"],
    )


def _outputs(name, model):
    with torch.no_grad():
        return model(**(_vcr_inputs() if name in VCR_CLASSES else _inputs()))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", PLAIN_CLASSES + VCR_CLASSES)
def test_oracle_outputs_match_original(name, attn):
    model, info = getattr(vle, name).from_pretrained(ORACLE / name, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    model.eval()
    model.config.fusion_attn_implementation = attn
    expected = np.load(ORACLE / f"{name}_expected.npz")
    out = _outputs(name, model)
    assert expected.files
    for key in expected.files:
        got = out[key].numpy()
        assert got.shape == expected[key].shape
        np.testing.assert_allclose(got, expected[key], atol=1e-4, rtol=0)


def _manifest_cases():
    for path in manifests():
        manifest = json.loads(path.read_text())
        for cls_name in manifest["classes"]:
            yield pytest.param(path, cls_name, id=f"{path.stem}-{cls_name}")


@pytest.mark.parametrize("path,cls_name", list(_manifest_cases()))
def test_state_dict_matches_published_manifest(path, cls_name):
    manifest = json.loads(path.read_text())
    spec = manifest["classes"][cls_name]
    config = VLEConfig(**json.loads(json.dumps(manifest["config_json_as_saved_by_config_save_pretrained"])))
    with torch.device("meta"):
        model = getattr(vle, cls_name)(config)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: shape for k, shape, _dtype in spec["state_dict"]}
    # The only keys allowed to differ: the position_ids buffers that the original also ignored on load.
    ignorable = {k for k in theirs if k.endswith("position_ids")}
    assert ignorable == set(spec["tied_after_tie_weights"]) - {k for k in theirs if "decoder" in k}
    assert set(ours) == set(theirs) - ignorable
    assert all(ours[k] == theirs[k] for k in ours)
    # Sizes the published checkpoints really have (not just consistent names).
    if "vqa" in path.stem:
        assert model.num_vqa_labels == 3129


def test_config_reads_original_file_and_writes_it_back(tmp_path):
    manifest = json.loads(manifest_path("vle-base-for-vqa").read_text())
    original = manifest["config_json_as_saved_by_config_save_pretrained"]
    (tmp_path / "config.json").write_text(json.dumps(original))
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, VLEConfig)
    assert config.text_config.model_type == "deberta-v2" and config.text_config.vocab_size == 128100
    assert config.vision_config.model_type == "clip_vision_model" and config.vision_config.image_size == 576
    assert len(config.id2label) == 3129 and config.hidden_size == 768 and config.num_hidden_layers == 6

    config.save_pretrained(tmp_path / "out")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    # What the original VLEConfig needs to rebuild it: nested dicts with their model_type, and the fusion sizes.
    assert written["model_type"] == "vle"
    assert written["text_config"]["model_type"] == "deberta-v2"
    assert written["vision_config"]["model_type"] == "clip_vision_model"
    for key in ["num_token_types", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"]:
        assert written[key] == original[key]
    for key in ["hidden_size", "num_hidden_layers", "position_buckets", "vocab_size", "relative_attention"]:
        assert written["text_config"][key] == original["text_config"][key]
    assert written["vision_config"]["image_size"] == 576 and written["vision_config"]["patch_size"] == 16
    again = VLEConfig.from_pretrained(tmp_path / "out")
    assert again.to_dict()["text_config"] == config.to_dict()["text_config"]


@pytest.mark.parametrize("name", ["VLEForVQA", "VLEForMLM"])
def test_original_bin_and_safetensors_roundtrip(tmp_path, name):
    original = getattr(vle, name).from_pretrained(ORACLE / name).eval()
    original.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded, info = getattr(vle, name).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    a, b = _outputs(name, original), _outputs(name, reloaded.eval())
    torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)
    if name == "VLEForMLM":  # decoder stays tied to the word embeddings
        assert reloaded.get_output_embeddings().weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()


def test_bin_checkpoint_is_loaded_with_weights_only(tmp_path, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    VLEForVQA.from_pretrained(ORACLE / "VLEForVQA")
    assert calls and all(flag is True for flag in calls)


def test_auto_classes_after_import(tmp_path):
    model = AutoModel.from_pretrained(ORACLE / "VLEModel")
    assert isinstance(model, VLEModel)
    vqa = AutoModelForVisualQuestionAnswering.from_pretrained(ORACLE / "VLEForVQA")
    assert isinstance(vqa, VLEForVQA)
    assert vqa.config.id2label[3] == "answer_3"


def test_image_encoding_can_be_cached_and_reused():
    model = VLEForVQA.from_pretrained(ORACLE / "VLEForVQA").eval()
    inputs = _inputs()
    with torch.no_grad():
        direct = model(**inputs).logits
        image_embeds = model.encode_image(inputs.pop("pixel_values"))
        cached = model(**inputs, image_embeds=image_embeds).logits
    torch.testing.assert_close(direct, cached, atol=0, rtol=0)


def test_other_image_sizes_interpolate_position_embeddings():
    model = VLEForVQA.from_pretrained(ORACLE / "VLEForVQA").eval()
    inputs = _inputs()
    inputs["pixel_values"] = torch.nn.functional.interpolate(inputs["pixel_values"], size=(64, 64), mode="bilinear")
    with torch.no_grad():
        out = model(**inputs)
        image_embeds = model.encode_image(inputs["pixel_values"])
    assert out.logits.shape == (2, 10)
    assert image_embeds.shape[1] == 1 + (64 // 8) ** 2
    # Interpolating to the same grid is the identity; to another grid keeps the CLS row.
    weight = model.vle.vision_model.vision_model.embeddings.position_embedding.weight
    torch.testing.assert_close(interpolate_position_embedding(weight, 6), weight)
    bigger = interpolate_position_embedding(weight, 8)
    assert bigger.shape == (65, weight.shape[1]) and torch.equal(bigger[0], weight[0])


def test_vqa_loss_is_soft_bce_times_labels():
    model = VLEForVQA.from_pretrained(ORACLE / "VLEForVQA").eval()
    inputs = _inputs()
    with torch.no_grad():
        out = model(**inputs, vqa_labels=[[1, 2], [3]], vqa_scores=[[1.0, 0.3], [0.6]], return_loss=True)
    targets = torch.zeros(2, 10)
    targets[0, 1], targets[0, 2], targets[1, 3] = 1.0, 0.3, 0.6
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, targets) * 10
    torch.testing.assert_close(out.loss, expected)


def test_from_vision_text_pretrained_keeps_encoder_weights(tmp_path):
    source = VLEModel.from_pretrained(ORACLE / "VLEModel")
    vision = source.vision_model.vision_model
    text = source.text_model
    vision.save_pretrained(tmp_path / "clip")
    text.save_pretrained(tmp_path / "deberta")
    model = VLEForVQA.from_vision_text_pretrained(
        str(tmp_path / "clip"), str(tmp_path / "deberta"), image_size=64,
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=16,
        id2label={0: "yes", 1: "no"}, label2id={"yes": 0, "no": 1},
    )
    assert model.config.vision_config.image_size == 64
    assert torch.equal(
        model.vle.text_model.embeddings.word_embeddings.weight, text.embeddings.word_embeddings.weight
    )
    new_pos = model.vle.vision_model.vision_model.embeddings.position_embedding.weight
    assert new_pos.shape[0] == 1 + (64 // 8) ** 2
    torch.testing.assert_close(new_pos[0], vision.embeddings.position_embedding.weight[0])
    ids = torch.tensor([[1, 5, 6, 2]])
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=torch.randn(1, 3, 64, 64))
    assert out.logits.shape == (1, 2)


def test_auto_processor_loads_original_processor_layout(tmp_path):
    from transformers import AutoProcessor

    from tiny_vle_processor import write_original_processor_files

    write_original_processor_files(tmp_path, image_size=48)
    VLEModel.from_pretrained(ORACLE / "VLEModel").config.save_pretrained(tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(processor, vle.VLEProcessor)
    batch = processor(text=["a photo of a cat.", "dogs"], images=[np.zeros((60, 40, 3), dtype=np.uint8)] * 2)
    assert batch["pixel_values"].shape == (2, 3, 48, 48)
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()


def test_head_losses_accept_the_original_label_keywords():
    inputs = _inputs()
    itm = vle.VLEForITM.from_pretrained(ORACLE / "VLEForITM").eval()
    with torch.no_grad():
        out = itm(**inputs, itm_labels=[1, 0], return_loss=True)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([1, 0])))
    pbc = vle.VLEForPBC.from_pretrained(ORACLE / "VLEForPBC").eval()
    labels = torch.zeros(2, 36, dtype=torch.long)
    labels[:, :5] = 1
    labels[1, 30:] = -100
    with torch.no_grad():
        out = pbc(**inputs, pbc_labels=labels, return_loss=True)
    keep = labels.reshape(-1) != -100
    expected = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 2)[keep], labels.reshape(-1)[keep])
    torch.testing.assert_close(out.loss, expected)
    mlm = vle.VLEForMLM.from_pretrained(ORACLE / "VLEForMLM").eval()
    with torch.no_grad():
        assert mlm(**inputs).loss is None
        with pytest.raises(TypeError, match="itm_labels"):
            mlm(**inputs, itm_labels=[1, 0])
