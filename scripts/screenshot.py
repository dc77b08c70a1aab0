"""Take a README screenshot with real output (bundled profile by default, offline).

    .venv/bin/python scripts/screenshot.py [--tab ask|pbc|vcr] [--out PNG] [-- app flags...]

Starts ``app.py`` in-process on a free port, opens it in Debian's chromium (Playwright, never
``playwright install``), uploads the first example image and saves a full-page screenshot: ``ask`` (default,
``assets/screenshots/ask_tab.png``) asks the example's question and waits for the streamed LLM answer to
finish; ``pbc`` (``assets/screenshots/pbc_tab.png``) shows the patch relevance of the text "a <colour> <shape>"
naming what the image shows; ``vcr`` (``assets/screenshots/vcr_tab.png``) opens the "Visual commonsense (VCR)"
tab, picks its first example (a generated shape scene) and waits for the answers, the rationales and the numbered
boxes. That tab needs the profile's two VCR models (the bundled ones in ``assets/models/vle-shapes-vcr-*``, or
``-- --vcr-q2a DIR --vcr-qa2r DIR``).
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


def show_relevance(page, image: str) -> None:
    """The patch-relevance tab with ``image`` and the caption of what it shows."""
    from training.shape_scenes import read_scene

    page.get_by_role("tab", name="Patch relevance").click()
    page.locator("#pbc-image input[type=file]").set_input_files(image)
    expect(page.locator("#pbc-image img").first).to_be_visible(timeout=60_000)
    page.locator("#pbc-text input, #pbc-text textarea").first.fill(read_scene(image).caption)
    page.locator("#pbc-button").click()
    expect(page.locator("#pbc-heatmap img").first).to_be_visible(timeout=60_000)


def show_vcr(page) -> None:
    """The VCR tab with its first example answered and explained."""
    from vqa_llm.vcr import load_vcr_examples
    from vqa_llm.vcr_tab import TITLE

    page.get_by_role("tab", name=TITLE).click()
    page.get_by_text(load_vcr_examples()[0].label, exact=True).click()
    expect(page.locator("#vcr-image img").first).to_be_visible(timeout=60_000)
    page.locator("#vcr-button").click()
    expect(page.locator("#vcr-boxes img").first).to_be_visible(timeout=180_000)
    expect(page.locator("#vcr-summary textarea").first).to_have_value(re.compile(r"^Answer [A-D]"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tab", choices=["ask", "pbc", "vcr"], default="ask", help="the tab to show (default: ask)")
    parser.add_argument("--out", help="PNG to write (default: assets/screenshots/<tab>_tab.png)")
    parser.add_argument("app_args", nargs="*", help="flags for app.py (after --)")
    args = parser.parse_args()
    args.out = args.out or str(REPO / "assets" / "screenshots" / f"{args.tab}_tab.png")
    app_argv = args.app_args or ["--profile", "bundled"]
    app_args = app.build_parser().parse_args(app_argv + ["--port", str(free_port())])
    demo = app.create_app(app_args)
    if args.tab == "vcr" and not any(getattr(block, "label", None) == "Visual commonsense (VCR)"
                                     for block in demo.blocks.values()):
        raise SystemExit("The profile has no VCR models: pass -- --vcr-q2a DIR --vcr-qa2r DIR (see --help).")
    _, url, _ = app.serve(demo, app_args, prevent_thread_lock=True)
    example = json.loads((REPO / "assets" / "examples" / "examples.json").read_text())["examples"][0]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        image = str(REPO / "assets" / "examples" / example["image"])
        if args.tab == "pbc":
            show_relevance(page, image)
        elif args.tab == "vcr":
            show_vcr(page)
        else:
            page.set_input_files("input[type=file]", image)
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
