"""Continuous batching in the llama.cpp runtime (``max_batch_size`` > 1, :mod:`llm.llamacpp_batching`): the same
greedy replies as one chat at a time, each caller's own stream, deadlines, abandoned streams, prompts longer than a
slot, the real bundled model with its refiner, and the ``--max-batch-size`` setting down to the app's queue."""

import threading
import time

import pytest

from llm import LLMTimeoutError
from llm.llamacpp_backend import LlamaCppChatLLM
from tiny_gguf import write_tiny_gguf
from tiny_models import single_thread_fixture
from vqa_llm.errors import BadSettingError
from vqa_llm.profiles import DEFAULT_MAX_BATCH_SIZE, add_profile_arguments, overrides_from_args, resolve_profile

one_thread = single_thread_fixture()

CHATS = [
    [{"role": "system", "content": "You answer questions."}, {"role": "user", "content": "the colour?"}],
    [{"role": "user", "content": "then the shape is a circle"}],
    [{"role": "user", "content": "é ü ñ 0 1 2 — in the end"}],
    [{"role": "system", "content": "You answer questions."}, {"role": "user", "content": "which shape is it?"}],
    [{"role": "user", "content": "a red triangle on white"}],
    [{"role": "system", "content": "You answer questions."}, {"role": "user", "content": "is it blue?"}],
]


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    """F32 matrices with peaky logits: batched and one-by-one decoding differ by float rounding only."""
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny_gguf") / "tiny.gguf", seed=3, scale=0.5, quantized=False)


@pytest.fixture(scope="module")
def single(gguf_file) -> LlamaCppChatLLM:
    return LlamaCppChatLLM.from_gguf(gguf_file, n_threads=1)


@pytest.fixture(scope="module")
def batched(gguf_file) -> LlamaCppChatLLM:
    """Three slots for six chats: the others wait for a free slot."""
    llm = LlamaCppChatLLM.from_gguf(gguf_file, n_threads=1, max_batch_size=3, slot_context=256)
    yield llm
    llm.batcher.close()


def test_batch_replies_equal_one_chat_at_a_time(single, batched):
    expected = [single.generate(chat, max_new_tokens=12) for chat in CHATS]
    assert batched.batcher is not None and single.batcher is None
    assert batched.generate_batch(CHATS, max_new_tokens=12) == expected
    assert batched.generate_batch(CHATS[::-1], max_new_tokens=12) == expected[::-1]  # slots reused, caches differ
    assert [batched.generate(chat, max_new_tokens=12) for chat in CHATS[:2]] == expected[:2]


def test_streams_from_many_threads_each_get_their_own_reply(single, batched):
    expected = [single.generate(chat, max_new_tokens=16) for chat in CHATS]
    chunks: list[list[str]] = [[] for _ in CHATS]

    def visitor(i: int) -> None:
        for piece in batched.stream(CHATS[i], max_new_tokens=16):
            chunks[i].append(piece)

    threads = [threading.Thread(target=visitor, args=(i,)) for i in range(len(CHATS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert ["".join(c) for c in chunks] == expected
    assert all(len(c) > 1 for c in chunks)  # streamed in pieces, not handed over whole


def test_requests_really_share_decode_steps(gguf_file, single):
    """Six chats through three slots take fewer decode calls than six chats one after the other would."""
    llm = LlamaCppChatLLM.from_gguf(gguf_file, n_threads=1, max_batch_size=3, slot_context=256)
    batcher, steps = llm.batcher, []
    original = batcher._context.decode
    batcher._context.decode = lambda batch: (steps.append(batch.batch.n_tokens), original(batch))[1]
    replies = llm.generate_batch(CHATS, max_new_tokens=8)
    llm.batcher.close()
    tokens = [len(single.llama.tokenize(r.encode(), add_bos=False, special=False)) for r in replies]
    assert max(steps) > 3  # prompt tokens of several chats in one call
    assert len(steps) < sum(tokens)  # one at a time needs at least one call per generated token


def test_deadline_abandoned_stream_and_a_prompt_longer_than_a_slot(gguf_file, single, batched):
    with pytest.raises(LLMTimeoutError):
        batched.generate(CHATS[0], max_new_tokens=200, timeout=1e-6)
    stream = batched.stream(CHATS[0], max_new_tokens=200)
    assert next(stream)
    stream.close()  # the visitor went away: the slot is freed at the next step
    started = time.monotonic()
    assert batched.generate_batch(CHATS[:3], max_new_tokens=8) == [single.generate(c, max_new_tokens=8)
                                                                   for c in CHATS[:3]]
    assert time.monotonic() - started < 60
    small = LlamaCppChatLLM.from_gguf(gguf_file, n_threads=1, max_batch_size=2, slot_context=24)
    long_chat = [{"role": "user", "content": "a long question " * 6}]
    assert not small.batcher.fits(small.count_tokens(long_chat), 8)
    assert small.generate(long_chat, max_new_tokens=8) == single.generate(long_chat, max_new_tokens=8)
    small.batcher.close()


def test_sampling_in_a_batch(batched):
    replies = batched.generate_batch(CHATS[:3], max_new_tokens=8, temperature=1.0, top_p=0.9)
    assert len(replies) == 3 and all(isinstance(r, str) for r in replies)


def test_the_bundled_model_and_refiner_give_the_same_replies_batched():
    """The real SmolLM2 with its LoRA refiner (applied to the batched context too): refiner prompts answered
    together equal the replies one at a time, and each reply is in the refiner's format."""
    from llm import smollm2_gguf
    from prompts import build_messages
    from vqa_llm.profiles import BUNDLED_REFINER_DIR

    directory, filename = smollm2_gguf()
    path = f"{directory}/{filename}"
    shapes = [("circle", "blue"), ("triangle", "red"), ("rectangle", "green"), ("circle", "yellow")]
    chats = [build_messages("short", f"a {colour} {shape}", question,
                            [(shape, 0.9), ("circle" if shape != "circle" else "triangle", 0.05), ("yes", 0.01)],
                            directory=BUNDLED_REFINER_DIR / "templates")
             for shape, colour in shapes for question in (f"What is the {colour} shape?", "What shape is it?")]
    one = LlamaCppChatLLM.from_gguf(path, adapter=BUNDLED_REFINER_DIR)
    expected = [one.generate(chat, max_new_tokens=40) for chat in chats]
    many = LlamaCppChatLLM.from_gguf(path, adapter=BUNDLED_REFINER_DIR, max_batch_size=4)
    replies = many.generate_batch(chats, max_new_tokens=40)
    many.batcher.close()
    assert all(reply.startswith("Explanation: ") and "\nAnswer: " in reply for reply in expected + replies)
    # the parsed answers agree everywhere; the texts too, but batched kernels add in another order, so a CPU may
    # break a near-tie differently in a rare reply (identical here on 32 and 500 prompts, docs/benchmarks.md)
    assert [r.rsplit("Answer: ", 1)[1] for r in replies] == [r.rsplit("Answer: ", 1)[1] for r in expected]
    assert sum(a == b for a, b in zip(replies, expected)) >= len(chats) - 2


def test_max_batch_size_setting(monkeypatch):
    import argparse

    parser = add_profile_arguments(argparse.ArgumentParser())
    assert resolve_profile("bundled")[0].max_batch_size == DEFAULT_MAX_BATCH_SIZE
    ns = parser.parse_args(["--max-batch-size", "1"])
    assert resolve_profile("bundled", overrides_from_args(ns))[0].max_batch_size == 1
    monkeypatch.setenv("VQA_LLM_MAX_BATCH_SIZE", "4")
    assert resolve_profile("bundled")[0].max_batch_size == 4
    for bad in ("0", "two", "-3"):
        monkeypatch.setenv("VQA_LLM_MAX_BATCH_SIZE", bad)
        with pytest.raises(BadSettingError, match="batch size"):
            resolve_profile("bundled")
    with pytest.raises(Exception, match="max_batch_size"):
        LlamaCppChatLLM(None, "x", max_batch_size=0)
