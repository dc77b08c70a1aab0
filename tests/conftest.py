"""Suite-wide settings: converted GGUF models are cached in a folder of this test session, never in the user's
``~/.cache`` (tests write nothing outside the repository and pytest's temporary folders)."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def gguf_cache_of_this_session(tmp_path_factory):
    """``VQA_LLM_CACHE`` for the whole session (subprocesses inherit it); the bundled SmolLM2 is converted once."""
    previous = os.environ.get("VQA_LLM_CACHE")
    os.environ["VQA_LLM_CACHE"] = str(tmp_path_factory.mktemp("vqa_llm_cache"))
    yield
    if previous is None:
        os.environ.pop("VQA_LLM_CACHE", None)
    else:
        os.environ["VQA_LLM_CACHE"] = previous
