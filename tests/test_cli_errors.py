"""What a new user trips over in the command-line tools (issue 19): every CLI answers a user error with one
``Error:`` line on stderr and exit status 2, before any work starts; the bundle build never writes over
models by accident; ``--help`` texts say how inputs are read; small things (a folder given as the image,
the example bank's file modes, the app's share hint).

The table runs each CLI's ``main(argv)`` in this process (logging goes to pytest, so stderr holds only what the
CLI prints itself); a few rows run again as ``python -m ...`` and under ``accelerate launch``.
"""

import importlib
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import app
from tiny_models import single_thread_fixture
from vqa_llm.fewshot.bank import KEYS_FILE, ExampleBank

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE = str(REPO_ROOT / "assets" / "examples" / "easyvqa-test-237.png")
UNDER_A_FILE = str(REPO_ROOT / "README.md" / "run")  # an output path below a file

_single_thread = single_thread_fixture()


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("pairs")
    (root / "pairs.jsonl").write_text(json.dumps({"image": IMAGE, "caption": "a shape"}) + "\n")
    return str(root / "pairs.jsonl")


# (CLI module, argv, what the one error line must say); {pairs}, {tmp} are filled in per test
USER_ERRORS = [
    ("vqa_llm.cli", ["ask", str(REPO_ROOT / "assets" / "examples"), "What shape?", "--profile", "bundled"],
     "is a folder, not an image file"),
    ("vqa_llm.cli", ["ask", "{tmp}/nope.png", "What shape?", "--profile", "bundled"], "No image file at"),
    ("vqa_llm.cli", ["ask", IMAGE, "  ", "--profile", "bundled"], "question is empty"),
    ("vqa_llm.evaluate", ["--dataset", "easy-vqa", "--limit", "2", "--profile", "bundled", "--out", UNDER_A_FILE],
     "lies under the file"),
    ("vqa_llm.evaluate", ["--dataset", "easy-vqa", "--profile", "bundled", "--out", str(REPO_ROOT / "README.md")],
     "is a file, not a folder"),
    ("vqa_llm.evaluate", ["--dataset", "vqav2", "--questions", "{tmp}/q.json", "--annotations", "{tmp}/a.json",
                          "--images", "{tmp}", "--profile", "bundled", "--out", "{tmp}/out"], "not found"),
    ("vqa_llm.example_bank", ["build", "--dataset", "easy-vqa", "--limit", "2", "--profile", "bundled", "--out",
                              UNDER_A_FILE], "lies under the file"),
    ("vqa_llm.example_bank", ["info", "{tmp}/no-bank"], "does not exist"),
    ("training.vqa_finetune", ["--init", "{tmp}/vle", "--train_questions", "{tmp}/q.json", "--train_annotations",
                               "{tmp}/a.json", "--train_images", "{tmp}", "--output_dir", "{tmp}/out"],
     "questions file not found"),
    ("training.vqa_finetune", ["--init", "{tmp}/vle", "--train", "easy-vqa", "--output_dir", UNDER_A_FILE],
     "lies under the file"),
    ("training.vqa_finetune", ["--train", "easy-vqa", "--output_dir", "{tmp}/out"], "Pass --init"),
    ("training.vqa_finetune", ["--init", "{tmp}/no-such-model", "--train", "easy-vqa", "--eval_limit", "1",
                               "--output_dir", "{tmp}/out", "--train_questions", "{tmp}/q.json"], "go together"),
    ("training.captioner_finetune", ["--pairs", "{pairs}", "--output_dir", UNDER_A_FILE, "--num_train_epochs", "1"],
     "lies under the file"),
    ("training.captioner_finetune", ["--pairs", "{tmp}/nope.jsonl", "--output_dir", "{tmp}/out"], "does not exist"),
    ("training.bundle", ["build", "--out", str(REPO_ROOT / "assets" / "models"), "--only", "blip"],
     "already hold(s) a model: pass --overwrite"),
    ("training.bundle", ["build", "--out", UNDER_A_FILE], "lies under the file"),
    ("training.bundle", ["evaluate", "--models", "{tmp}/none"], "No model folder at"),
]
MODULES = {"vqa_llm.cli", "vqa_llm.evaluate", "vqa_llm.example_bank", "training.vqa_finetune",
           "training.captioner_finetune", "training.bundle"}


def _fill(argv: list[str], tmp_path: Path, pairs: str) -> list[str]:
    return [a.replace("{tmp}", str(tmp_path)).replace("{pairs}", pairs) for a in argv]


def _exit_status(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse, or a CLI that exits instead of returning
        return stop.code if isinstance(stop.code, int) else 1


def test_the_table_covers_every_cli():
    assert {module for module, _, _ in USER_ERRORS} == MODULES


@pytest.mark.parametrize("module, argv, message", USER_ERRORS,
                         ids=[f"{m}:{msg[:24]}" for m, _, msg in USER_ERRORS])
def test_user_errors_give_one_line_and_exit_2(module, argv, message, tmp_path, pairs_file, capsys):
    before = sorted(p.name for p in tmp_path.iterdir())
    code = _exit_status(importlib.import_module(module).main, _fill(argv, tmp_path, pairs_file))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing was written before the check
    assert not (REPO_ROOT / "README.md").is_dir()


def _python_m(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("module, argv", [
    ("training.vqa_finetune", ["--init", "x", "--train_questions", "q.json", "--train_annotations", "a.json",
                               "--train_images", ".", "--output_dir", "{tmp}/out"]),
    ("training.captioner_finetune", ["--pairs", "{pairs}", "--output_dir", UNDER_A_FILE]),
    ("training.bundle", ["build", "--out", UNDER_A_FILE]),
], ids=["training.vqa_finetune", "training.captioner_finetune", "training.bundle"])
def test_python_m_prints_only_the_error_line(module, argv, tmp_path, pairs_file):
    """As a user runs them: nothing but the one line (no import-time warnings before it), exit status 2."""
    done = _python_m([sys.executable, "-m", module, *_fill(argv, tmp_path, pairs_file)])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr


@pytest.mark.slow
def test_under_accelerate_launch_the_error_line_comes_without_a_traceback(tmp_path):
    """accelerate's launcher exits with 1 whenever its process fails, and prints a traceback unless --quiet;
    with --quiet (and its settings given) the user sees the CLI's one line."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--num_processes", "1",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    done = _python_m([*launch, "-m", "training.vqa_finetune", "--init", "x", "--train_questions",
                      str(tmp_path / "q.json"), "--train_annotations", "a.json", "--train_images", ".", "--output_dir",
                      str(tmp_path / "out")])
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "CalledProcessError" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: questions file not found"), done.stderr


def test_vle_finetune_does_not_start_over_a_run_without_resume(tmp_path, capsys):
    from training.vqa_finetune import main

    (tmp_path / "out" / "checkpoint-6").mkdir(parents=True)  # what the Trainer leaves after an epoch
    (tmp_path / "out" / "checkpoint-6" / "trainer_state.json").write_text('{"epoch": 1.0}')
    assert main(["--init", str(tmp_path / "vle"), "--train", "easy-vqa", "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "already holds checkpoints: pass --resume" in err


@pytest.mark.slow
def test_several_processes_report_a_user_error_once(tmp_path):
    """Two CPU processes meet the same error: the main process says it (the others wait so that the launcher,
    which stops them all once one exits, does not cut it off); no Python traceback. The launcher adds its
    own failure report and exits with 1."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    done = _python_m([*launch, "-m", "vqa_llm.evaluate", "--dataset", "easy-vqa", "--limit", "4", "--profile",
                      "bundled", "--no-llm", "--out", UNDER_A_FILE, "-q"])
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "lies under the file" in errors[0], done.stderr
    assert "Traceback (most recent call last)" not in done.stderr


# ---------------------------------------------------------------------------------------- bundle build
def test_bundle_build_writes_to_a_fresh_folder_by_default():
    from training.bundle import DEFAULT_BUILD_DIR, MODELS_DIR, build_parser

    args = build_parser().parse_args(["build"])
    assert Path(args.out) == DEFAULT_BUILD_DIR != MODELS_DIR and not args.overwrite


def test_bundle_build_refuses_existing_model_folders_without_overwrite(tmp_path):
    from training.bundle import BUILDS, check_build_targets
    from vqa_llm.errors import BadSettingError

    names = [name for folders in BUILDS.values() for name in folders]
    (blip,) = BUILDS["blip"]
    (tmp_path / blip).mkdir()
    check_build_targets(tmp_path, tmp_path / "work", names, overwrite=False)  # empty folder: fine
    (tmp_path / blip / "config.json").write_text("{}")
    with pytest.raises(BadSettingError, match="blip-easyvqa already hold"):
        check_build_targets(tmp_path, tmp_path / "work", names, overwrite=False)
    (tmp_path / BUILDS["vcr"][1]).mkdir()
    (tmp_path / BUILDS["vcr"][1] / "config.json").write_text("{}")
    with pytest.raises(BadSettingError, match="vle-shapes-vcr-qa2r already hold"):
        check_build_targets(tmp_path, tmp_path / "work", BUILDS["vcr"], overwrite=False)
    check_build_targets(tmp_path, tmp_path / "work", names, overwrite=True)
    check_build_targets(tmp_path, tmp_path / "work", BUILDS["vle"], overwrite=False)  # another model: fine


# ---------------------------------------------------------------------------------------------- --help
def _help(module: str, capsys, sub: tuple[str, ...] = ()) -> str:
    assert _exit_status(importlib.import_module(module).main, [*sub, "--help"]) == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("module, sub", [
    ("vqa_llm.cli", ("ask",)), ("vqa_llm.evaluate", ()), ("vqa_llm.example_bank", ("build",)),
    ("training.vqa_finetune", ()), ("training.captioner_finetune", ()), ("training.bundle", ("build",)),
])
def test_help_names_the_command_and_each_default_once(module, sub, capsys):
    text = _help(module, capsys, sub)
    assert text.startswith(f"usage: python -m {module.removesuffix('.cli')}")
    assert "(default: None)" not in text
    assert not re.search(r"\(default: [^)]*\) \(default:", text)  # a default said twice


def test_captioner_help_says_how_relative_image_paths_are_read(capsys):
    text = _help("training.captioner_finetune", capsys)
    assert "relative image paths are resolved against the folder of the pairs file" in text
    assert "a relative image path is relative to the JSONL file's folder" in text


# -------------------------------------------------------------------------------------- small things
def test_example_bank_files_share_one_mode(tmp_path):
    old = os.umask(0o022)
    try:
        bank = ExampleBank(records=[{"id": "a", "question": "q", "answer": "x", "candidates": []}],
                           keys={"fused": torch.zeros(1, 4)}, meta={"source": "test"})
        folder = bank.save(tmp_path / "bank")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes[KEYS_FILE] == 0o644 and set(modes.values()) == {0o644}, modes


def test_app_hint_names_the_share_flag(capsys, tmp_path):
    """Gradio's start-up hint says ``set share=True in launch()``; the app's users pass --share."""
    import gradio as gr

    with app.DemoPage(app.default_upload_policy()) as demo:
        gr.Markdown("hi")
    args = app.build_parser().parse_args([])
    try:
        _, url, share_url = app.serve(demo, args, prevent_thread_lock=True, announce=True)
    finally:
        demo.close()
    out = capsys.readouterr().out
    assert f"Running on local URL:  {url}" in out and share_url is None
    assert "start the app with --share" in out and "share=True" not in out


def test_app_docs_say_itm_classify_and_pbc_exist_on_every_profile():
    doc = " ".join(app.__doc__.split())
    assert "``/itm``, ``/classify``, ``/pbc``, ``/vcr``. All exist on every profile" in doc
    assert "``/itm``, ``/classify`` and ``/pbc`` answer with an error" in doc
