"""Security properties: pickled checkpoints, remote code, where the app listens, upload size, file access.

* A ``pytorch_model.bin`` whose pickle carries a payload (``__reduce__`` running code that writes a marker
  file) is refused by ``VLEForVQA.from_pretrained`` and by the pipeline's loader for each of its three models,
  without running the payload; a control load with ``weights_only=False`` shows the payload is live.
* ``trust_remote_code`` stays off unless the user asks: every profile defaults to False, the local LLM loader
  passes False to transformers, and no source file outside tests/ enables it.
* The app listens on 127.0.0.1 by default (checked on the live socket), on 0.0.0.0 on Hugging Face Spaces.
* Uploads above ``--max-file-size`` are refused (by the client and, bypassing it, by the server).
* ``/answer`` given a server-side path (``/etc/passwd``, a readable picture outside Gradio's upload folder, the
  app's own source) reads nothing: the request fails and the pipeline never sees it; ``/file=`` refuses them.

LLM replies with HTML/JS are shown as inert text: tests/test_browser.py checks that in a real browser.
"""

from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import psutil
import pytest
import requests
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from safetensors.torch import load_file

import app
import odd_images
from llm import transformers_backend
from robustness_testing import (
    QUESTION,
    call_answer_raw,
    pipeline_like,
    profile_from_argv,
    serve_pipeline,
    tiny_pipeline_fixtures,
)
from tiny_models import single_thread_fixture
from vle import VLEForVQA
from vqa_llm import ModelUnavailableError, VQALLMPipeline, overrides_from_args, resolve_profile
from vqa_llm.loading import load_chat_llm
from vqa_llm.profiles import BASE, LARGE, bundled_profile

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", "tests", "build_cache", "node_modules", "__pycache__"}

one_thread = single_thread_fixture()
argv, pipe = tiny_pipeline_fixtures(use_llm=False)


# ---------------------------------------------------------------------------- pickled checkpoints
class Payload:
    """Unpickling this runs ``exec``, which writes ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def poisoned_copy(folder: str, tmp_path: Path, marker: Path) -> Path:
    """A copy of a saved model folder whose weights are a pytorch_model.bin carrying :class:`Payload`."""
    target = Path(shutil.copytree(folder, tmp_path / f"poisoned-{Path(folder).name}"))
    state = dict(load_file(target / "model.safetensors"))
    (target / "model.safetensors").unlink()
    state["pooler.extra"] = Payload(marker)
    torch.save(state, target / "pytorch_model.bin")
    return target


def model_folder(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_vle_from_pretrained_refuses_a_pickle_payload(argv, tmp_path):
    marker = tmp_path / "pwned"
    folder = poisoned_copy(model_folder(argv, "--vqa-model"), tmp_path, marker)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed") as raised:
        VLEForVQA.from_pretrained(str(folder))
    assert re.search(r"unsupported global: GLOBAL (builtins\.)?exec\b", str(raised.value), re.I)
    assert not marker.exists()
    # control: the payload is live — an unsafe load runs it
    torch.load(folder / "pytorch_model.bin", weights_only=False)
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("flag", ["--vqa-model", "--captioner", "--llm"])
def test_pipeline_loader_refuses_a_pickle_payload_with_a_clear_error(flag, argv, tmp_path):
    marker = tmp_path / "pwned"
    folder = poisoned_copy(model_folder(argv, flag), tmp_path, marker)
    bad_argv = list(argv)
    bad_argv[bad_argv.index(flag) + 1] = str(folder)
    profile, _ = profile_from_argv(bad_argv)
    with pytest.raises(ModelUnavailableError) as raised:
        VQALLMPipeline.from_profile(profile)
    message = str(raised.value)
    assert f"weights file {folder / 'pytorch_model.bin'}" in message and "nothing in it was executed" in message
    assert "weights_only" not in message  # not torch's advice to load it unsafely
    assert not marker.exists()


# ----------------------------------------------------------------------------------- remote code
def test_every_profile_keeps_remote_code_off_unless_asked():
    profiles = [BASE, LARGE, bundled_profile(),
                resolve_profile("auto", environ={}, hub_probe=lambda env: (False, "test"))[0],
                resolve_profile("base", overrides_from_args(app.build_parser().parse_args([])), environ={})[0]]
    assert [p.trust_remote_code for p in profiles] == [False] * len(profiles)
    asked = app.build_parser().parse_args(["--trust-remote-code"])
    assert resolve_profile("base", overrides_from_args(asked), environ={})[0].trust_remote_code is True


def test_local_llm_loader_passes_trust_remote_code_false(argv, monkeypatch):
    seen = []
    for auto in (transformers_backend.AutoTokenizer, transformers_backend.AutoModelForCausalLM):
        real = auto.from_pretrained

        def spy(*args, _real=real, _name=auto.__name__, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code", "not passed")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", spy)
    profile, _ = profile_from_argv(argv)
    load_chat_llm(profile, "cpu")
    assert seen == [("AutoTokenizer", False), ("AutoModelForCausalLM", False)]
    seen.clear()
    load_chat_llm(profile_from_argv([*argv, "--trust-remote-code"])[0], "cpu")  # the user asked for it
    assert seen == [("AutoTokenizer", True), ("AutoModelForCausalLM", True)]


def test_no_source_file_enables_remote_code():
    pattern = re.compile(r"trust_remote_code\s*(:\s*bool\s*)?=\s*True|[\"']trust_remote_code[\"']\s*:\s*True")
    offenders = []
    for path in REPO.rglob("*.py"):
        if SKIP_DIRS.intersection(path.relative_to(REPO).parts) or any(p.startswith(".") for p in path.parts):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []
    assert pattern.search("x = f(trust_remote_code=True)") and pattern.search('{"trust_remote_code": True}')


# ---------------------------------------------------------------------------------------- binding
@pytest.fixture(scope="module")
def server(pipe, argv):
    """The app around a pipeline the test can watch: every image it is asked about is recorded."""
    watched = pipeline_like(pipe)
    asked = []
    real_stream = watched.stream

    def stream(image, *args, **kwargs):
        asked.append(image)
        return real_stream(image, *args, **kwargs)

    watched.stream = stream
    with serve_pipeline(watched, argv, "--max-file-size", "100kb") as (demo, url):
        yield url, asked


def test_the_app_listens_on_localhost_only(server):
    url, _ = server
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    listening = [c.laddr.ip for c in psutil.Process().net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert listening == ["127.0.0.1"]


@pytest.mark.parametrize("environ, flags, host, port", [
    ({}, [], "127.0.0.1", None),
    ({"SPACE_ID": "hfl/vle-demo"}, [], "0.0.0.0", 7860),
    ({"SPACE_ID": "hfl/vle-demo"}, ["--host", "127.0.0.1"], "127.0.0.1", 7860),
    ({}, ["--host", "0.0.0.0"], "0.0.0.0", None),
    ({"SPACE_ID": "x/y", "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7999"}, [], "0.0.0.0", 7999),
])
def test_serve_binds_where_it_should(environ, flags, host, port, pipe, argv, monkeypatch):
    for key in ("SPACE_ID", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    profile, reason = profile_from_argv(argv)
    demo = app.build_demo(pipe, profile, reason, examples=[])
    launched = {}
    monkeypatch.setattr(demo, "launch", lambda **kwargs: launched.update(kwargs) or (None, "", None))
    monkeypatch.setattr(demo, "block_thread", lambda: None)
    app.serve(demo, app.build_parser().parse_args([*argv, *flags]))
    assert launched["server_name"] == host and launched["share"] is False
    assert launched["server_port"] == port


# ------------------------------------------------------------------------------------ upload size
def test_uploads_above_the_limit_are_refused(server, tmp_path):
    url, asked = server
    big = tmp_path / "big.png"
    odd_images.noise(320, 320).save(big)
    small = tmp_path / "small.png"
    odd_images.noise(64, 64).save(small)
    assert big.stat().st_size > 100 * 1024 > small.stat().st_size
    client = Client(url, verbose=False)
    asked.clear()
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(handle_file(str(big)), QUESTION, 3, False, "short", api_name="/answer")
    with big.open("rb") as handle:  # a client that ignores the limit is refused by the server
        assert requests.post(f"{url}gradio_api/upload", files={"files": handle}, timeout=30).status_code == 413
    assert asked == []
    out = client.predict(handle_file(str(small)), QUESTION, 3, False, "short", api_name="/answer")
    assert len(out["candidates"]) == 3 and len(asked) == 1


# ------------------------------------------------------------------------------------ file access
def test_answer_never_reads_a_server_side_path(server, tmp_path):
    url, asked = server
    secret = tmp_path / "secret.png"
    odd_images.noise(16, 16).save(secret)  # a readable picture: reading it would give an answer
    asked.clear()
    for path in ("/etc/passwd", str(secret), str(REPO / "app.py"), "/tmp/gradio/../../etc/passwd"):
        event, payload = call_answer_raw(url, [{"path": path, "meta": {"_type": "gradio.FileData"}},
                                               QUESTION, 3, False, "short", 0, 16])
        assert event == "error", (path, payload)
        assert "root:" not in payload and "candidates" not in payload
        assert requests.get(f"{url}gradio_api/file={path}", timeout=10).status_code == 403
    with pytest.raises(AppError):  # a bare path string through the client is not a file either
        Client(url, verbose=False).predict("/etc/passwd", QUESTION, 3, False, "short", api_name="/answer")
    assert asked == []

