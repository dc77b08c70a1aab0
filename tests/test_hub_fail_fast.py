"""Hub models without a Hub: every entry point fails within seconds (not minutes of huggingface_hub retries)
with a message naming the uncached models, and loads cached models without asking the Hub (issue 19, item 1).

The unreachable Hub is a local port that accepts connections and never answers (``HF_ENDPOINT``). The entry
points run in a child process: this test process has ``HF_HUB_OFFLINE=1``, which huggingface_hub reads once at
import, and an offline library never retries.
"""

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from project_base.hub_probe import PROBE_TIMEOUT_S, check_hub
from tiny_models import build_tiny_blip
from tiny_vle import build_tiny_vle_vqa
from vqa_llm.errors import ModelUnavailableError
from vqa_llm.hub_access import check_profile_hub
from vqa_llm.profiles import BASE, bundled_profile

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE = str(REPO_ROOT / "assets" / "examples" / "easyvqa-test-237.png")
#: what a check may take beyond the probe's own limit, start-up included (busy CI machines); the retries it
#: guards against took minutes
MARGIN_S = 30.0  # the app imports gradio first: 14 s seen on a loaded 2-core machine


@pytest.fixture(scope="module")
def silent_hub():
    """``http://127.0.0.1:PORT``: accepts connections, never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def _child_env(endpoint: str, hf_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(hf_home), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT),
               GRADIO_ANALYTICS_ENABLED="False")
    return env


# Runs each entry point's main() after the heavy imports, timing only the call: {"name", "rc", "s", "err", "out"}.
_RUNNER = r"""
import contextlib, importlib, io, json, sys, time
import torch, transformers, accelerate, vqa_llm.pipeline, vqa_llm.loading
import training.vqa_finetune, training.captioner_finetune
for name, module, argv in json.loads(sys.argv[1]):
    err, out = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = importlib.import_module(module).main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:
            rc = f"raised {type(exc).__name__}: {exc}"
    print(json.dumps({"name": name, "rc": rc, "s": time.monotonic() - started, "err": err.getvalue(),
                      "out": out.getvalue()}), flush=True)
"""


def _run_entry_points(calls, env, timeout):
    done = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(calls)], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_every_entry_point_fails_fast_on_uncached_hub_models(silent_hub, tmp_path):
    out = str(tmp_path / "out")
    calls = [
        ("ask", "vqa_llm.cli", ["ask", IMAGE, "What shape?", "--profile", "base", "--no-llm", "-q"]),
        ("app", "app", ["--profile", "base", "--no-llm"]),
        ("evaluate", "vqa_llm.evaluate", ["--dataset", "easy-vqa", "--limit", "2", "--profile", "base", "--no-llm",
                                          "--out", out, "-q"]),
        ("example_bank", "vqa_llm.example_bank", ["build", "--dataset", "easy-vqa", "--limit", "2", "--profile",
                                                  "base", "--out", out, "-q"]),
        ("training.vqa_finetune", "training.vqa_finetune", ["--init", "hfl/vle-base-for-vqa", "--train", "easy-vqa",
                                                            "--output_dir", out]),
        ("training.captioner_finetune", "training.captioner_finetune", ["--pairs", str(tmp_path / "pairs.jsonl"),
                                                                        "--output_dir", out, "--model",
                                                                        "Salesforce/blip-image-captioning-base"]),
    ]
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"image": IMAGE, "caption": "a shape"}) + "\n")
    # old behaviour: each call sits minutes in retries, so the child runs into this timeout
    results = _run_entry_points(calls, _child_env(silent_hub, tmp_path / "hf"),
                                timeout=60 + len(calls) * (PROBE_TIMEOUT_S + MARGIN_S))
    assert [r["name"] for r in results] == [c[0] for c in calls]
    for result in results:
        assert result["rc"] == 2, result
        assert result["s"] < PROBE_TIMEOUT_S + MARGIN_S, result
        lines = result["err"].strip().splitlines()
        assert lines[-1].startswith("Error: The Hugging Face Hub did not answer"), result
        assert "not in the local cache" in lines[-1] and "--profile bundled" in lines[-1], result
        assert "Traceback" not in result["err"], result


def _cache_as_hub_repo(hf_home: Path, repo_id: str, build) -> None:
    """Save a tiny model where huggingface_hub keeps a downloaded ``repo_id``."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    build(repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)


@pytest.mark.slow
def test_cached_hub_models_load_without_asking_the_hub(silent_hub, tmp_path):
    hf_home = tmp_path / "hf"
    _cache_as_hub_repo(hf_home, "tiny/vle", build_tiny_vle_vqa)
    _cache_as_hub_repo(hf_home, "tiny/blip", build_tiny_blip)
    argv = ["ask", IMAGE, "What shape?", "--profile", "base", "--vqa-model", "tiny/vle", "--captioner", "tiny/blip",
            "--no-llm", "--json", "--device", "cpu"]
    # old behaviour: the cached files are still checked against the Hub, with minutes of retries
    [result] = _run_entry_points([("ask", "vqa_llm.cli", argv)], _child_env(silent_hub, hf_home),
                                 timeout=60 + PROBE_TIMEOUT_S + 4 * MARGIN_S)
    assert result["rc"] == 0, result
    assert "the Hugging Face Hub did not answer" in result["err"] and "using the cached files" in result["err"]
    assert json.loads(result["out"])["models"]["vqa"] == "tiny/vle"


def _unreachable(environ):
    return False, "test: no answer"


def _must_not_probe(environ):
    raise AssertionError("probed the Hub")


def test_check_hub_without_hub_ids_or_offline_never_probes(tmp_path):
    assert not check_hub([str(tmp_path), None, "smollm2"], {}, _must_not_probe).local_only
    assert not check_hub(["hfl/vle-base-for-vqa"], {"HF_HUB_OFFLINE": "1"}, _must_not_probe).local_only
    profile, note = check_profile_hub(bundled_profile(), environ={}, probe=_must_not_probe)
    assert profile == bundled_profile() and note == ""


def test_check_profile_hub_names_the_uncached_models(tmp_path):
    environ = {"HF_HOME": str(tmp_path)}
    with pytest.raises(ModelUnavailableError, match="did not answer .test: no answer.*hfl/vle-base-for-vqa, "
                                                    "Salesforce/blip-image-captioning-base$|--profile bundled"):
        check_profile_hub(BASE, use_llm=False, environ=environ, probe=_unreachable)
    assert check_profile_hub(BASE, environ=environ, probe=lambda env: (True, "ok")) == (BASE, "")
