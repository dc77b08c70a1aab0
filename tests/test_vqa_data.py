"""Tests of the VQA dataset readers (vle.vqa_data): easy-VQA from the pip package, VQAv2-format
files written here, image lookup, soft scores and the answer vocabulary."""

import json
from collections import Counter

import pytest
from PIL import Image

from vle.vqa_data import (
    VQADataError,
    VQAExample,
    build_answer_vocab,
    image_for,
    load_easy_vqa,
    load_vqav2,
    soft_score,
    vqa_target_scores,
)

# ---------------------------------------------------------------- easy-VQA


@pytest.fixture(scope="module")
def easy_train():
    return load_easy_vqa("train")


@pytest.fixture(scope="module")
def easy_test():
    return load_easy_vqa("test")


def test_easy_vqa_split_sizes_match_the_documented_numbers(easy_train, easy_test):
    assert len(easy_train) == 38_575
    assert len(easy_test) == 9_673
    assert len({e.image_id for e in easy_train}) == 4_000
    assert len({e.image_id for e in easy_test}) == 1_000
    answers = {e.answers[0] for e in easy_train} | {e.answers[0] for e in easy_test}
    assert len(answers) == 13
    # the package's README: 28,407 train and 7,136 test questions are yes/no
    assert sum(e.question_type == "yes/no" for e in easy_train) == 28_407
    assert sum(e.question_type == "yes/no" for e in easy_test) == 7_136


def test_easy_vqa_examples_look_like_vqav2(easy_test):
    first = easy_test[0]
    assert first.question_id == 0
    assert first.image_path.endswith(f"{first.image_id}.png")
    assert len(first.answers) == 10 and len(set(first.answers)) == 1
    assert [e.question_id for e in easy_test[:5]] == [0, 1, 2, 3, 4]


def test_easy_vqa_question_kinds(easy_train):
    kinds = Counter(e.question_type for e in easy_train)
    assert set(kinds) == {"shape", "color", "yes/no"}
    for example in easy_train:
        answer = example.answers[0]
        if example.question_type == "yes/no":
            assert answer in ("yes", "no") and example.answer_type == "yes/no"
        elif example.question_type == "shape":
            assert answer in ("circle", "rectangle", "triangle") and example.answer_type == "other"
        else:
            assert example.answer_type == "other"
            assert answer not in ("yes", "no", "circle", "rectangle", "triangle")
    # the kind read off the answer agrees with the wording of the question: easy-VQA's open
    # questions ask "what color is ...", "what is the color of ..." or about the shape
    for example in easy_train:
        if example.question_type != "yes/no":
            asks_color = " color " in f" {example.question} "
            assert example.question_type == ("color" if asks_color else "shape"), example.question


def test_easy_vqa_images_open_as_rgb(easy_test):
    image = image_for(easy_test[0])
    assert image.mode == "RGB"
    assert image.size == (64, 64)


def test_easy_vqa_unknown_split():
    with pytest.raises(VQADataError, match="'train' and 'test'"):
        load_easy_vqa("val")


def test_easy_vqa_returns_fresh_examples():
    a, b = load_easy_vqa("test"), load_easy_vqa("test")
    a[0].answers.append("changed")
    assert len(b[0].answers) == 10


# ---------------------------------------------------------------- VQAv2-format files


def _write(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _image(path, color=(255, 0, 0), mode="RGB"):
    Image.new(mode, (8, 6), color).save(path)
    return path


@pytest.fixture()
def vqav2(tmp_path):
    """A tiny val2014-style dataset: 3 questions on 2 images, with annotations."""
    images = tmp_path / "val2014"
    images.mkdir()
    _image(images / "COCO_val2014_000000000042.jpg")
    _image(images / "COCO_val2014_000000000007.jpg", color=(0, 0, 255))
    questions = _write(tmp_path / "q.json", {
        "data_subtype": "val2014",
        "questions": [
            {"image_id": 42, "question": "What color is the car?", "question_id": 420},
            {"image_id": 42, "question": "Is it raining?", "question_id": 421},
            {"image_id": 7, "question": "How many cats?", "question_id": 70},
        ],
    })
    answers_421 = ["no"] * 8 + ["yes"] * 2
    annotations = _write(tmp_path / "a.json", {
        "data_subtype": "val2014",
        "annotations": [
            {"question_id": 70, "image_id": 7, "question_type": "how many", "answer_type": "number",
             "multiple_choice_answer": "2",
             "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                         for i, a in enumerate(["2"] * 6 + ["two"] * 3 + ["3"])]},
            {"question_id": 420, "image_id": 42, "question_type": "what color is the",
             "answer_type": "other", "multiple_choice_answer": "red",
             "answers": [{"answer": "red", "answer_id": i + 1} for i in range(10)]},
            {"question_id": 421, "image_id": 42, "question_type": "is it", "answer_type": "yes/no",
             "multiple_choice_answer": "no",
             "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers_421)]},
        ],
    })
    return questions, annotations, images


def test_vqav2_with_annotations(vqav2):
    questions, annotations, images = vqav2
    examples = load_vqav2(questions, annotations, images_dir=images)
    assert [e.question_id for e in examples] == [420, 421, 70]  # question-file order
    first, _, last = examples
    assert first == VQAExample(
        question_id=420, image_id="42", image_path=str(images / "COCO_val2014_000000000042.jpg"),
        question="What color is the car?", answers=["red"] * 10, answer_type="other",
        question_type="what color is the")
    assert last.answers == ["2"] * 6 + ["two"] * 3 + ["3"]
    assert last.answer_type == "number" and last.question_type == "how many"
    red, green, blue = image_for(last).getpixel((0, 0))  # JPEG: blue, give or take rounding
    assert blue > 250 and red < 5 and green < 5


def test_vqav2_without_annotations(vqav2):
    questions, _, images = vqav2
    examples = load_vqav2(questions, images_dir=images)
    assert len(examples) == 3
    assert all(e.answers == [] and e.answer_type == "" and e.question_type == "" for e in examples)


def test_vqav2_without_images_dir_gives_expected_file_names(vqav2):
    questions, _, _ = vqav2
    examples = load_vqav2(questions)
    assert examples[2].image_path == "COCO_val2014_000000000007.jpg"


def test_vqav2_image_found_by_zero_padded_id_suffix(tmp_path):
    # A-OKVQA / COCO 2017 style names, and a PNG under another prefix
    images = tmp_path / "imgs"
    images.mkdir()
    _image(images / "000000000042.jpg")
    _image(images / "other_000000000007.png", mode="L", color=128)
    (images / "notes_000000000099.txt").write_text("not an image")
    questions = _write(tmp_path / "q.json", {"data_subtype": "val2017", "questions": [
        {"image_id": 42, "question": "q1", "question_id": 1},
        {"image_id": 7, "question": "q2", "question_id": 2},
    ]})
    examples = load_vqav2(questions, images_dir=images)
    assert [e.image_path for e in examples] == [str(images / "000000000042.jpg"),
                                                 str(images / "other_000000000007.png")]
    gray = image_for(examples[1])
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (128, 128, 128)


def test_vqav2_test_dev_questions_use_test2015_image_names(tmp_path):
    images = tmp_path / "test2015"
    images.mkdir()
    _image(images / "COCO_test2015_000000000001.jpg")
    questions = _write(tmp_path / "q.json", {"data_subtype": "test-dev2015", "questions": [
        {"image_id": 1, "question": "q", "question_id": 10}]})
    assert load_vqav2(questions, images_dir=images)[0].image_path.endswith(
        "COCO_test2015_000000000001.jpg")
    assert load_vqav2(questions)[0].image_path == "COCO_test2015_000000000001.jpg"


def test_vqav2_custom_image_name_pattern(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    _image(images / "img-5-val.jpeg")
    questions = _write(tmp_path / "q.json", {"data_subtype": "val", "questions": [
        {"image_id": 5, "question": "q", "question_id": 1}]})
    examples = load_vqav2(questions, images_dir=images,
                          image_name_pattern="img-{image_id}-{data_subtype}.jpeg")
    assert examples[0].image_path == str(images / "img-5-val.jpeg")


def test_vqav2_missing_image(vqav2):
    questions, annotations, images = vqav2
    (images / "COCO_val2014_000000000007.jpg").unlink()
    with pytest.raises(VQADataError, match="1 of 3 questions have no image.*image_id 7"):
        load_vqav2(questions, annotations, images_dir=images)
    kept = load_vqav2(questions, annotations, images_dir=images, on_missing_image="skip")
    assert [e.question_id for e in kept] == [420, 421]


def test_vqav2_bad_inputs(vqav2, tmp_path):
    questions, annotations, images = vqav2
    with pytest.raises(VQADataError, match="not found"):
        load_vqav2(tmp_path / "nope.json")
    with pytest.raises(VQADataError, match="image folder not found"):
        load_vqav2(questions, images_dir=tmp_path / "nope")
    with pytest.raises(VQADataError, match="'questions' list"):
        load_vqav2(annotations)  # an annotations file passed as questions
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(VQADataError, match="not valid JSON"):
        load_vqav2(tmp_path / "broken.json")
    partial = _write(tmp_path / "partial.json", {"annotations": json.loads(
        annotations.read_text())["annotations"][:2]})
    with pytest.raises(VQADataError, match="1 questions .* no annotation.*question_id 421"):
        load_vqav2(questions, partial, images_dir=images)
    no_image_id = _write(tmp_path / "noid.json", {"questions": [{"question": "q", "question_id": 1}]})
    with pytest.raises(VQADataError, match="lacks one of the fields"):
        load_vqav2(no_image_id)


def test_image_for_missing_or_broken_file(tmp_path):
    with pytest.raises(VQADataError, match="not found"):
        image_for(VQAExample(1, "1", str(tmp_path / "gone.jpg"), "q"))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VQADataError, match="cannot read image"):
        image_for(VQAExample(1, "1", str(tmp_path / "bad.jpg"), "q"))


# ---------------------------------------------------------------- soft scores and vocabulary


def test_soft_score_table():
    assert [soft_score(n) for n in range(7)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0, 1.0]


def test_vqa_target_scores_by_hand():
    answers = ["2"] * 6 + ["two"] * 3 + ["3"]
    assert vqa_target_scores(answers) == {"2": 1.0, "two": 0.9, "3": 0.3}
    assert vqa_target_scores(["a", "b", "b"]) == {"a": 0.3, "b": 0.6}
    assert vqa_target_scores(["yes"] * 10) == {"yes": 1.0}
    assert vqa_target_scores([]) == {}


def test_vqa_target_scores_with_a_normaliser():
    answers = ["2"] * 2 + ["two"] * 2 + ["Two"]
    assert vqa_target_scores(answers, normalize=lambda a: "2" if a.lower() == "two" else a) == {
        "2": 1.0}


def _ex(*answers):
    return VQAExample(0, "0", "", "q", list(answers))


def test_answer_vocab_order_counts_and_limits():
    examples = [
        _ex(*["yes"] * 10),               # "yes" counts once for this example
        _ex(*["yes"] * 9, "no"),
        _ex("red", "blue", "red"),
        _ex("blue"),
        _ex("green"),
        _ex("apple"),
    ]
    # yes: 2, blue: 2, then the ones seen once, alphabetically
    assert build_answer_vocab(examples) == ["blue", "yes", "apple", "green", "no", "red"]
    assert build_answer_vocab(examples, min_count=2) == ["blue", "yes"]
    assert build_answer_vocab(examples, max_size=3) == ["blue", "yes", "apple"]
    assert build_answer_vocab([]) == []


def test_answer_vocab_of_easy_vqa_has_the_13_answers(easy_train):
    vocab = build_answer_vocab(easy_train)
    assert len(vocab) == 13
    assert vocab[:2] == ["no", "yes"] or vocab[:2] == ["yes", "no"]
    assert set(vocab) >= {"circle", "rectangle", "triangle", "red", "teal"}
