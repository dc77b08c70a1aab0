"""Tests for the OpenAI-compatible HTTP backend against a real local HTTP server (no network)."""

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llm import LLMConnectionError, LLMError, LLMTimeoutError, OpenAIChatLLM
from llm.openai_backend import chat_completions_url

MESSAGES = [{"role": "user", "content": "What colour is the ball?"}]


class FakeServer(ThreadingHTTPServer):
    """Records requests; ``script`` is a list of behaviours consumed one per request (the last one repeats)."""

    daemon_threads = True
    request_queue_size = 64  # room for every connection a concurrent batch opens at once

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[dict] = []
        self.script: list[str] = ["plain"]
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()

    def handle_error(self, request, client_address) -> None:
        """Clients that gave up (the timeout tests) make late writes fail; that is expected, keep quiet."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def log_message(self, *args):  # keep the test output clean
        pass

    def _json(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _start_events(self, chunked: bool) -> None:
        if chunked:  # what real servers do: HTTP/1.1 chunked transfer encoding
            self.protocol_version = "HTTP/1.1"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
        self.end_headers()

    def _event(self, data: bytes, chunked: bool) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        self.wfile.flush()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
        index = min(len(self.server.requests), len(self.server.script)) - 1
        action = self.server.script[index]
        last_user = body["messages"][-1]["content"]
        if action == "plain":
            self._json(
                200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": f"echo: {last_user}"}}]}
            )
        elif action in ("sse", "sse-chunked"):
            chunked = action == "sse-chunked"
            self._start_events(chunked)
            self._event(b": keep-alive comment\n\n", chunked)
            for piece in ["Answer", ": ", "red", "\nExplanation: ok"]:
                event = {"choices": [{"index": 0, "delta": {"content": piece}}]}
                self._event(f"data: {json.dumps(event)}\r\n\r\n".encode(), chunked)
            self._event(b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n', chunked)
            self._event(b"data: [DONE]\n\n", chunked)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        elif action in ("sse-stall", "sse-stall-chunked"):
            chunked = action == "sse-stall-chunked"
            self._start_events(chunked)
            self._event(b'data: {"choices": [{"delta": {"content": "first"}}]}\n\n', chunked)
            time.sleep(3)
        elif action == "429":
            self._json(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
        elif action == "500":
            self._json(500, {"error": {"message": "the GPU caught fire"}})
        elif action == "400":
            self._json(400, {"error": {"message": "model 'x' does not exist"}})
        elif action == "sleep":
            time.sleep(3)
            self._json(200, {"choices": [{"message": {"content": "too late"}}]})
        elif action == "busy":  # a server working on each request for a while, counting how many it holds
            with self.server.lock:
                self.server.in_flight += 1
                self.server.most_in_flight = max(self.server.most_in_flight, self.server.in_flight)
            time.sleep(0.5)
            with self.server.lock:
                self.server.in_flight -= 1
            self._json(200, {"choices": [{"message": {"content": f"echo: {last_user}"}}]})


@pytest.fixture()
def server():
    srv = FakeServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def client(server, **kwargs) -> OpenAIChatLLM:
    kwargs.setdefault("backoff", 0.01)
    return OpenAIChatLLM(server.url, "test-model", **kwargs)


@pytest.mark.parametrize(
    "base, expected",
    [
        ("http://h:1", "http://h:1/v1/chat/completions"),
        ("http://h:1/", "http://h:1/v1/chat/completions"),
        ("http://h:1/v1", "http://h:1/v1/chat/completions"),
        ("http://h:1/v1/", "http://h:1/v1/chat/completions"),
        ("http://h:1/api/v1/chat/completions", "http://h:1/api/v1/chat/completions"),
    ],
)
def test_endpoint_url(base, expected):
    assert chat_completions_url(base) == expected


def test_plain_generate_sends_an_openai_request(server, monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test")
    llm = client(server, api_key_env="TEST_LLM_KEY")
    assert llm.generate(MESSAGES, max_new_tokens=7) == "echo: What colour is the ball?"
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["body"] == {
        "model": "test-model",
        "messages": MESSAGES,
        "max_tokens": 7,
        "stream": False,
        "temperature": 0.0,
    }
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    llm.generate(MESSAGES, temperature=0.7, top_p=0.9)
    assert server.requests[-1]["body"]["temperature"] == 0.7 and server.requests[-1]["body"]["top_p"] == 0.9


def test_no_api_key_sends_no_authorization(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    OpenAIChatLLM(server.url + "/v1", "m").generate(MESSAGES)
    assert "Authorization" not in server.requests[0]["headers"]


@pytest.mark.parametrize("action", ["sse", "sse-chunked"])
def test_stream_parses_server_sent_events(server, action):
    server.script = [action]
    chunks = list(client(server).stream(MESSAGES))
    assert chunks == ["Answer", ": ", "red", "\nExplanation: ok"]
    assert server.requests[0]["body"]["stream"] is True


def test_429_is_retried_then_succeeds(server):
    server.script = ["429", "429", "plain"]
    assert client(server, max_retries=3).generate(MESSAGES).startswith("echo:")
    assert len(server.requests) == 3


def test_500_forever_gives_up_after_bounded_retries(server):
    server.script = ["500"]
    with pytest.raises(LLMError, match=r"HTTP 500 after 3 attempts.*GPU caught fire"):
        client(server, max_retries=2).generate(MESSAGES)
    assert len(server.requests) == 3


def test_client_errors_are_not_retried(server):
    server.script = ["400"]
    with pytest.raises(LLMError, match="HTTP 400.*does not exist"):
        client(server).generate(MESSAGES)
    assert len(server.requests) == 1


def test_timeout_when_the_server_is_slow(server):
    server.script = ["sleep"]
    with pytest.raises(LLMTimeoutError, match="did not answer within 0.3 s"):
        client(server).generate(MESSAGES, timeout=0.3)


@pytest.mark.parametrize("action", ["sse-stall", "sse-stall-chunked"])
def test_timeout_while_streaming(server, action):
    server.script = [action]
    received = []
    with pytest.raises(LLMTimeoutError):
        for chunk in client(server, timeout=1.5).stream(MESSAGES):  # the server stalls 3 s after "first"
            received.append(chunk)
    assert received == ["first"]


def test_connection_refused_names_the_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    llm = OpenAIChatLLM(f"http://127.0.0.1:{port}", "m")
    with pytest.raises(LLMConnectionError, match=re.escape(f"http://127.0.0.1:{port}/v1/chat/completions")):
        llm.generate(MESSAGES)
    with pytest.raises(LLMConnectionError):
        list(llm.stream(MESSAGES))


def test_generate_batch_keeps_the_order(server):
    batch = [[{"role": "user", "content": f"question {i}"}] for i in range(6)]
    assert client(server, max_workers=3).generate_batch(batch) == [f"echo: question {i}" for i in range(6)]


def test_bad_messages_fail_before_any_request(server):
    with pytest.raises(LLMError, match="role"):
        client(server).generate([{"role": "nobody", "content": "x"}])
    with pytest.raises(LLMError, match="max_new_tokens"):
        client(server).stream(MESSAGES, max_new_tokens=0)  # raised when called, not when iterated
    assert server.requests == []


@pytest.mark.parametrize("concurrency", [1, 3, 8])
def test_a_batch_keeps_n_requests_in_flight(server, concurrency):
    """--llm-concurrency N: a batch of 12 chats keeps N requests in flight (a server working 0.5 s on each), the
    replies in order."""
    server.script = ["busy"]
    batch = [[{"role": "user", "content": f"question {i}"}] for i in range(12)]
    replies = client(server, max_workers=concurrency).generate_batch(batch)
    assert replies == [f"echo: question {i}" for i in range(12)]
    assert server.most_in_flight == concurrency


def test_the_profile_sets_the_concurrency_of_an_openai_endpoint(server, monkeypatch):
    from vqa_llm import BadSettingError, resolve_profile
    from vqa_llm.loading import load_chat_llm
    from vqa_llm.profiles import DEFAULT_LLM_CONCURRENCY

    overrides = {"openai_base_url": server.url, "openai_model": "m"}
    default, _ = resolve_profile("bundled", overrides, environ={})
    assert load_chat_llm(default, "cpu").max_workers == DEFAULT_LLM_CONCURRENCY
    from_env, _ = resolve_profile("bundled", overrides, environ={"VQA_LLM_LLM_CONCURRENCY": "32"})
    assert load_chat_llm(from_env, "cpu").max_workers == 32
    flag, _ = resolve_profile("bundled", {**overrides, "llm_concurrency": 2}, environ={"VQA_LLM_LLM_CONCURRENCY": "32"})
    assert load_chat_llm(flag, "cpu").max_workers == 2
    for bad in ("0", "many", "-3"):
        with pytest.raises(BadSettingError, match="LLM concurrency must be a whole number >= 1"):
            resolve_profile("bundled", overrides, environ={"VQA_LLM_LLM_CONCURRENCY": bad})
