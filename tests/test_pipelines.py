"""VLE task pipelines on the tiny oracle checkpoints (original on-disk format) with a tiny processor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import odd_images as odd
import vle
from tiny_vle_processor import write_original_processor_files
from vle.errors import VLEInputError
from vle.heatmap import darkness_grid
from vle.patch_geometry import AxisMap, PlaneMap, box_patch_ids
from vle.pipeline_vle import (
    VLEForITMPipeline,
    VLEForPBCPipeline,
    VLEForVCRQ2APipeline,
    VLEForVCRQA2RPipeline,
    VLEForVQAPipeline,
)
from vle.processing_vle import VLEProcessor
from vle.vcr_inputs import NO_OBJECT, encode_tagged, object_names, object_token_types, q2a_texts, qa2r_texts
from vle_reference import oracle

GRID = 6  # tiny oracle: 48 px images, 8 px patches

# The VCR validation example quoted in the original VLE README (objects 0-2 are people).
ANNOTATION = {
    "objects": ["person", "person", "person", "car", "cellphone", "clock"],
    "question": ["Does", [0], "live", "in", "this", "house", "?"],
    "answer_choices": [
        ["No", ",", [0], "lives", "nowhere", "close", "."],
        ["Yes", ",", [0], "works", "there", "."],
        ["No", ",", [0], "is", "a", "visitor", "."],
        ["No", [1], "does", "not", "belong", "here", "."],
    ],
    "answer_label": 2,
    "rationale_choices": [
        [[0], "is", "nicely", "dressed", "with", "a", "tie", "."],
        [[2], "sits", "in", "a", "chair", ",", "while", [0], "has", "just", "arrived", "."],
        [[1], "is", "wearing", "a", "coat", "and", "is", "sitting", "as", "if", "a", "visitor", "."],
        [[0, 3], "is", "wearing", "outerwear", ",", "and", "there", "is", "a", "car", "outside", "."],
    ],
    "rationale_label": 3,
}
METADATA = {
    "boxes": [[0, 0, 30, 40, 0.9], [40, 10, 60, 47, 0.8], [10, 5, 20, 15, 0.7], [50, 0, 63, 20, 0.5],
              [1, 1, 2, 2, 0.3], [5, 5, 6, 6, 0.2]],
    "width": 64,
    "height": 48,
}


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    return VLEProcessor.from_pretrained(write_original_processor_files(tmp_path_factory.mktemp("proc"), image_size=48))


def make(pipeline_class, model_class, processor):
    model = getattr(vle, model_class).from_pretrained(oracle(model_class)).eval()
    return pipeline_class(model=model, device="cpu", vle_processor=processor)


@pytest.fixture(scope="module")
def vqa(processor):
    return make(VLEForVQAPipeline, "VLEForVQA", processor)


@pytest.fixture(scope="module")
def itm(processor):
    return make(VLEForITMPipeline, "VLEForITM", processor)


@pytest.fixture(scope="module")
def pbc(processor):
    return make(VLEForPBCPipeline, "VLEForPBC", processor)


@pytest.fixture(scope="module")
def image():
    return odd.noise(60, 40, seed=7)


def direct_logits(pipe, processor, image, text):
    with torch.no_grad():
        return pipe.model(**processor(text=[text], images=[image])).logits[0]


# --- VQA -----------------------------------------------------------------------------------------------------


def test_vqa_answers_sorted_with_softmax_scores(vqa, processor, image):
    question = "What is the color of the floor?"
    answers = vqa(image=image, question=question, top_k=3)
    assert len(answers) == 3 and all(set(a) == {"answer", "score"} for a in answers)
    scores = [a["score"] for a in answers]
    assert scores == sorted(scores, reverse=True)
    labels = set(vqa.model.config.id2label.values())
    assert all(a["answer"] in labels for a in answers)
    expected = torch.softmax(direct_logits(vqa, processor, image, question), -1)
    best = int(expected.argmax())
    assert answers[0]["answer"] == vqa.model.config.id2label[best]
    assert answers[0]["score"] == pytest.approx(float(expected[best]), abs=1e-5)
    everything = vqa(image=image, question=question, top_k=100)
    assert len(everything) == len(labels)  # top_k clamped to the number of labels
    assert sum(a["score"] for a in everything) == pytest.approx(1.0, abs=1e-5)
    assert len(vqa(image=image, question=question, top_k=0)) == 1


def test_vqa_sigmoid_scores(vqa, processor, image):
    question = "How many birds are there?"
    answers = vqa(image=image, question=question, top_k=4, score="sigmoid")
    logits = direct_logits(vqa, processor, image, question)
    expected = torch.sigmoid(logits).sort(descending=True).values[:4]
    assert [a["score"] for a in answers] == pytest.approx(expected.tolist(), abs=1e-5)
    with pytest.raises(VLEInputError, match="score"):
        vqa(image=image, question=question, score="argmax")


def test_vqa_batch_matches_single_calls(vqa, image):
    other = odd.noise(40, 60, seed=8)
    questions = ["What is the color of the floor?", "Is the man holding an umbrella?"]
    batched = vqa(image=[image, other], question=questions, top_k=2)
    assert len(batched) == 2
    for answers, img, question in zip(batched, [image, other], questions):
        single = vqa(image=img, question=question, top_k=2)
        assert [a["answer"] for a in answers] == [a["answer"] for a in single]
        assert [a["score"] for a in answers] == pytest.approx([a["score"] for a in single], abs=1e-5)
    # the original call styles: a dict, and a list of dicts
    as_dict = vqa({"image": image, "question": questions[0]}, top_k=2)
    as_list = vqa([{"image": image, "question": q} for q in questions], top_k=2)
    assert [a["answer"] for a in as_dict] == [a["answer"] for a in batched[0]]
    assert [[a["answer"] for a in answers] for answers in as_list][0] == [a["answer"] for a in batched[0]]


def test_vqa_with_cached_image_embeds(vqa, image):
    embeds = vqa.encode_image(image)
    assert embeds.shape == (1, 1 + GRID * GRID, vqa.model.config.hidden_size)
    questions = ["What is the color of the floor?", "How many birds are sitting on the fence?"]
    cached = vqa(image_embeds=embeds, question=questions, top_k=3)
    fresh = vqa(image=image, question=questions, top_k=3)
    for a, b in zip(cached, fresh):
        assert [x["answer"] for x in a] == [x["answer"] for x in b]
        assert [x["score"] for x in a] == pytest.approx([x["score"] for x in b], abs=1e-5)
    single = vqa(image_embeds=embeds[0], question=questions[0], top_k=1)
    assert single[0]["answer"] == cached[0][0]["answer"]


def test_vqa_user_errors(vqa, image, tmp_path):
    with pytest.raises(VLEInputError, match="empty"):
        vqa(image=image, question="   ")
    with pytest.raises(VLEInputError, match="question"):
        vqa(image=image)
    path = tmp_path / "image.png"
    path.write_bytes(odd.encode(image))
    from_path = vqa(image=str(path), question="what?", top_k=1)[0]
    from_image = vqa(image=image, question="what?", top_k=1)[0]
    assert from_path["answer"] == from_image["answer"]
    assert from_path["score"] == pytest.approx(from_image["score"], abs=1e-5)


# --- ITM -----------------------------------------------------------------------------------------------------


def test_itm_match_probability(itm, processor, image):
    texts = ["a photo of a cat.", "a photo of dogs."]
    results = itm(image=image, text=texts)
    assert len(results) == 2
    for result, text in zip(results, texts):
        expected = float(torch.softmax(direct_logits(itm, processor, image, text), -1)[1])
        assert result["score"] == pytest.approx(expected, abs=1e-5)
        assert 0.0 <= result["score"] <= 1.0 and result["match"] == (result["score"] > 0.5)
    single = itm(image=image, text=texts[0])
    assert single["score"] == pytest.approx(results[0]["score"], abs=1e-5)
    original_style = itm([{"image": image, "text": t} for t in texts])
    assert [r["score"] for r in original_style] == pytest.approx([r["score"] for r in results], abs=1e-5)


# --- PBC -----------------------------------------------------------------------------------------------------


def test_pbc_relevance_and_heatmap(pbc, processor, image):
    result = pbc(image=image, text="pink tongues")
    relevance = result["relevance"]
    assert relevance.shape == (GRID, GRID) and ((relevance >= 0) & (relevance <= 1)).all()
    expected = torch.softmax(direct_logits(pbc, processor, image, "pink tongues"), -1)[:, 1].reshape(GRID, GRID)
    np.testing.assert_allclose(relevance, expected.numpy(), atol=1e-5)
    assert result["heatmap"].size == image.size and result["image"] is result["heatmap"]
    assert len(result["score"]) == GRID * GRID


def test_pbc_heatmap_paints_the_right_patches(pbc):
    white = Image.new("RGB", (64, 48), odd.WHITE)  # shortest edge 48: the model sees columns 8..55
    result = pbc(image=white, text="pink tongues", alpha=0.6)
    heat = np.asarray(result["heatmap"])[..., 0].astype(int)
    darkness = darkness_grid(result["relevance"], 0.6)
    for row in range(GRID):
        for col in range(GRID):
            y, x = row * 8 + 4, 8 + col * 8 + 4  # centre of each patch in the source image
            assert abs(heat[y, x] - 255 * (1 - darkness[row, col])) <= 1
    assert abs(heat[24, 2] - 255 * 0.4) <= 1 and abs(heat[24, 61] - 255 * 0.4) <= 1  # unseen: fully darkened
    assert heat.max() == 255  # the most relevant patch is left untouched


@pytest.mark.parametrize("size", [(600, 20), (20, 300), (1, 1), (5000, 700)])
def test_pbc_heatmap_has_the_input_size(pbc, size):
    result = pbc(image=Image.new("RGB", size, odd.RED), text="pink")
    assert result["heatmap"].size == size


def test_pbc_several_texts_and_alpha_check(pbc, image):
    results = pbc(image=image, text=["pink tongues", "a cat"])
    assert len(results) == 2 and all(r["heatmap"].size == image.size for r in results)
    with pytest.raises(VLEInputError, match="alpha"):
        pbc(image=image, text="pink", alpha=2.0)


# --- VCR -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vcr_image():
    return odd.noise(64, 48, seed=9)


@pytest.fixture(scope="module")
def q2a(processor):
    return make(VLEForVCRQ2APipeline, "VLEForVCRQ2A", processor)


@pytest.fixture(scope="module")
def qa2r(processor):
    return make(VLEForVCRQA2RPipeline, "VLEForVCRQA2R", processor)


def test_object_names_rotate_over_people():
    assert object_names(["person", "car", "person"]) == ["Casey", "car", "Riley"]


def test_vcr_texts_tag_object_pieces(processor):
    tokenizer = processor.tokenizer
    texts = q2a_texts(ANNOTATION, tokenizer)
    assert len(texts) == 4
    casey = tokenizer.tokenize(" Casey")
    riley = tokenizer.tokenize(" Riley")
    last = texts[3]
    sep_at = [p.piece for p in last].index(tokenizer.sep_token)
    question_tags = [p.tag for p in last[:sep_at]]
    assert question_tags.count(0) == len(casey) and set(question_tags) == {NO_OBJECT, 0}
    assert [p.tag for p in last[sep_at + 1 :]].count(1) == len(riley)
    object_ids, added, text_types = object_token_types(last)
    assert sorted(object_ids) == [0, 1] and sorted(added) == [2, 3]
    assert len(text_types) == len(last) + 2 and text_types[0] == text_types[-1] == 0
    assert {t for p, t in zip(last, text_types[1:-1]) if p.tag != NO_OBJECT} == set(added)
    assert all(t == 0 for p, t in zip(last, text_types[1:-1]) if p.tag == NO_OBJECT)
    # "[0, 3]": "Casey and car" -- the "and" piece names no object
    rationale = qa2r_texts(ANNOTATION, tokenizer)[3]
    tags = [p.tag for p in rationale]
    assert tags.index(3) > len(tags) - tags[::-1].index(0) - 1  # car pieces come after Casey's
    assert NO_OBJECT in tags[tags.index(3) - 2 : tags.index(3)]


def test_vcr_ids_equal_the_originals_retokenization(processor):
    tokenizer = processor.tokenizer
    for text in q2a_texts(ANNOTATION, tokenizer) + qa2r_texts(ANNOTATION, tokenizer):
        original = tokenizer("".join(p.piece for p in text), padding="max_length", truncation=True, max_length=80)
        ours = encode_tagged(text, tokenizer)
        assert ours == {k: original[k] for k in ours}


def test_vcr_truncation_keeps_80_tokens(processor):
    long = dict(ANNOTATION, question=["Does", [0], "live"] + ["very"] * 200 + ["?"])
    for text in q2a_texts(long, processor.tokenizer) + qa2r_texts(long, processor.tokenizer):
        assert len(encode_tagged(text, processor.tokenizer)["input_ids"]) == 80
        assert len(text) <= 78


def test_object_token_types_follow_set_order():
    from vle.vcr_inputs import TaggedPiece

    text = [TaggedPiece("x", 5, tag) for tag in (9, -1, 3, 9, 17, 3)]
    object_ids, added, types = object_token_types(text)
    assert object_ids == list({9, 3, 17})  # the original numbered objects in set iteration order
    assert added == [2, 3, 4][: len(object_ids)]
    mapping = dict(zip(object_ids, added))
    assert types == [0, mapping[9], 0, mapping[3], mapping[9], mapping[17], mapping[3], 0]


def test_box_patch_ids_match_the_original_on_square_images():
    # on a square image resized to the model size, the crop-aware map is the original's whole-image map
    def original(box, width, height, grid):
        pw, ph = width / grid, height / grid
        x1, y1 = max(int(box[0] // pw), 0), max(int(box[1] // ph), 0)
        x2, y2 = int(box[2] // pw), int(box[3] // ph)
        x2 = x2 + 1 if x2 < grid else grid
        y2 = y2 + 1 if y2 < grid else grid
        return [grid * y + x for y in range(y1, y2) for x in range(x1, x2)]

    to_grid = PlaneMap(AxisMap(48 / 96 / 8), AxisMap(48 / 96 / 8))
    for box in ([0, 0, 95, 95], [10, 20, 30, 40], [16, 16, 32, 32], [80, 5, 95.9, 90], [47.9, 48, 48.1, 50]):
        assert box_patch_ids(box, to_grid, GRID, GRID) == original(box, 96, 96, GRID)
    assert box_patch_ids([-50, -50, -10, -10], to_grid, GRID, GRID) == [0]  # never empty


@pytest.mark.parametrize("which", ["q2a", "qa2r"])
def test_vcr_pipelines_on_the_oracle_checkpoints(request, vcr_image, which):
    pipe = request.getfixturevalue(which)
    outputs = pipe(meta_inputs=ANNOTATION, image=vcr_image, metadata=METADATA)
    assert len(outputs) == 1
    result = outputs[0]
    assert len(result["score"]) == 4 and sum(result["score"]) == pytest.approx(1.0, abs=1e-5)
    assert result["pred"] == [int(np.argmax(result["logits"]))] == [int(np.argmax(result["score"]))]
    model_inputs = pipe.preprocess({"annotation": ANNOTATION, "image": vcr_image, "metadata": METADATA})["model_inputs"]
    assert len(model_inputs["input_ids"]) == 4 and model_inputs["input_ids"][0].shape == (1, 80)
    for choice_patches, (added, text_types) in zip(model_inputs["patch_ids"], model_inputs["extend_token_type_ids"]):
        assert len(choice_patches) == 1 and len(added) == 1 and len(choice_patches[0]) == len(added[0])
        assert all(box and all(0 <= i < GRID * GRID for i in box) for box in choice_patches[0])
        assert all(t >= 2 for t in added[0]) and set(text_types[0]) - {0} == set(added[0])
    with torch.no_grad():
        direct = pipe.model(**model_inputs).logits[0]
    assert result["logits"] == pytest.approx(direct.tolist(), abs=1e-5)


def test_vcr_boxes_map_through_the_centre_crop(q2a, vcr_image):
    pipe = q2a
    model_inputs = pipe.preprocess({"annotation": ANNOTATION, "image": vcr_image, "metadata": METADATA})["model_inputs"]
    # 64x48 -> crop columns 8..55; box 0 = (0, 0, 30, 40): columns 0..2, all rows; box 1 = (40, 10, 60, 47)
    box0 = [row * GRID + col for row in range(6) for col in range(3)]
    box1 = [row * GRID + col for row in range(1, 6) for col in range(4, 6)]
    assert model_inputs["patch_ids"][0] == [[box0]]
    assert model_inputs["patch_ids"][3] == [[box0, box1]] or model_inputs["patch_ids"][3] == [[box1, box0]]
    # metadata in another resolution (boxes for a 128x96 original) maps to the same patches
    doubled = dict(METADATA, width=128, height=96, boxes=[[2 * v for v in b[:4]] + [b[4]] for b in METADATA["boxes"]])
    again = pipe.preprocess({"annotation": ANNOTATION, "image": vcr_image, "metadata": doubled})["model_inputs"]
    assert again["patch_ids"] == model_inputs["patch_ids"]


def test_vcr_original_call_style_with_files(q2a, vcr_image, tmp_path):
    pipe = q2a
    (tmp_path / "movie").mkdir()
    vcr_image.save(tmp_path / "movie" / "frame.jpg", quality=95)
    (tmp_path / "movie" / "frame.json").write_text(json.dumps(METADATA))
    annotation = dict(ANNOTATION, img_fn="movie/frame.jpg", metadata_fn="movie/frame.json")
    outputs = pipe(vcr_image_root=str(tmp_path), meta_inputs=annotation)
    assert outputs[0]["pred"][0] in range(4)


def test_vcr_user_errors(q2a, qa2r, vcr_image):
    with pytest.raises(VLEInputError, match="answer_label"):
        no_label = {k: v for k, v in ANNOTATION.items() if k != "answer_label"}
        qa2r(meta_inputs=no_label, image=vcr_image, metadata=METADATA)
    with pytest.raises(VLEInputError, match="image"):
        q2a(meta_inputs=ANNOTATION, metadata=METADATA)
    crowded = dict(ANNOTATION, objects=["car"] * 6, question=["Is", [0], [1], [2], [3], [4], "?"])
    with pytest.raises(VLEInputError, match="at most"):  # the tiny model has 6 token types: 4 objects
        q2a(meta_inputs=crowded, image=vcr_image, metadata=METADATA)
    with pytest.raises(VLEInputError, match="does not index"):
        q2a(meta_inputs=dict(ANNOTATION, question=["Is", [9], "?"]), image=vcr_image, metadata=METADATA)
