"""Generated shape scenes in the VCR layout (training.vcr_scenes): read by the VCR reader, deterministic, and every
right answer checked against the image itself (the colour read from the pixels under each box, the relations
from the boxes), not against the generator's own bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.shape_scenes import COLOR_RGB
from training.vcr_scenes import COUNT_WORDS, KINDS, main, write_scenes
from vle.vcr_data import load_vcr

COUNT = 60


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    write_scenes(out, seed=3, count=COUNT)
    return out


def _pixel_color(image: np.ndarray, box: list[float]) -> str:
    """The easy-VQA colour nearest to the pixel at a point inside every shape drawn in ``box`` (a triangle
    pointing up holds the point at two thirds of its height on its vertical axis)."""
    x = int((box[0] + box[2]) / 2)
    y = int(box[1] + 2 * (box[3] - box[1]) / 3)
    pixel = image[y, x].astype(int)
    return min(COLOR_RGB, key=lambda name: int(((np.array(COLOR_RGB[name]) - pixel) ** 2).sum()))


def _truth(record: dict, boxes: list[list[float]], colors: list[str]) -> list:
    """The right answer of a record, worked out here from the image's colours and the boxes."""
    question, kind = record["question"], record["question_kind"]
    refs = [token[0] for token in question if isinstance(token, list)]
    if kind == "color":
        return ["It", "is", colors[refs[0]], "."]
    if kind == "same_color":
        n, m = refs
        if colors[n] == colors[m]:
            return ["Yes", ",", "both", "are", colors[n], "."]
        return ["No", ",", [n], "is", colors[n], "and", [m], "is", colors[m], "."]
    if kind == "count":
        n = refs[0]
        return [COUNT_WORDS[sum(1 for i, c in enumerate(colors) if i != n and c == colors[n])], "."]
    m = refs[0]

    def holds(a: int) -> bool:
        first, second = boxes[a], boxes[m]
        if kind == "left_of":
            return first[2] <= second[0]
        if kind == "above":
            return first[3] <= second[1]
        area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
        return area(first) >= 1.5 * area(second)

    holders = [a for a in range(len(boxes)) if a != m and holds(a)]
    assert len(holders) <= 1, "a relation question must have one right answer"
    words = question[3:-2]
    return [[holders[0]], "."] if holders else ["No", "shape", "is", *words, [m], "."]


def test_every_item_is_valid_vcr_with_the_right_answer(scenes):
    items = load_vcr(scenes / "val.jsonl", scenes / "images", require_labels=True)
    records = [json.loads(line) for line in (scenes / "val.jsonl").read_text().splitlines()]
    assert len(items) == len(records) == COUNT
    assert {r["question_kind"] for r in records} == set(KINDS)
    for item, record in zip(items, records):
        assert 2 <= len(item.objects) <= 4 and set(item.objects) <= {"circle", "rectangle", "triangle"}
        boxes = [box[:4] for box in item.boxes]
        for a, first in enumerate(boxes):  # the shapes' boxes are apart
            for second in boxes[a + 1:]:
                assert first[2] <= second[0] or second[2] <= first[0] or first[3] <= second[1] or second[3] <= first[1]
        image = np.asarray(Image.open(item.image_path).convert("RGB"))
        colors = [_pixel_color(image, box) for box in boxes]
        answers, rationales = item.answer_choices, item.rationale_choices
        assert answers[item.answer_label] == _truth(record, boxes, colors), record["annot_id"]
        assert len({json.dumps(a) for a in answers}) == 4 and len({json.dumps(r) for r in rationales}) == 4
        right_rationale = rationales[item.rationale_label]
        named = {i for token in right_rationale if isinstance(token, list) for i in token}
        assert named & {i for token in record["question"] if isinstance(token, list) for i in token}


def test_the_same_seed_writes_the_same_files(scenes, tmp_path):
    write_scenes(tmp_path / "again", seed=3, count=COUNT)
    write_scenes(tmp_path / "other", seed=4, count=COUNT)
    assert (tmp_path / "again" / "val.jsonl").read_bytes() == (scenes / "val.jsonl").read_bytes()
    for name in ("val/00000.png", "val/00007.json"):
        assert (tmp_path / "again" / "images" / name).read_bytes() == (scenes / "images" / name).read_bytes()
    assert (tmp_path / "other" / "val.jsonl").read_bytes() != (scenes / "val.jsonl").read_bytes()


def test_the_command_line(tmp_path, capsys):
    assert main(["--seed", "1", "--count", "3", "--out", str(tmp_path), "--split", "train"]) == 0
    assert len(load_vcr(tmp_path / "train.jsonl", tmp_path / "images")) == 3
    assert main(["--seed", "1", "--count", "3", "--out", str(tmp_path), "--split", "train"]) == 2
    assert "train.jsonl exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--seed", "1", "--count", "0", "--out", str(tmp_path)])
    assert not Path(tmp_path / "val.jsonl").exists()
