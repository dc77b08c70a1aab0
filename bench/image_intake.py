"""What large images cost the app, sent as a visitor would: time and server memory per request.

    .venv/bin/python bench/image_intake.py                          # python app.py --profile bundled --no-llm
    .venv/bin/python bench/image_intake.py -- --profile bundled --no-llm --max-file-size 10mb

Starts ``python app.py ARGS --port FREE`` (ARGS after ``--``) and sends, over raw HTTP, each image to ``/pbc``
(the endpoint whose result is an image) as an upload (``POST /gradio_api/upload``, then the file object) and,
where it fits a request, inline as a ``data:`` URL:

    12000x12000 PNG   a real black PNG (≈ 420 KB, 432 MB decoded): must be refused from its header
    29 MB PNG         noise, over the 10 MB limit: must be refused before decoding (the upload by Gradio, 413)
    7000x7000 PNG     under every limit: answered; the heatmap's size and the memory kept afterwards are shown

Printed per case and way: the reply (refused with its message, or answered), the seconds from the first byte
sent to the reply, the server's peak RSS rise during the request (psutil, sampled every 5 ms) and its RSS rise
still held 2 s after it. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import requests
from load import start_app, stop_app  # bench/load.py, beside this script: the app in a subprocess
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_APP_ARGS = ("--profile", "bundled", "--no-llm")
META = {"_type": "gradio.FileData"}


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def black_png(width: int, height: int) -> bytes:
    """A real, decodable black RGB PNG of any size, compressed row by row (12000x12000: about 140 KB) without
    ever holding its pixels in memory."""
    row = b"\0" * (1 + 3 * width)  # filter byte "none", then the row's pixels
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def noise_png(megabytes: float) -> bytes:
    """An incompressible RGB PNG of about ``megabytes`` MB."""
    side = int((megabytes * 1024 * 1024 / 3) ** 0.5)
    pixels = np.random.RandomState(0).randint(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


class Memory:
    """The server's RSS: sampled every 5 ms while a request runs; ``rise`` and ``kept`` in MB."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)

    def measure(self, action: Callable[[], Any], settle: float = 2.0) -> tuple[Any, float, float]:
        """``action()``'s result, the peak RSS rise while it ran and the rise still held ``settle`` s later (MB)."""
        base = self.process.memory_info().rss
        peak, done = [base], threading.Event()

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], self.process.memory_info().rss)
                time.sleep(0.005)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            result = action()
        finally:
            done.set()
            watcher.join()
        time.sleep(settle)
        mb = 1024 * 1024
        return result, (peak[0] - base) / mb, (self.process.memory_info().rss - base) / mb


def call(url: str, data: list[Any]) -> tuple[str, Any]:
    """``(event, decoded data)`` of one raw ``/pbc`` call."""
    started = requests.post(f"{url}gradio_api/call/pbc", json={"data": data}, timeout=300)
    if started.status_code == 413:  # the request body is over the limit: refused before it is read
        return "error", f"{started.status_code}: {started.text}"
    started.raise_for_status()
    stream = requests.get(f"{url}gradio_api/call/pbc/{started.json()['event_id']}", timeout=300)
    event, payload = "", ""
    for line in stream.text.splitlines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            payload = line.split(":", 1)[1].strip()
    return event, json.loads(payload) if payload else None


def send(url: str, name: str, content: bytes, way: str) -> dict[str, Any]:
    """Send ``content`` to ``/pbc`` as ``way`` ("upload" or "data: URL"); the reply, summarised."""
    if way == "upload":
        reply = requests.post(f"{url}gradio_api/upload", files={"files": (name, content)}, timeout=300)
        if reply.status_code != 200:
            return {"reply": f"refused by the upload ({reply.status_code})"}
        image = {"path": reply.json()[0], "meta": META, "orig_name": name}
    else:
        image = {"url": "data:image/png;base64," + base64.b64encode(content).decode()}
    event, decoded = call(url, [image, "the shape", 0.5])
    if event != "complete":
        message = decoded.get("error") if isinstance(decoded, dict) else decoded
        return {"reply": f"refused: {message}"}
    heatmap = Image.open(io.BytesIO(requests.get(decoded[0]["url"], timeout=60).content))
    return {"reply": f"answered, heatmap {heatmap.width}x{heatmap.height}"}


def timed(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``function(*args)`` with the seconds it took added as ``seconds``."""
    began = time.perf_counter()
    outcome = function(*args)
    return {**outcome, "seconds": round(time.perf_counter() - began, 3)}


def run(app_args: Sequence[str]) -> list[dict[str, Any]]:
    cases = [("12000x12000 PNG", "big.png", black_png(12000, 12000), ("upload", "data: URL")),
             ("29 MB PNG", "noise.png", noise_png(29), ("upload", "data: URL")),
             ("7000x7000 PNG", "large.png", black_png(7000, 7000), ("upload", "data: URL"))]
    with tempfile.TemporaryDirectory() as folder:
        proc, url = start_app(app_args, Path(folder) / "app.log", startup_timeout=600)
        try:
            memory = Memory(proc.pid)
            send(url, "warm.png", black_png(64, 64), "upload")  # first request: lazy imports, model warm-up
            rows = []
            for label, name, content, ways in cases:
                for way in ways:
                    outcome, rise, kept = memory.measure(lambda: timed(send, url, name, content, way))  # noqa: B023
                    rows.append({"image": label, "bytes": len(content), "way": way, **outcome,
                                 "peak_rise_mb": round(rise, 1), "kept_mb": round(kept, 1)})
                    print(f"{label:16} {way:10} {rows[-1]['seconds']:7.3f} s  peak +{rise:7.1f} MB  "
                          f"kept +{kept:7.1f} MB  {outcome['reply'][:110]}", flush=True)
        finally:
            stop_app(proc)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/image_intake.py", description=__doc__.split("\n\n")[0],
                                     epilog=f"Arguments after -- go to app.py (default: {' '.join(DEFAULT_APP_ARGS)}).")
    argv = list(sys.argv[1:] if argv is None else argv)
    app_args = argv[argv.index("--") + 1:] if "--" in argv else list(DEFAULT_APP_ARGS)
    parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    rows = run(app_args)
    print(json.dumps({"cpu": _cpu(), "app_args": app_args, "rows": rows}))
    return 0


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    return name + (" (AVX-512)" if " avx512f" in info else " (AVX2)" if " avx2" in info else "")


if __name__ == "__main__":
    sys.exit(main())
