"""The VLE pretraining checkpoint: its labels read from pixels, its texts, its training step, the layout it is
saved in, and the committed ``assets/models/vle-easyvqa-pretrain`` (loads into every head class, small, scores
on a sample of test images that its training never saw)."""

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_vle import tiny_vle_config
from tiny_vle_processor import write_original_processor_files
from training.bundle import MODELS_DIR, PRETRAIN_DIR_NAME, VLE_DIR_NAME, image_attributes
from training.pretrain import BatchMaker, SceneData, main, train_pretraining
from training.pretrain_arguments import pretrain_arguments
from training.pretrain_eval import easy_vqa_test_images, evaluate_pretraining
from training.pretrain_texts import NEGATIVE_KINDS, TEMPLATES, caption, mask_words, mismatch, zero_shot_labels
from training.shape_scenes import SceneError, patch_labels, read_scene
from vle import VLEForITM, VLEForMLM, VLEForPBC, VLEForPreTraining, VLEModel, VLEProcessor
from vle.vqa_data import EASY_VQA_COLORS, EASY_VQA_SHAPES, load_easy_vqa
from vqa_llm.tasks import LABELS_FILE

PRETRAIN_DIR = MODELS_DIR / PRETRAIN_DIR_NAME
HEAD_CLASSES = (VLEForITM, VLEForPBC, VLEForMLM, VLEModel)


# ------------------------------------------------------------------------------------ labels from pixels
def test_scenes_read_from_pixels_agree_with_what_the_questions_say():
    attributes = image_attributes(load_easy_vqa("test"))
    checked = 0
    for path, known in attributes.items():
        scene = read_scene(path)
        assert known.get("color", scene.color) == scene.color and known.get("shape", scene.shape) == scene.shape
        checked += len(known)
    assert checked > 1500  # most of the 1,000 test images have both named somewhere


def test_a_blank_image_has_no_scene():
    with pytest.raises(SceneError, match="No shape"):
        read_scene(Image.new("RGB", (64, 64), (240, 240, 240)))


def test_patch_labels_mark_the_covered_patches():
    mask = np.zeros((16, 16), dtype=bool)
    mask[0:8, 4:12] = True  # half of each top patch
    assert patch_labels(mask, 2, 2).tolist() == [[1, 1], [0, 0]]
    assert patch_labels(mask, 2, 2, min_share=0.6).tolist() == [[1, 0], [0, 0]]  # none reaches it: the top one
    speck = np.zeros((16, 16), dtype=bool)
    speck[12, 3] = True
    assert patch_labels(speck, 2, 2).tolist() == [[0, 0], [1, 0]]


# -------------------------------------------------------------------------------------------------- texts
def test_every_text_uses_only_words_the_bundled_tokenizer_knows():
    tokenizer = VLEProcessor.from_pretrained(MODELS_DIR / VLE_DIR_NAME).tokenizer
    for template in range(len(TEMPLATES)):
        for color in EASY_VQA_COLORS:
            for shape in EASY_VQA_SHAPES:
                ids = tokenizer(caption(color, shape, template))["input_ids"]
                assert tokenizer.unk_token_id not in ids, caption(color, shape, template)
    labels = zero_shot_labels()
    assert len(labels) == len(set(labels)) == 24 and "a red circle" in labels


@pytest.mark.parametrize("kind", NEGATIVE_KINDS)
def test_mismatched_captions_differ_as_asked(kind):
    rng = random.Random(0)
    for _ in range(50):
        color, shape = mismatch("red", "circle", kind, rng)
        assert (color != "red") == (kind in ("color", "both")) and (shape != "circle") == (kind in ("shape", "both"))
        assert color in EASY_VQA_COLORS and shape in EASY_VQA_SHAPES


def test_mask_words_masks_the_chosen_words_and_labels_only_masked_ones():
    ids = [1, 6, 26, 18, 2]  # [CLS] a red circle [SEP]
    inputs, labels = mask_words(ids, {2}, mask_id=31, special_ids={1, 2}, rng=random.Random(0), share=0.0)
    assert inputs == [1, 6, 31, 18, 2] and labels == [-100, -100, 26, -100, -100]
    inputs, labels = mask_words(ids, set(), mask_id=31, special_ids={1, 2}, rng=random.Random(0), share=1.0)
    assert inputs == [1, 31, 31, 31, 2] and labels == [-100, 6, 26, 18, -100]


# ------------------------------------------------------------------------------------------ training step
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_pretrain")
    write_original_processor_files(folder, image_size=32)
    processor = VLEProcessor.from_pretrained(folder)
    patches = torch.zeros(4, 4, 4, dtype=torch.long)
    patches[:, 0, :2] = 1  # the shape sits in the top-left patches
    data = SceneData(torch.randn(4, 3, 32, 32), ["red", "blue", "green", "red"],
                     ["circle", "triangle", "rectangle", "circle"], patches)
    return processor, data


def test_batches_pair_images_with_matching_or_mismatched_captions(tiny):
    processor, data = tiny
    make = BatchMaker(data, processor, random.Random(3))
    for _ in range(5):
        itm, mlm = make(torch.arange(4))
        assert set(itm["itm_labels"].tolist()) <= {0, 1}
        for row, matched in zip(itm["pbc_labels"], itm["itm_labels"]):
            if matched:  # the shape's patches (possibly mirrored by the flip), nothing else
                assert row.sum() == 2 and set(row.tolist()) == {0, 1}
            else:
                assert (row == -100).all()
        assert mlm["pixel_values"].shape[0] == mlm["input_ids"].shape[0] == 2
        assert ((mlm["mlm_labels"] != -100).sum(-1) >= 1).all()  # a colour or shape word at least
        masked = mlm["input_ids"] == processor.tokenizer.mask_token_id
        assert torch.equal(masked, mlm["mlm_labels"] != -100)


def test_training_is_seeded_and_saves_the_hfl_vle_base_layout(tiny, tmp_path):
    processor, data = tiny
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = VLEForPreTraining(tiny_vle_config())
        _, training_args = pretrain_arguments(output_dir=str(tmp_path / "run"), num_train_epochs=2,
                                              per_device_train_batch_size=2, seed=5)
        log = train_pretraining(model, processor, data, training_args)
        assert log["steps"] == 4 and all(np.isfinite(e["loss"]) for e in log["epochs"])
        assert log["settings"]["warmup_steps"] == 2  # the one warm-up rule: 50 asked, at most half of 4 steps
        weights.append(model.itm_score.fc.weight.detach().clone())
    assert torch.equal(*weights)
    model.save_pretrained(tmp_path)
    for cls in HEAD_CLASSES:
        _, info = cls.from_pretrained(tmp_path, output_loading_info=True)
        assert not any(info.values()), (cls.__name__, info)


def test_cli_trains_from_a_vle_folder_and_saves_every_head_and_the_labels(tmp_path, capsys):
    start = tmp_path / "start"
    torch.manual_seed(0)
    VLEForPreTraining(tiny_vle_config(image_size=32)).save_pretrained(start)
    write_original_processor_files(start, image_size=32)
    out = tmp_path / "out"
    assert main(["--init", str(start), "--output_dir", str(out), "--train_limit", "4", "--num_train_epochs", "1",
                 "--per_device_train_batch_size", "2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2
    for cls in HEAD_CLASSES:
        _, info = cls.from_pretrained(out, output_loading_info=True)
        assert not any(info.values()), (cls.__name__, info)
    assert (out / LABELS_FILE).read_text().splitlines() == zero_shot_labels()
    assert VLEProcessor.from_pretrained(out).tokenizer("a red circle")["input_ids"]


@pytest.mark.parametrize("argv, message", [
    ([], "Pass --init"),
    (["--init", "{tmp}/missing"], "Could not load the starting VLE"),
    (["--init", "{tmp}/start", "--output_dir", "{tmp}/a_file"], "is a file, not a folder"),
])
def test_cli_user_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "a_file").write_text("x")
    argv = [part.format(tmp=tmp_path) for part in argv]
    if "--output_dir" not in argv:
        argv += ["--output_dir", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------- the committed checkpoint
def test_bundled_checkpoint_loads_into_every_head_class_without_missing_keys():
    loaded = {}
    for cls in HEAD_CLASSES:
        model, info = cls.from_pretrained(PRETRAIN_DIR, local_files_only=True, output_loading_info=True)
        assert not any(info.values()), (cls.__name__, info)
        loaded[cls] = model
    backbone = loaded[VLEModel].state_dict()
    for head in (VLEForITM, VLEForPBC, VLEForMLM):
        for key, value in loaded[head].vle.state_dict().items():
            assert torch.equal(value, backbone[key])
    mlm = loaded[VLEForMLM]
    assert mlm.get_output_embeddings().weight.data_ptr() == mlm.get_input_embeddings().weight.data_ptr()


def test_bundled_checkpoint_is_small_and_documented():
    size = sum(f.stat().st_size for f in PRETRAIN_DIR.rglob("*") if f.is_file())
    assert size <= 10 * 2**20
    labels = (PRETRAIN_DIR / LABELS_FILE).read_text().split("\n")
    assert [label for label in labels if label] == zero_shot_labels()
    card = (PRETRAIN_DIR / "README.md").read_text()
    for words in ("ITM", "zero-shot", "IoU", "MLM", "build", "python -m training.bundle build --only pretrain"):
        assert words in card
    log = json.loads((PRETRAIN_DIR / "build_log.json").read_text())
    assert log["seconds"] > 0 and log["images"] == 4000


def test_bundled_checkpoint_scores_on_test_images():
    """The figures of the model card, on the first 60 test images (the full split: training.bundle evaluate)."""
    assert len(easy_vqa_test_images()) == 1000
    result = evaluate_pretraining(PRETRAIN_DIR, limit=60)
    assert result["images"] == 60
    assert result["zero_shot"]["top1"] >= 0.9 and result["itm"]["accuracy"] >= 0.9
    assert result["pbc"]["iou"] >= 0.5 and result["pbc"]["ratio_2x_share"] >= 0.9
    assert result["mlm"]["accuracy"] >= 0.9 and result["mlm"]["masked_words"] == 120
