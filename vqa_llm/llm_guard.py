"""Calling an LLM backend with a hard deadline, turning every way it can fail into :class:`LLMFailure`.

Backends get the ``timeout`` too and normally stop themselves; the guard runs the call in a daemon thread
and gives up ``grace`` seconds later if a backend ignores it (a hung socket, a stuck server), so one bad
LLM call can never block the caller forever.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from llm import ChatLLM, LLMTimeoutError

from .errors import LLMFailure

_CHUNK, _END, _ERROR = "chunk", "end", "error"


def grace_seconds(timeout: float) -> float:
    """Extra time given to a backend to report its own timeout before the guard gives up."""
    return max(0.5, 0.1 * timeout)


def describe_failure(exc: BaseException, model_id: str, timeout: float | None) -> str:
    """A user-facing message for an LLM failure that says what to do."""
    if isinstance(exc, LLMFailure):
        return str(exc)
    if isinstance(exc, (LLMTimeoutError, TimeoutError)):
        limit = f"{timeout:g} s" if timeout else "its time limit"
        return (f"The LLM {model_id} did not answer within {limit} ({exc}). The VQA answer is shown "
                "instead; try again, raise the LLM timeout, lower max_new_tokens or use a smaller LLM.")
    if isinstance(exc, ConnectionError):
        return (f"The LLM {model_id} could not be reached ({exc}). The VQA answer is shown instead; check "
                "that the LLM server is running and its URL is right.")
    return (f"The LLM {model_id} failed ({type(exc).__name__}: {exc}). The VQA answer is shown instead; "
            "try again, or run without the LLM.")


def _timeout_failure(model_id: str, timeout: float) -> LLMFailure:
    return LLMFailure(f"The LLM {model_id} did not answer within {timeout:g} s. The VQA answer is shown instead; "
                      "try again, raise the LLM timeout, lower max_new_tokens or use a smaller LLM.", timed_out=True)


def _failure(exc: BaseException, model_id: str, timeout: float | None) -> LLMFailure:
    timed_out = isinstance(exc, TimeoutError) or getattr(exc, "timed_out", False)
    return LLMFailure(describe_failure(exc, model_id, timeout), timed_out=timed_out)


def stream_with_deadline(llm: ChatLLM, messages: Sequence[dict], timeout: float | None,
                         **options: Any) -> Iterator[str]:
    """Yield ``llm.stream(messages, timeout=timeout, **options)`` chunks; LLMFailure on any error or timeout.

    ``timeout`` bounds the whole reply (``None`` = no bound). When the consumer stops early, the backend's
    iterator is closed as soon as its next chunk arrives.
    """
    model_id = getattr(llm, "model_id", "") or type(llm).__name__
    inbox: queue.Queue = queue.Queue()
    stop = threading.Event()

    def work() -> None:
        try:
            chunks = llm.stream(messages, timeout=timeout, **options)
            try:
                for chunk in chunks:
                    if stop.is_set():
                        break
                    inbox.put((_CHUNK, chunk))
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
            inbox.put((_END, None))
        except BaseException as exc:  # handed to the consumer
            inbox.put((_ERROR, exc))

    threading.Thread(target=work, name="vqa-llm-stream", daemon=True).start()
    deadline = None if timeout is None else time.monotonic() + timeout + grace_seconds(timeout)
    try:
        while True:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise _timeout_failure(model_id, timeout)
            try:
                kind, payload = inbox.get(timeout=wait)
            except queue.Empty:
                raise _timeout_failure(model_id, timeout) from None
            if kind == _END:
                return
            if kind == _ERROR:
                raise _failure(payload, model_id, timeout) from payload
            if payload:
                yield str(payload)
    finally:
        stop.set()


def generate_batch_with_deadline(llm: ChatLLM, batch: Sequence[Sequence[dict]], timeout: float | None,
                                 **options: Any) -> list[str]:
    """``llm.generate_batch(batch, timeout=timeout, **options)`` bounded by ``timeout`` per chat.

    The guard allows ``timeout * len(batch)`` seconds (plus grace) for the whole call, as the backend may
    answer the chats one after the other. Raises LLMFailure on any error or timeout.
    """
    model_id = getattr(llm, "model_id", "") or type(llm).__name__
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["replies"] = llm.generate_batch(batch, timeout=timeout, **options)
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=work, name="vqa-llm-batch", daemon=True)
    thread.start()
    total = None if timeout is None else timeout * max(1, len(batch))
    thread.join(None if total is None else total + grace_seconds(total))
    if thread.is_alive():
        raise _timeout_failure(model_id, total)
    if "error" in box:
        raise _failure(box["error"], model_id, timeout) from box["error"]
    replies = box.get("replies")
    if not isinstance(replies, list) or len(replies) != len(batch):
        raise LLMFailure(f"The LLM {model_id} returned {len(replies) if isinstance(replies, list) else replies!r} "
                         f"replies for {len(batch)} chats; the VQA answers are shown instead.")
    return [str(r) for r in replies]
