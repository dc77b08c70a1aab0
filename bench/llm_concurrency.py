"""How ``--llm-concurrency`` pays against an LLM server: one batch of chats, several requests in flight at once.

    .venv/bin/python bench/llm_concurrency.py                    # 16 chats, a stand-in server busy 0.5 s on each
    .venv/bin/python bench/llm_concurrency.py --chats 32 --seconds 0.2 --concurrency 1 8 32

A stand-in OpenAI-compatible server on 127.0.0.1 works ``--seconds`` on each request (many at once, as vLLM or
TGI do) and counts the requests it holds at the same time. The project's OpenAI backend sends one batch of
``--chats`` chats with each ``--concurrency`` value. Printed per value: the wall time, the speed-up over one at a
time and the most requests in flight; the last line is one JSON object with all of it.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from llm import OpenAIChatLLM


class BusyServer(ThreadingHTTPServer):
    """Answers every chat completion after ``seconds``; ``most`` is the most requests it held at once."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, seconds: float):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seconds, self.held, self.most, self.lock = seconds, 0, 0, threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: BusyServer

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.held += 1
            self.server.most = max(self.server.most, self.server.held)
        time.sleep(self.server.seconds)
        with self.server.lock:
            self.server.held -= 1
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "Answer: red"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/llm_concurrency.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--chats", type=int, default=16, help="chats in the batch (default: 16)")
    parser.add_argument("--seconds", type=float, default=0.5, help="server seconds per request (default: 0.5)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16],
                        help="values of --llm-concurrency to compare (default: 1 4 8 16)")
    args = parser.parse_args(argv)
    server = BusyServer(args.seconds)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    chats = [[{"role": "user", "content": f"question {i}"}] for i in range(args.chats)]
    rows = []
    try:
        for concurrency in args.concurrency:
            server.most = 0
            began = time.perf_counter()
            OpenAIChatLLM(url, "stand-in", max_workers=concurrency).generate_batch(chats)
            seconds = time.perf_counter() - began
            rows.append({"concurrency": concurrency, "seconds": round(seconds, 3), "most_in_flight": server.most})
            speedup = rows[0]["seconds"] / seconds
            print(f"--llm-concurrency {concurrency:3}: {seconds:6.2f} s  ({speedup:4.1f}x the first row)  "
                  f"{server.most} in flight at most", flush=True)
    finally:
        server.shutdown()
    print(json.dumps({"chats": args.chats, "server_seconds": args.seconds, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
