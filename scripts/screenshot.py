"""Take the README screenshot of the Ask tab with real output (bundled profile by default, offline).

    .venv/bin/python scripts/screenshot.py [--out assets/screenshots/ask_tab.png] [-- app flags...]

Starts ``app.py`` in-process on a free port, opens it in Debian's chromium (Playwright, never
``playwright install``), uploads the first example image, asks its question, waits for the streamed LLM answer
to finish and saves a full-page screenshot.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from playwright.sync_api import expect, sync_playwright  # noqa: E402

import app  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "assets" / "screenshots" / "ask_tab.png"))
    parser.add_argument("app_args", nargs="*", help="flags for app.py (after --)")
    args = parser.parse_args()
    app_argv = args.app_args or ["--profile", "bundled"]
    app_args = app.build_parser().parse_args(app_argv + ["--port", str(free_port())])
    demo = app.create_app(app_args)
    _, url, _ = app.serve(demo, app_args, prevent_thread_lock=True)
    example = json.loads((REPO / "assets" / "examples" / "examples.json").read_text())["examples"][0]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.set_input_files("input[type=file]", str(REPO / "assets" / "examples" / example["image"]))
        page.get_by_label("Question").fill(example["question"])
        page.locator("#ask-button").click()
        expect(page.locator("#verdict")).to_contain_text(re.compile(r"kept|changed|failed"), timeout=180_000)
        page.wait_for_timeout(500)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=args.out, full_page=True)
        browser.close()
    demo.close()
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
