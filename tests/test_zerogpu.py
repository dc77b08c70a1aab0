"""ZeroGPU (:mod:`vqa_llm.zerogpu`) with a stand-in ``spaces`` package that behaves as the real one does where it
matters: a decorated function is one GPU call of the duration it asks for, a generator streams out of it, and an
exception other than ``gradio.Error`` comes out as its class name only. Checked on the app's handlers: one GPU
call per question (all model work inside it), the duration from the request, the visitor's messages kept."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import types
from pathlib import Path

import easy_vqa
import gradio as gr
import pytest

import app
from robustness_testing import QUESTION, pipeline_like, tiny_pipeline_fixtures
from tiny_models import single_thread_fixture
from vqa_llm.uploads import UploadPolicy
from vqa_llm.zerogpu import BASE_SECONDS, MAX_SECONDS, answer_seconds, gpu_call, on_zero_gpu

one_thread = single_thread_fixture()
argv, pipe = tiny_pipeline_fixtures()
IMAGE = easy_vqa.get_test_image_paths()[0]


class StandInSpaces:
    """``spaces.GPU`` as the app meets it: records each call with the seconds it asked for, and says whether a
    call is running (``inside``)."""

    def __init__(self):
        self.calls: list[tuple[str, int]] = []
        self.inside = False

    def _enter(self, function, duration, args, kwargs):
        seconds = duration(*args, **kwargs) if callable(duration) else duration
        self.calls.append((function.__name__, seconds))
        self.inside = True

    @staticmethod
    def _as_zerogpu_reports(exc: Exception) -> Exception:
        return exc if isinstance(exc, gr.Error) else RuntimeError(type(exc).__name__)

    def GPU(self, function, duration=60):  # noqa: N802 (the real package's name)
        if inspect.isgeneratorfunction(function):
            def on_gpu(*args, **kwargs):
                self._enter(function, duration, args, kwargs)
                try:
                    yield from function(*args, **kwargs)
                except Exception as exc:
                    raise self._as_zerogpu_reports(exc) from None
                finally:
                    self.inside = False
        else:
            def on_gpu(*args, **kwargs):
                self._enter(function, duration, args, kwargs)
                try:
                    return function(*args, **kwargs)
                except Exception as exc:
                    raise self._as_zerogpu_reports(exc) from None
                finally:
                    self.inside = False
        return on_gpu


@pytest.fixture
def spaces(monkeypatch):
    stand_in = StandInSpaces()
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=stand_in.GPU))
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    return stand_in


@pytest.fixture
def handlers(spaces, pipe, monkeypatch):
    """The app's handlers on ZeroGPU; ``seen`` records, for each piece of model work (the VQA stage, each LLM
    reply), whether it ran inside a GPU call."""
    watched = pipeline_like(pipe)
    seen = []
    vle_stage, llm_stream = watched._vle_stage, watched.llm._stream

    def watched_vle_stage(*args, **kwargs):
        seen.append(spaces.inside)
        return vle_stage(*args, **kwargs)

    def watched_llm_stream(*args, **kwargs):
        seen.append(spaces.inside)
        yield from llm_stream(*args, **kwargs)

    monkeypatch.setattr(watched, "_vle_stage", watched_vle_stage)
    monkeypatch.setattr(watched.llm, "_stream", watched_llm_stream)
    demo_handlers = app.DemoHandlers(watched, app.VLETasks(note="none"), UploadPolicy([Path(IMAGE).parent]))
    demo_handlers.seen = seen
    return demo_handlers


def test_gpu_call_wraps_only_on_zero_gpu(spaces):
    def stage(x):
        return x + 1

    assert not on_zero_gpu({}) and not on_zero_gpu({"SPACE_ID": "x/y", "SPACES_ZERO_GPU": "false"})
    assert gpu_call(stage, environ={}) is stage and gpu_call(stage, environ={"SPACE_ID": "x/y"}) is stage
    wrapped = gpu_call(stage, 33, environ={"SPACES_ZERO_GPU": "true"})
    assert wrapped is not stage and wrapped(1) == 2 and spaces.calls == [("stage", 33)]


def test_the_duration_grows_with_the_tokens_a_request_may_generate():
    assert answer_seconds(0) == answer_seconds(64, use_llm=False) == BASE_SECONDS
    assert answer_seconds(64) == BASE_SECONDS + 7 and answer_seconds(None) == answer_seconds(64)  # the default
    assert answer_seconds(128, runs=3) == BASE_SECONDS + 39
    assert answer_seconds(512, runs=5) == MAX_SECONDS  # bounded


def test_one_question_is_one_gpu_call_with_its_duration_and_streams(handlers, spaces):
    updates = list(handlers.answer(IMAGE, QUESTION, 3, True, "short", 0, 24))
    assert [u["stage"] for u in updates][0] == "vqa" and updates[-1]["stage"] == "done"
    assert updates[-1]["llm_used"] and updates[-1]["error"] is None
    assert spaces.calls == [("_updates", answer_seconds(24))]
    assert len(handlers.seen) == 2 and all(handlers.seen), "model work ran outside the GPU call"
    spaces.calls.clear()
    list(handlers.ask(IMAGE, QUESTION, 3, False, "short", 0, 200))
    assert spaces.calls == [("_updates", BASE_SECONDS)]  # no LLM: no time asked for its tokens


def test_the_other_endpoints_are_one_short_call_each(handlers, spaces):
    assert handlers.caption(IMAGE) is not None
    assert spaces.calls == [("_model_work", BASE_SECONDS)]


def test_errors_keep_their_message_through_the_gpu_call(handlers, spaces):
    with pytest.raises(gr.Error, match="The question is empty"):
        list(handlers.answer(IMAGE, "   ", 3, True, "short", 0, 16))
    with pytest.raises(gr.Error, match="Unknown prompt template"):
        list(handlers.answer(IMAGE, QUESTION, 3, True, "nope", 0, 16))
    with pytest.raises(gr.Error, match="Image-text matching|none"):  # the tasks' own note
        handlers.itm(IMAGE, "a red circle")
    # the stand-in is faithful: an error that is not a gr.Error loses its message on the way out
    bare = gpu_call(lambda: (_ for _ in ()).throw(ValueError("details")), environ={"SPACES_ZERO_GPU": "1"})
    with pytest.raises(RuntimeError, match="^ValueError$"):
        bare()


def test_spaces_is_not_imported_off_spaces():
    code = "import vqa_llm.zerogpu, vqa_llm.tasks, sys; print('spaces' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "SPACES_ZERO_GPU"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1], env=env)
    assert out.stdout.strip() == "False"
