"""Chat LLM behind an OpenAI-compatible HTTP endpoint (``POST {base_url}/v1/chat/completions``).

Works with OpenAI itself and with local servers that speak the same protocol (vLLM, llama.cpp's
server, Ollama, LM Studio, TGI). Streaming reads server-sent events (``data: {...}`` lines up to
``data: [DONE]``). 429 and 5xx answers are retried a bounded number of times with exponential
back-off (a short ``Retry-After`` is honoured); ``timeout`` bounds the whole call.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import requests
import urllib3.exceptions

from .base import ChatLLM, GenerationOptions, check_messages
from .errors import LLMConnectionError, LLMError, LLMTimeoutError

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 10.0
BODY_EXCERPT = 300


def chat_completions_url(base_url: str) -> str:
    """``{base_url}/v1/chat/completions``, accepting a base URL with or without the ``/v1`` suffix."""
    base = base_url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")


def iter_stream_lines(response: requests.Response) -> Iterator[str]:
    """Text lines of a streamed response, each as soon as it arrives (requests' ``iter_lines`` waits for 512 bytes).

    Chunked responses are read one HTTP chunk at a time; others with ``read1`` (whatever has arrived).
    """
    raw = response.raw
    if getattr(raw, "chunked", False) or not hasattr(raw, "read1"):
        chunks = response.iter_content(chunk_size=None)
    else:
        chunks = iter(lambda: raw.read1(65536, decode_content=True), b"")
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode("utf-8", errors="replace")
    if buffer:
        yield buffer.rstrip(b"\r").decode("utf-8", errors="replace")


class OpenAIChatLLM(ChatLLM):
    """An OpenAI-compatible chat endpoint. The API key (if any) is read from the ``api_key_env`` variable."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_workers: int = 4,
    ):
        self.url = chat_completions_url(base_url)
        self.model_id = model
        self.max_context = None
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_workers = max_workers
        self.max_batch_size = max(1, max_workers)

    # ------------------------------------------------------------------------------------- HTTP
    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _payload(self, messages: Sequence[dict], opts: GenerationOptions, stream: bool) -> dict:
        payload = {
            "model": self.model_id,
            "messages": check_messages(messages),
            "max_tokens": opts.max_new_tokens,
            "stream": stream,
            "temperature": 0.0 if opts.greedy else opts.temperature,
        }
        if opts.top_p is not None and not opts.greedy:
            payload["top_p"] = opts.top_p
        return payload

    def _timeout_error(self, limit: float) -> LLMTimeoutError:
        return LLMTimeoutError(f"{self.url} did not answer within {limit:g} s; raise the timeout or check the server.")

    def _post(self, payload: dict, limit: float, stream: bool) -> requests.Response:
        """POST with bounded retries on 429/5xx; returns a 2xx response or raises an LLM error."""
        end = time.monotonic() + limit
        for attempt in range(self.max_retries + 1):
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise self._timeout_error(limit)
            try:
                response = requests.post(
                    self.url, json=payload, headers=self._headers(), timeout=remaining, stream=stream
                )
            except requests.Timeout:
                raise self._timeout_error(limit) from None
            except requests.ConnectionError as exc:
                raise LLMConnectionError(
                    f"Cannot reach the LLM endpoint {self.url} ({exc.__class__.__name__}: "
                    f"{exc}). Is the server running, and is the base URL right?"
                ) from None
            if response.status_code < 300:
                return response
            body = response.text[:BODY_EXCERPT]
            response.close()
            if response.status_code not in RETRY_STATUSES or attempt == self.max_retries:
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise LLMError(f"{self.url} answered HTTP {response.status_code}{tries}: {body}")
            delay = self.backoff * 2**attempt
            retry_after = response.headers.get("Retry-After")
            if retry_after:
                try:
                    if float(retry_after) <= MAX_RETRY_AFTER_S:
                        delay = max(delay, float(retry_after))
                except ValueError:
                    pass
            if time.monotonic() + delay > end:
                raise self._timeout_error(limit)
            time.sleep(delay)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------------------------ interface
    def _generate(self, messages: Sequence[dict], opts: GenerationOptions) -> str:
        limit = opts.timeout or self.timeout
        response = self._post(self._payload(messages, opts, stream=False), limit, stream=False)
        try:
            data = response.json()
            content = data["choices"][0]["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise LLMError(f"{self.url} sent an unexpected reply: {response.text[:BODY_EXCERPT]}") from None
        return content or ""

    def _stream(self, messages: Sequence[dict], opts: GenerationOptions) -> Iterator[str]:
        """Reply chunks from server-sent events. Bad messages raise here; the request starts on the first
        ``next()``."""
        return self._events(self._payload(messages, opts, stream=True), opts.timeout or self.timeout)

    def _events(self, payload: dict, limit: float) -> Iterator[str]:
        end = time.monotonic() + limit
        response = self._post(payload, limit, stream=True)
        try:
            for line in iter_stream_lines(response):
                if time.monotonic() > end:
                    raise self._timeout_error(limit)
                if not line or not line.startswith("data:"):
                    continue  # blank separators, comments (": ping"), event/id fields
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    return
                try:
                    event = json.loads(data)
                except json.JSONDecodeError:
                    raise LLMError(f"{self.url} sent a malformed stream event: {data[:BODY_EXCERPT]}") from None
                if "error" in event:
                    raise LLMError(f"{self.url} reported an error while streaming: {event['error']}")
                for choice in event.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        yield piece
        except (requests.Timeout, requests.ConnectionError, urllib3.exceptions.HTTPError) as exc:
            if (
                isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError))
                or time.monotonic() > end
                or "timed out" in str(exc).lower()
            ):
                raise self._timeout_error(limit) from None
            raise LLMConnectionError(f"The connection to {self.url} broke while streaming: {exc}") from None
        finally:
            response.close()

    def _generate_batch(self, batch: Sequence[Sequence[dict]], opts: GenerationOptions) -> list[str]:
        """Replies to several chats, requested concurrently (``max_workers`` at a time), in order."""
        with ThreadPoolExecutor(max_workers=max(1, self.max_workers)) as pool:
            return list(pool.map(lambda messages: self._generate(messages, opts), batch))
