"""Helpers for the robustness, load, fault and security tests: tiny offline models and an in-process app server.

:func:`tiny_model_argv` builds a tiny random VLE, BLIP and chat LLM and returns the ``app.py`` flags that load
them (always tiny, even when the bundled models exist: these tests are about failure handling, not answers);
:func:`tiny_pipeline_fixtures` makes module fixtures of those flags and of a pipeline loaded from them.
:func:`serve_pipeline` serves :func:`app.build_demo` around a pipeline the test holds — so the test can look at
its cache or swap its LLM — through the same :func:`app.serve` as ``python app.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

import app
from app_testing import free_port
from tiny_models import build_tiny_blip, build_tiny_chat_lm
from tiny_vle import build_tiny_vle_vqa
from vqa_llm import Profile, VQALLMPipeline, overrides_from_args, resolve_profile

QUESTION = "what is the color of the shape?"


def tiny_model_argv(root: str | Path) -> list[str]:
    """``app.py``/CLI model flags for tiny random models built under ``root`` (no downloads, no ITM/PBC tabs)."""
    root = Path(root)
    return ["--profile", "bundled", "--device", "cpu", "--vle-pretrained", "none",
            "--vqa-model", build_tiny_vle_vqa(root / "vle-vqa"),
            "--captioner", build_tiny_blip(root / "blip"),
            "--llm", build_tiny_chat_lm(root / "chat", max_position_embeddings=4096)]


def profile_from_argv(argv: Sequence[str]) -> tuple[Profile, str]:
    """The profile (and the reason for it) that ``python app.py ARGV`` would use."""
    args = app.build_parser().parse_args(list(argv))
    return resolve_profile(args.profile, overrides_from_args(args))


def tiny_pipeline_fixtures(use_llm: bool = True) -> tuple[Any, Any]:
    """Module-scoped fixtures ``(argv, pipe)``: :func:`tiny_model_argv` flags of models built once per test
    module, and the pipeline loaded from them (with its LLM unless ``use_llm=False``).

    Assign them at module level in the test file (the names given become the fixture names; the pipeline
    fixture needs the flags one to be called ``argv``): ``argv, pipe = tiny_pipeline_fixtures()``.
    """

    @pytest.fixture(scope="module")
    def argv(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
        return tiny_model_argv(tmp_path_factory.mktemp("tiny_models"))

    @pytest.fixture(scope="module")
    def pipe(argv: list[str]) -> VQALLMPipeline:
        profile, _ = profile_from_argv(argv)
        return VQALLMPipeline.from_profile(profile, use_llm=use_llm)

    return argv, pipe


def pipeline_like(pipe: VQALLMPipeline, llm: Any = "same", **kwargs: Any) -> VQALLMPipeline:
    """A new pipeline (own cache) on the models of ``pipe``; ``llm`` replaces its LLM when given."""
    return VQALLMPipeline(pipe.vqa_model, pipe.processor, pipe.captioner, pipe.llm if llm == "same" else llm,
                          model_ids=dict(pipe.model_ids), **kwargs)


@contextmanager
def serve_pipeline(pipe: VQALLMPipeline, argv: Sequence[str], *server_flags: str,
                   tasks: Any = None) -> Iterator[tuple[Any, str]]:
    """Serve the app page around ``pipe`` on a free port with ``app.serve``; yields ``(demo, url)``.

    ``argv`` are the model flags (for the profile shown in the banner), ``server_flags`` e.g.
    ``"--max-queue", "2"``; ``tasks``: the VLE tasks of the matching/relevance tabs (default: none).
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    profile, reason = profile_from_argv(argv)
    args = app.build_parser().parse_args([*argv, "--port", str(free_port()), *server_flags])
    demo = app.build_demo(pipe, profile, reason, tasks, examples=[], max_file_size=args.max_file_size)
    _, url, _ = app.serve(demo, args, prevent_thread_lock=True)
    try:
        yield demo, url
    finally:
        demo.close()


def call_answer_raw(url: str, data: list[Any], timeout: float = 60, endpoint: str = "answer") -> tuple[str, str]:
    """Call ``/answer`` (or another ``endpoint``) over plain HTTP (no gradio_client rewriting of file paths).

    Returns ``(event, data)`` of the last server-sent event: ``("complete", json)`` or ``("error", json)``.
    """
    body = json.dumps({"data": data})  # NaN and Infinity as Python writes them, as a client may send them
    started = requests.post(f"{url}gradio_api/call/{endpoint}", data=body, timeout=timeout,
                            headers={"Content-Type": "application/json"})
    started.raise_for_status()
    event_id = started.json()["event_id"]
    stream = requests.get(f"{url}gradio_api/call/{endpoint}/{event_id}", timeout=timeout)
    event, payload = "", ""
    for line in stream.text.splitlines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            payload = line.split(":", 1)[1].strip()
    return event, payload
