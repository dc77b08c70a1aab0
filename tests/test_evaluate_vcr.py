"""``python -m vqa_llm.evaluate --dataset vcr`` with tiny random VCR models (no downloads).

Runs on the hand-written VCR fixture and on generated shape scenes (``training.vcr_scenes``). Every figure is
recomputed here from predictions.jsonl and the labels read straight from the annotation file; every record's
scores are compared with the VCR pipelines' (one item at a time), which checks the evaluator's batches; QA→R must
be given the right answer even where Q→A chose another. Also: the ``--limit/--seed`` sample, ``--resume`` after
lost records (equal to the uninterrupted run), a resume with another model refused, an unreadable image as a
failed record answered again by ``--retry-errors``, bad input as one ``Error:`` line and exit status 2, and a
2-process ``accelerate launch`` run merging to the 1-process result.

The tiny models' heads are sharpened (last layer x 1000) so that their four scores differ by far more than the
tolerance of the comparisons (a random head scores every choice 0.25 to 4 digits).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.vcr_scenes import write_scenes
from vcr_testing import VCR_FIXTURE, build_tiny_vcr_model
from vle import VLEForVCRQ2A, VLEForVCRQ2APipeline, VLEForVCRQA2R, VLEForVCRQA2RPipeline
from vle.processing_vle import VLEProcessor
from vle.vcr_data import load_vcr
from vqa_llm.evaluate import EXIT_USER_ERROR, main
from vqa_llm.evaluation.data import sample_examples
from vqa_llm.evaluation.summary import without_timings

REPO = Path(__file__).resolve().parents[1]
SCENES = 12
RECORD_FIELDS = {
    "question_id", "annot_id", "image", "objects", "question", "question_kind", "answer_label", "rationale_label",
    "q2a_scores", "q2a_pred", "q2a_correct", "qa2r_scores", "qa2r_pred", "qa2r_correct", "q2ar_correct", "error",
    "timings",
}
MODEL_CLASSES = {"q2a": VLEForVCRQ2A, "qa2r": VLEForVCRQA2R}
PIPELINES = {"q2a": VLEForVCRQ2APipeline, "qa2r": VLEForVCRQA2RPipeline}


# ----------------------------------------------------------------------------------------- helpers
def sharpened_model(directory: Path, task: str, seed: int) -> str:
    """A tiny random VCR model whose head's last layer is scaled up, so that its scores are far apart."""
    path = build_tiny_vcr_model(directory, task, seed=seed)
    model = MODEL_CLASSES[task].from_pretrained(path)
    with torch.no_grad():
        getattr(model, MODEL_CLASSES[task].head_name)[-1].weight.mul_(1e3)
    model.save_pretrained(path)
    return path


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def summary_of(out):
    return json.loads((Path(out) / "summary.json").read_text())


def truth(annotations: Path) -> dict[str, dict]:
    """annot_id -> the raw annotation record, read without the code under test."""
    return {record["annot_id"]: record for record in lines(annotations)}


def expected_figures(records, labels) -> dict[str, float]:
    """The three accuracies (%) of ``records``, from their scores and the file's labels."""
    right = {"q2a": 0, "qa2r": 0, "q2ar": 0}
    for record in records:
        label = labels[record["question_id"]]
        q2a = bool(record["q2a_scores"]) and argmax(record["q2a_scores"]) == label["answer_label"]
        qa2r = bool(record["qa2r_scores"]) and argmax(record["qa2r_scores"]) == label["rationale_label"]
        right["q2a"] += q2a
        right["qa2r"] += qa2r
        right["q2ar"] += q2a and qa2r
    return {f"{task}_accuracy": 100.0 * count / len(records) for task, count in right.items()}


def argmax(values) -> int:
    return max(range(len(values)), key=lambda index: values[index])


def assert_figures(stats, records, labels):
    assert stats["n"] == len(records)
    for key, value in expected_figures(records, labels).items():
        assert stats[key] == pytest.approx(value, abs=0.005), key


def assert_same_predictions(got, want):
    """The same items with the same predictions; scores equal up to the round-off of other batch shapes."""
    assert [r["question_id"] for r in got] == [r["question_id"] for r in want]
    for a, b in zip(got, want):
        a, b = dict(a), dict(b)
        for key in ("timings", "image"):
            a.pop(key), b.pop(key)
        for task in ("q2a", "qa2r"):
            assert a.pop(f"{task}_scores") == pytest.approx(b.pop(f"{task}_scores"), abs=1e-4)
        assert a == b


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("Error:")]


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def vcr_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vcr_models")
    return {"q2a": sharpened_model(root / "q2a", "q2a", seed=0),
            "qa2r": sharpened_model(root / "qa2r", "qa2r", seed=1)}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("vcr_scenes")
    return write_scenes(root, seed=11, count=SCENES), root / "images"


def vcr_args(models, annotations, images, out, *extra):
    return ["-q", "--dataset", "vcr", "--annotations", str(annotations), "--images", str(images), "--out", str(out),
            "--profile", "bundled", "--vcr-q2a", models["q2a"], "--vcr-qa2r", models["qa2r"], *extra]


@pytest.fixture(scope="module")
def scene_run(vcr_models, scenes, tmp_path_factory):
    """An uninterrupted 1-process run on the scenes, batches of 5 (the last one short)."""
    out = tmp_path_factory.mktemp("scene_run")
    assert main(vcr_args(vcr_models, *scenes, out, "--batch-size", "5")) == 0
    return out


@pytest.fixture(scope="module")
def fixture_run(vcr_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("fixture_run")
    assert main(vcr_args(vcr_models, VCR_FIXTURE / "val.jsonl", VCR_FIXTURE / "images", out)) == 0
    return out


# ------------------------------------------------------------------------------------------- tests
def test_a_run_on_the_fixture_writes_records_and_a_summary_that_recomputes(fixture_run):
    out = Path(fixture_run)
    for name in ("predictions.jsonl", "summary.json", "summary.md", "run.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.part-*")) and not list(out.glob("*.tmp"))
    labels = truth(VCR_FIXTURE / "val.jsonl")
    records = lines(out / "predictions.jsonl")
    assert sorted(r["question_id"] for r in records) == sorted(labels)
    for record in records:
        assert set(record) == RECORD_FIELDS
        label = labels[record["question_id"]]
        assert record["annot_id"] == record["question_id"] and record["error"] is None
        assert (record["answer_label"], record["rationale_label"]) == (label["answer_label"],
                                                                       label["rationale_label"])
        assert record["question_kind"] is None  # real VCR files have no question kinds
        for task in ("q2a", "qa2r"):
            assert len(record[f"{task}_scores"]) == 4 and sum(record[f"{task}_scores"]) == pytest.approx(1, abs=1e-5)
            assert record[f"{task}_pred"] == argmax(record[f"{task}_scores"])
        assert record["q2ar_correct"] == (record["q2a_correct"] and record["qa2r_correct"])
    summary = summary_of(out)
    assert_figures(summary["overall"], records, labels)
    assert summary["overall"]["failed"] == 0 and "per_question_kind" not in summary
    assert summary["settings"]["dataset"] == "vcr" and summary["settings"]["sample_size"] == 2
    md = (out / "summary.md").read_text()
    overall = summary["overall"]
    assert f"| all items | 2 | {overall['q2a_accuracy']:.2f} | {overall['qa2r_accuracy']:.2f} |" in md


def test_scenes_give_figures_per_question_kind(scene_run, scenes):
    labels = truth(scenes[0])
    records = lines(Path(scene_run) / "predictions.jsonl")
    assert len(records) == SCENES and all(r["error"] is None for r in records)
    summary = summary_of(scene_run)
    assert_figures(summary["overall"], records, labels)
    kinds = {label["question_kind"] for label in labels.values()}
    assert set(summary["per_question_kind"]) == kinds and len(kinds) > 1
    for kind in kinds:
        group = [r for r in records if labels[r["question_id"]]["question_kind"] == kind]
        assert all(r["question_kind"] == kind for r in group)
        assert_figures(summary["per_question_kind"][kind], group, labels)
    # the sharpened random models are right on some items and wrong on others
    assert 0 < summary["overall"]["q2a_accuracy"] < 100


@pytest.fixture(scope="module")
def pipelines(vcr_models):
    return {task: PIPELINES[task](model=MODEL_CLASSES[task].from_pretrained(path).eval(), device="cpu",
                                  vle_processor=VLEProcessor.from_pretrained(path))
            for task, path in vcr_models.items()}


def test_batched_scores_equal_the_vcr_pipelines_and_qa2r_is_given_the_right_answer(scene_run, scenes, pipelines):
    records = {r["question_id"]: r for r in lines(Path(scene_run) / "predictions.jsonl")}
    wrong_answer_seen = 0
    for item in load_vcr(*scenes):
        record = records[item.annot_id]
        for task, pipe in pipelines.items():
            (out,) = pipe(meta_inputs=item.annotation(), image=item.image_path, metadata=item.metadata())
            assert record[f"{task}_scores"] == pytest.approx(out["score"], abs=1e-4), (item.annot_id, task)
            assert record[f"{task}_pred"] == out["pred"][0]
        if record["q2a_pred"] != item.answer_label:  # QA->R scored given the right answer, not Q->A's choice
            wrong_answer_seen += 1
            chosen = {**item.annotation(), "answer_label": record["q2a_pred"]}
            (out,) = pipelines["qa2r"](meta_inputs=chosen, image=item.image_path, metadata=item.metadata())
            assert record["qa2r_scores"] != pytest.approx(out["score"], abs=1e-3)
    assert wrong_answer_seen


def test_limit_and_seed_give_the_sample_of_sample_examples(vcr_models, scenes, scene_run, tmp_path):
    out = tmp_path / "sample"
    assert main(vcr_args(vcr_models, *scenes, out, "--limit", "5", "--seed", "7")) == 0
    items = load_vcr(*scenes)
    want = [item.annot_id for item in sample_examples(items, 5, 7, key=lambda item: item.annot_id)]
    assert want != [item.annot_id for item in items[:5]]  # a shuffled sample, not the first five
    got = lines(out / "predictions.jsonl")
    assert sorted(r["question_id"] for r in got) == sorted(want)
    full = {r["question_id"]: r for r in lines(Path(scene_run) / "predictions.jsonl")}
    assert_same_predictions(got, [full[r["question_id"]] for r in got])
    summary = summary_of(out)
    assert summary["settings"]["limit"] == 5 and summary["overall"]["n"] == 5
    assert_figures(summary["overall"], got, truth(scenes[0]))


def test_resume_answers_only_the_lost_records_and_equals_the_full_run(vcr_models, scenes, scene_run, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(scene_run, out)
    (out / "summary.json").unlink()
    full = lines(out / "predictions.jsonl")
    kept = [record for index, record in enumerate(full) if index % 3]
    text = "".join(json.dumps(record) + "\n" for record in kept)
    (out / "predictions.jsonl").write_text(text + text.splitlines()[0][:40])  # and a line cut short by a kill
    assert main(vcr_args(vcr_models, *scenes, out, "--resume", "--batch-size", "3")) == 0
    sessions = json.loads((out / "run.json").read_text())["sessions"]
    assert len(sessions) == 2 and sessions[-1]["answered"] == len(full) - len(kept)
    assert_same_predictions(lines(out / "predictions.jsonl"), full)
    assert without_timings(summary_of(out)) == without_timings(summary_of(scene_run))


def test_a_run_is_not_continued_with_another_model_or_without_resume(vcr_models, scenes, scene_run, tmp_path,
                                                                     capsys):
    out = tmp_path / "other"
    shutil.copytree(scene_run, out)
    before = (out / "predictions.jsonl").read_bytes()
    other = {**vcr_models, "q2a": str(tmp_path / "q2a-copy")}
    shutil.copytree(vcr_models["q2a"], other["q2a"])
    assert main(vcr_args(other, *scenes, out, "--resume")) == EXIT_USER_ERROR
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "Cannot resume" in err[0] and "q2a-copy" in err[0]
    assert main(vcr_args(vcr_models, *scenes, out)) == EXIT_USER_ERROR
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "--resume" in err[0]
    assert (out / "predictions.jsonl").read_bytes() == before


def test_an_unreadable_image_is_a_failed_record_and_retry_errors_answers_it(vcr_models, fixture_run, tmp_path):
    data = tmp_path / "vcr"
    shutil.copytree(VCR_FIXTURE, data)
    image = data / "images" / "lsmdc_movie" / "frame_0002.jpg"
    image.write_bytes(b"not an image")
    out = tmp_path / "out"
    args = vcr_args(vcr_models, data / "val.jsonl", data / "images", out)
    assert main(args) == 0
    records = {r["question_id"]: r for r in lines(out / "predictions.jsonl")}
    bad, good = records["val-1"], records["val-0"]
    assert bad["error"] and bad["q2a_scores"] == [] and bad["q2a_pred"] is None and not bad["q2ar_correct"]
    assert good["error"] is None and len(good["q2a_scores"]) == 4
    summary = summary_of(out)
    assert summary["overall"]["failed"] == 1
    assert_figures(summary["overall"], list(records.values()), truth(data / "val.jsonl"))

    shutil.copy(VCR_FIXTURE / "images" / "lsmdc_movie" / "frame_0002.jpg", image)
    assert main([*args, "--resume", "--retry-errors"]) == 0
    assert json.loads((out / "run.json").read_text())["sessions"][-1]["answered"] == 1
    assert_same_predictions(lines(out / "predictions.jsonl"), lines(Path(fixture_run) / "predictions.jsonl"))
    assert summary_of(out)["overall"]["failed"] == 0


def test_no_vqa_model_captioner_or_llm_is_loaded(vcr_models, fixture_run, tmp_path, monkeypatch):
    import vqa_llm.loading
    import vqa_llm.pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("a VCR run loaded a model of the VQA pipeline")

    for module, name in ((vqa_llm.loading, "load_components"), (vqa_llm.loading, "load_vqa_model"),
                         (vqa_llm.loading, "load_captioner"), (vqa_llm.loading, "load_chat_llm"),
                         (vqa_llm.pipeline.VQALLMPipeline, "from_profile")):
        monkeypatch.setattr(module, name, refuse)
    gone = str(tmp_path / "no-such-model")
    out = tmp_path / "out"
    args = vcr_args(vcr_models, VCR_FIXTURE / "val.jsonl", VCR_FIXTURE / "images", out,
                    "--vqa-model", gone, "--captioner", gone, "--llm", gone)
    assert main(args) == 0
    assert_same_predictions(lines(out / "predictions.jsonl"), lines(Path(fixture_run) / "predictions.jsonl"))


def _broken_file(tmp_path: Path) -> Path:
    first = (VCR_FIXTURE / "val.jsonl").read_text().splitlines()[0]
    path = tmp_path / "broken.jsonl"
    path.write_text(first + "\n" + '{"annot_id": "val-9", "objects": ["person"]\n')
    return path


BAD_INPUT = {
    "a missing file": (lambda tmp, m: ["--annotations", str(tmp / "gone.jsonl")], "No VCR annotation file"),
    "a malformed record": (lambda tmp, m: ["--annotations", str(_broken_file(tmp))], "broken.jsonl, line 2"),
    "an unlabelled test file": (lambda tmp, m: ["--annotations", str(VCR_FIXTURE / "test.jsonl")],
                                "not a test split"),
    "no images folder": (lambda tmp, m: ["--images", ""], "--dataset vcr needs --images"),
    "a VQA-only flag": (lambda tmp, m: ["--template", "long"], "--template applies to the VQA datasets only"),
    "no VCR model": (lambda tmp, m: ["--vcr-qa2r", "none"], "pass --vcr-qa2r"),
    "a model of the other task": (lambda tmp, m: ["--vcr-q2a", m["qa2r"]], "has no vcr_q2a_logit head"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_error_line_and_exit_status_2(vcr_models, tmp_path, capsys, case):
    change, message = BAD_INPUT[case]
    args = vcr_args(vcr_models, VCR_FIXTURE / "val.jsonl", VCR_FIXTURE / "images", tmp_path / "out")
    assert main([*args, *change(tmp_path, vcr_models)]) == EXIT_USER_ERROR  # argparse: the last value wins
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out" / "predictions.jsonl").exists()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_accelerate_processes_merge_to_the_one_process_result(vcr_models, scenes, scene_run, tmp_path):
    out = tmp_path / "two"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()),
               "-m", "vqa_llm.evaluate", *vcr_args(vcr_models, *scenes, out, "--batch-size", "4")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(out.glob("predictions.part-*"))
    assert_same_predictions(lines(out / "predictions.jsonl"), lines(Path(scene_run) / "predictions.jsonl"))
    assert without_timings(summary_of(out)) == without_timings(summary_of(scene_run))
    session = json.loads((out / "run.json").read_text())["sessions"][-1]
    assert session["processes"] == 2 and session["answered"] == SCENES
