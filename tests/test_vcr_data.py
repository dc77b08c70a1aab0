"""The VCR reader (:mod:`vle.vcr_data`) on a hand-written fixture in the official layout (tests/fixtures/vcr: people,
several objects in one reference, punctuation, a test file without labels), and on broken records: each refused
with a message naming the file, the line and the record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

import vle
from tiny_vle_processor import write_original_processor_files
from vle.pipeline_vle import VLEForVCRQ2APipeline, VLEForVCRQA2RPipeline
from vle.processing_vle import VLEProcessor
from vle.vcr_data import VCRDataError, load_vcr
from vle.vcr_inputs import NO_OBJECT, q2a_texts, qa2r_texts
from vle_reference import oracle

FIXTURE = Path(__file__).parent / "fixtures" / "vcr"
IMAGES = FIXTURE / "images"


def test_the_fixture_is_read_with_its_boxes_and_labels():
    items = load_vcr(FIXTURE / "val.jsonl", IMAGES)
    assert [item.annot_id for item in items] == ["val-0", "val-1"]
    first = items[0]
    assert first.objects == ("person", "person", "person", "car", "cellphone", "clock")
    assert first.labelled and (first.answer_label, first.rationale_label) == (2, 3)
    assert first.rationale_choices[3][0] == [0, 3]  # two objects in one reference
    assert first.metadata()["width"] == 64 and len(first.metadata()["boxes"]) == 6
    assert Path(first.image_path).is_file() and Path(first.image_path).is_relative_to(IMAGES.resolve())
    assert first.annotation()["answer_label"] == 2 and "img_fn" not in first.annotation()


def test_a_question_kind_is_read_when_the_record_has_one_as_text(tmp_path):
    assert [item.question_kind for item in load_vcr(FIXTURE / "val.jsonl", IMAGES)] == [None, None]
    first, second = [json.loads(line) for line in (FIXTURE / "val.jsonl").read_text().splitlines()]
    path = tmp_path / "val.jsonl"
    path.write_text(json.dumps(_edit(first, question_kind="colour")) + "\n"
                    + json.dumps(_edit(second, question_kind=3)) + "\n")
    assert [item.question_kind for item in load_vcr(path, IMAGES)] == ["colour", None]


def test_a_test_file_is_read_for_prediction_and_refused_for_training():
    items = load_vcr(FIXTURE / "test.jsonl", IMAGES)
    assert not any(item.labelled for item in items) and "answer_label" not in items[0].annotation()
    with pytest.raises(VCRDataError, match=r"test.jsonl, line 1 \(test-0\): no answer_label/rationale_label"):
        load_vcr(FIXTURE / "test.jsonl", IMAGES, require_labels=True)
    unlabelled = load_vcr(FIXTURE / "val.jsonl", IMAGES, require_labels=False)
    assert not any(item.labelled for item in unlabelled)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    processor = VLEProcessor.from_pretrained(write_original_processor_files(tmp_path_factory.mktemp("proc"),
                                                                           image_size=48))

    def make(pipeline_class, model_class):
        model = getattr(vle, model_class).from_pretrained(oracle(model_class)).eval()
        return pipeline_class(model=model, device="cpu", vle_processor=processor)

    return processor, make(VLEForVCRQ2APipeline, "VLEForVCRQ2A"), make(VLEForVCRQA2RPipeline, "VLEForVCRQA2R")


def test_the_items_are_tagged_and_scored_by_the_vcr_pipelines(pipelines):
    processor, q2a, qa2r = pipelines
    for item in load_vcr(FIXTURE / "val.jsonl", IMAGES):
        texts = q2a_texts(item.annotation(), processor.tokenizer)
        tags = {piece.tag for text in texts for piece in text} - {NO_OBJECT}
        named = {i for choice in item.answer_choices + [item.question] for token in choice
                 if isinstance(token, list) for i in token}
        assert tags == named  # every object the question and answers name, and no other
        assert len(qa2r_texts(item.annotation(), processor.tokenizer)) == 4
        image = Image.open(item.image_path)
        for pipe in (q2a, qa2r):
            (scores,) = pipe(meta_inputs=item.annotation(), image=image, metadata=item.metadata())
            assert len(scores["score"]) == 4 and sum(scores["score"]) == pytest.approx(1.0, abs=1e-5)


def _edit(record: dict, **changes) -> dict:
    return {**record, **changes}


BROKEN = {
    "a line that is no JSON": (lambda r: "{not json", "line 2: not a JSON object"),
    "a missing field": (lambda r: {k: v for k, v in r.items() if k != "img_fn"}, r"missing field\(s\) img_fn"),
    "three answers": (lambda r: _edit(r, answer_choices=r["answer_choices"][:3]),
                      "answer_choices must be a list of 4 token lists"),
    "an object that does not exist": (lambda r: _edit(r, question=["Is", [9], "here", "?"]),
                                      "question refers to object 9, but the record has 6 objects"),
    "a number as a token": (lambda r: _edit(r, question=["Is", 5, "?"]), "the token 5"),
    "an empty choice": (lambda r: _edit(r, rationale_choices=[[], *r["rationale_choices"][1:]]),
                        r"rationale_choices\[0\] must be a non-empty list"),
    "a label out of range": (lambda r: _edit(r, answer_label=4), "answer_label must be 0 to 3, got 4"),
    "a missing image": (lambda r: _edit(r, img_fn="lsmdc_movie/gone.jpg"), "no image at"),
    "an image outside the folder": (lambda r: _edit(r, img_fn="../../test_vcr_data.py"),
                                    "lies outside the images folder"),
    "a missing metadata file": (lambda r: _edit(r, metadata_fn="lsmdc_movie/gone.json"), "no metadata file at"),
    "too few boxes": (lambda r: _edit(r, metadata_fn="lsmdc_movie/frame_0002.json"),
                      "has 3 boxes for 6 objects"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_record_is_refused_naming_it(tmp_path, case):
    make, message = BROKEN[case]
    good = [json.loads(line) for line in (FIXTURE / "val.jsonl").read_text().splitlines()]
    broken = make(good[0])
    path = tmp_path / "val.jsonl"
    path.write_text(json.dumps(good[1]) + "\n" + (broken if isinstance(broken, str) else json.dumps(broken)) + "\n")
    with pytest.raises(VCRDataError, match=message) as raised:
        load_vcr(path, IMAGES)
    assert f"{path}, line 2" in str(raised.value)
    if not isinstance(broken, str):
        assert "(val-0)" in str(raised.value)


def test_bad_metadata_and_duplicates_are_refused(tmp_path):
    images = tmp_path / "images"
    shutil.copytree(IMAGES, images)
    meta = images / "lsmdc_movie" / "frame_0001.json"
    data = json.loads(meta.read_text())
    line = (FIXTURE / "val.jsonl").read_text().splitlines()[0]
    path = tmp_path / "val.jsonl"
    path.write_text(line + "\n")
    for bad, message in ((dict(data, boxes=[[30, 0, 10, 40, 0.9]] + data["boxes"][1:]), "box 0 in frame_0001.json"),
                         (dict(data, width=0), "needs a positive width and height"), ("[1, 2]", "JSON object")):
        meta.write_text(bad if isinstance(bad, str) else json.dumps(bad))
        with pytest.raises(VCRDataError, match=message):
            load_vcr(path, images)
    meta.write_text(json.dumps(data))
    path.write_text(line + "\n" + line + "\n")
    with pytest.raises(VCRDataError, match=r"line 2 \(val-0\): annot_id 'val-0' appears twice"):
        load_vcr(path, images)
    for missing, message in ((tmp_path / "none.jsonl", "No VCR annotation file"), (path, "No VCR images folder")):
        with pytest.raises(VCRDataError, match=message):
            load_vcr(missing, images if missing != path else tmp_path / "nowhere")
