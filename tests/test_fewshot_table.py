"""bench/fewshot_table.py's tables: finished runs, and runs in progress compared on their shared questions."""

import json
from pathlib import Path

from script_modules import load_script


def record(question_id, kind, raw, llm, total, question="what is it?"):
    return {"question_id": question_id, "question": question, "question_type": kind,
            "answer_type": "yes/no" if kind == "yes/no" else "other",
            "raw_accuracy": raw, "llm_accuracy": llm, "changed": llm is not None and llm != raw, "error": None,
            "candidates": [["yes", 1.0]], "timings": {"total": total}}


def write_run(folder: Path, records, summary=None):
    folder.mkdir(parents=True)
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))


def row_of(text, label):
    return next(line for line in text.splitlines() if line.startswith(f"| {label} "))


def test_runs_in_progress_are_compared_on_the_questions_all_have_answered(tmp_path, capsys):
    table = load_script("bench/fewshot_table.py")
    write_run(tmp_path / "raw", [record(1, "shape", 0.0, None, 0.01), record(2, "yes/no", 1.0, None, 0.01),
                                 record(3, "color", 1.0, None, 0.03), record(4, "yes/no", 0.0, None, 0.02),
                                 record(5, "yes/no", 1.0, None, 0.01)])
    # an unfinished few-shot run: question 1 not answered yet, question 5 kept the VQA answer after an LLM
    # timeout (left out until answered again); it broke question 3, fixed question 4, and its first batch was
    # slow (20 s)
    timed_out = {**record(5, "yes/no", 1.0, 1.0, 9.0), "error": "The LLM did not answer within 600 s."}
    write_run(tmp_path / "fewshot-t1", [record(2, "yes/no", 1.0, 1.0, 20.0), record(3, "color", 1.0, 0.0, 6.0),
                                        record(4, "yes/no", 0.0, 1.0, 4.0), timed_out])
    assert table.main(["--out", str(tmp_path), "--table-only", "--common"]) == 0
    text = capsys.readouterr().out
    assert "Only the 3 questions" in text
    raw = row_of(text, table.LABELS["raw"])
    # raw on questions 2-4: 2 of 3 right overall, yes/no 1 of 2, colour right; median 0.02 s
    assert raw.split(" | ")[1:5] == ["66.67", "50.00", "–", "100.00"] and raw.endswith("| 0.020 | 3 |")
    fewshot = row_of(text, table.LABELS["fewshot-t1"])
    # 2 of 3 right, yes/no 100%, no shape question among the shared ones, colour 0%; fixed 1, broken 1; the
    # median latency (6 s), not the mean (10 s)
    assert fewshot.split(" | ")[1:] == ["66.67", "100.00", "–", "0.00", "1", "1", "6.000", "3 |"]
    assert table.LABELS["short"] not in text  # no predictions, no row


def test_finished_table_counts_seconds_over_the_sessions_that_finished(tmp_path, capsys):
    table = load_script("bench/fewshot_table.py")
    records = [record(1, "shape", 1.0, 0.0, 1.0), record(2, "yes/no", 1.0, 1.0, 1.0)]
    summary = {"use_llm": True, "questions_per_s": 0.25, "sessions": [{"wall_time_s": 8.0, "answered": 2}],
               "overall": {"n": 2, "llm_accuracy": 50.0, "fixed": 0, "broke": 1, "latency_s": {"total": 1.0}},
               "per_question_type": {"shape": {"llm_accuracy": 0.0}, "yes/no": {"llm_accuracy": 100.0}}}
    write_run(tmp_path / "short", records, summary)
    write_run(tmp_path / "fewshot-t1", records[:1])  # still going: no summary yet
    assert table.main(["--out", str(tmp_path), "--table-only"]) == 0
    text = capsys.readouterr().out
    assert row_of(text, table.LABELS["short"]).endswith("| 0 | 1 | 4.000 | 2 |")
    assert "(in progress: 1 answered)" in row_of(text, table.LABELS["fewshot-t1"])
    assert "(not run)" in row_of(text, table.LABELS["fewshot-t3"])


def test_seconds_per_question_count_every_process_of_a_session(tmp_path, capsys):
    table = load_script("bench/fewshot_table.py")
    records = [record(i, "yes/no", 1.0, 1.0, 1.0) for i in range(1, 5)]
    # 300 questions in one 1-process session of 600 s, the other 100 in a 2-process session of 100 s wall:
    # (600 + 2 * 100) / 400 = 2 process seconds per question (not 700 / 400 = 1.75)
    summary = {"use_llm": True, "questions_per_s": 0.571,
               "sessions": [{"wall_time_s": 600.0, "answered": 300, "processes": 1},
                            {"wall_time_s": 100.0, "answered": 100, "processes": 2}],
               "overall": {"n": 4, "llm_accuracy": 100.0, "fixed": 0, "broke": 0, "latency_s": {"total": 1.0}},
               "per_question_type": {"yes/no": {"llm_accuracy": 100.0}}}
    write_run(tmp_path / "fewshot-t3", records, summary)
    assert table.main(["--out", str(tmp_path), "--table-only"]) == 0
    assert row_of(capsys.readouterr().out, table.LABELS["fewshot-t3"]).endswith("| 2.000 | 4 |")


def test_several_processes_run_the_evaluator_through_accelerate_launch():
    table = load_script("bench/fewshot_table.py")
    args = table.build_parser().parse_args(["--processes", "2"])
    command = table.evaluator_command("fewshot-t3", args, Path("runs/x"))
    launch = command.index("accelerate.commands.launch")
    assert command[launch + 1:launch + 4] == ["--multi_gpu", "--num_processes", "2"]
    assert command[command.index("-m", launch) + 1] == "vqa_llm.evaluate"
    assert command[-6:] == ["--template", "fewshot", "--examples", "8", "--runs", "3"]
    single = table.evaluator_command("fewshot-t3", table.build_parser().parse_args([]), Path("runs/x"))
    assert single[1:3] == ["-m", "vqa_llm.evaluate"] and "accelerate.commands.launch" not in single


def test_broken_answers_are_counted_by_kind_with_negated_yes_no_questions_apart(tmp_path, capsys):
    table = load_script("bench/fewshot_table.py")
    write_run(tmp_path / "raw", [record(i, "yes/no", 1.0, None, 0.01) for i in range(1, 6)])
    write_run(tmp_path / "fewshot-t1", [
        record(1, "yes/no", 1.0, 0.0, 5.0, "is no red shape present?"),             # negated, broken
        record(2, "yes/no", 1.0, 0.0, 5.0, "does the image not contain a circle?"),  # negated, broken
        record(3, "yes/no", 1.0, 1.0, 5.0, "is there not a blue shape?"),            # negated, kept
        record(4, "yes/no", 1.0, 0.0, 5.0, "is there a notable shape?"),             # plain ("notable"), broken
        record(5, "shape", 0.0, 1.0, 5.0, "what shape is it?"),                      # fixed, not broken
    ])
    assert table.main(["--out", str(tmp_path), "--table-only", "--common"]) == 0
    text = capsys.readouterr().out
    row = row_of(text.split("Broken answers")[1], table.LABELS["fewshot-t1"])
    assert row.split(" | ")[1:] == ["2 / 3", "1 / 1", "0 / 1", "0 / 0 |"]
    assert table.LABELS["raw"] not in text.split("Broken answers")[1]  # no LLM, nothing to break
