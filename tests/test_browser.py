"""The Ask tab in a real browser: Debian's chromium driven by Playwright (never ``playwright install``).

1. The app as ``python app.py`` starts it (bundled VLE/BLIP when present, tiny models otherwise; a tiny LLM):
   upload an example image, ask, wait for the LLM answer; the caption, the top-k label and the answer shown
   are those the API returns for the same request. A screenshot goes to ``assets/screenshots/ask_tab.png``
   when ``SAVE_SCREENSHOT=1``, else to a temporary folder.
2. A fake LLM whose reply holds ``<script>`` and HTML: its first chunk is visible while the reply is still
   streaming (the LLM is held until the test has seen it), the text is shown literally, and no script runs.
3. The VLE tabs of the bundled profile (its pretraining checkpoint): image-text matching, patch relevance (the
   heatmap image and the grid appear) and zero-shot classification (the ranked labels appear, the right one
   first, checked against the image's pixels).
"""

import os
import re
import threading
from pathlib import Path

import easy_vqa
import pytest
from gradio_client import Client, handle_file
from playwright.sync_api import expect, sync_playwright

import app
from app_testing import REPO_ROOT, demo_model_argv, free_port
from llm import ChatLLM
from training.shape_scenes import read_scene
from vqa_llm import VQALLMPipeline, overrides_from_args, resolve_profile

pytestmark = pytest.mark.browser
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 120_000
FINAL_VERDICT = re.compile(r"kept|changed|failed|LLM off")
SCRIPT_REPLY = "Answer: <b>bold</b><script>window.__pwned=1</script>"
SCRIPT_TAIL = "\nExplanation: <img src=x onerror=\"window.__pwned=2\"> it is drawn so."


class HeldLLM(ChatLLM):
    """Streams a reply full of HTML; holds back the last chunk until ``release`` is set."""

    model_id = "held-fake-llm"

    def __init__(self):
        self.release = threading.Event()

    def _generate(self, messages, opts):
        return SCRIPT_REPLY + SCRIPT_TAIL

    def _stream(self, messages, opts):
        yield SCRIPT_REPLY
        self.release.wait(WAIT_MS / 1000)
        yield SCRIPT_TAIL


@pytest.fixture(scope="module")
def offline():
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield
    if old is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = old


@pytest.fixture(scope="module")
def model_args(offline, tmp_path_factory):
    return demo_model_argv(tmp_path_factory.mktemp("browser_models"))


def _launch(demo, argv):
    args = app.build_parser().parse_args(argv + ["--port", str(free_port())])
    _, url, _ = app.serve(demo, args, prevent_thread_lock=True)
    return url


@pytest.fixture(scope="module")
def app_url(model_args):
    demo = app.create_app(app.build_parser().parse_args(model_args))
    yield _launch(demo, model_args)
    demo.close()


@pytest.fixture(scope="module")
def held_app(model_args):
    args = app.build_parser().parse_args(model_args)
    profile, reason = resolve_profile(args.profile, overrides_from_args(args))
    loaded = VQALLMPipeline.from_profile(profile, use_llm=False)
    llm = HeldLLM()
    pipe = VQALLMPipeline(loaded.vqa_model, loaded.processor, loaded.captioner, llm)
    demo = app.build_demo(pipe, profile, reason, examples=[])
    yield _launch(demo, model_args), llm
    demo.close()


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), "Install Debian's chromium: apt-get install -y chromium (scripts/setup.sh --dev)."
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()
    yield page
    context.close()


def example_image_and_question() -> tuple[str, str]:
    """The first example of assets/examples when present, else an easy-VQA test image and its question."""
    examples = app.load_examples()
    if examples:
        return examples[0][0], examples[0][1]
    questions, _, image_ids = easy_vqa.get_test_questions()
    return easy_vqa.get_test_image_paths()[image_ids[0]], questions[0]


def ask_in_browser(page, url: str, image: str, question: str) -> None:
    page.goto(url)
    page.locator("#ask-image input[type=file]").set_input_files(image)
    expect(page.locator("#ask-image img").first).to_be_visible(timeout=WAIT_MS)  # upload finished
    page.locator("#ask-question textarea, #ask-question input").first.fill(question)
    page.locator("#ask-button").click()


def textbox(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def test_ask_tab_shows_caption_top_k_and_llm_answer(page, app_url):
    image, question = example_image_and_question()
    ask_in_browser(page, app_url, image, question)
    expect(page.locator("#verdict")).to_contain_text(FINAL_VERDICT, timeout=WAIT_MS)

    # the same request through the API (greedy decoding: the same answer)
    expected = Client(app_url, verbose=False).predict(handle_file(image), question, 5, True, "short", 0, 64,
                                                      api_name="/answer")
    expect(textbox(page, "caption")).to_have_value(expected["caption"])
    label = page.locator("#vqa-label")
    for answer, _ in expected["candidates"]:
        expect(label).to_contain_text(answer)
    shown = expected["llm_answer"] + (f"\n\n{expected['llm_explanation']}" if expected["llm_explanation"] else "")
    expect(textbox(page, "llm-answer")).to_have_value(shown)
    assert expected["candidates"][0][0] in page.locator("#verdict").inner_text()

    if os.environ.get("SAVE_SCREENSHOT") == "1":
        target = REPO_ROOT / "assets" / "screenshots" / "ask_tab.png"
        target.parent.mkdir(parents=True, exist_ok=True)
    else:
        target = Path(os.environ.get("TMPDIR", "/tmp")) / "vqa_llm_ask_tab.png"
    page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 10_000


def test_llm_html_is_streamed_as_text_and_never_executed(page, held_app):
    url, llm = held_app
    llm.release.clear()
    image, question = example_image_and_question()
    ask_in_browser(page, url, image, question)

    # streaming: the first chunk is on the page while the LLM is still held
    expect(textbox(page, "llm-answer")).to_have_value(SCRIPT_REPLY, timeout=WAIT_MS)
    expect(page.locator("#verdict")).to_contain_text("waiting for the LLM")
    llm.release.set()
    expect(page.locator("#verdict")).to_contain_text(FINAL_VERDICT, timeout=WAIT_MS)

    page.locator("text=Prompt and raw LLM reply").click()  # open the accordion
    expect(textbox(page, "raw-reply")).to_have_value(SCRIPT_REPLY + SCRIPT_TAIL)
    final = textbox(page, "llm-answer").input_value()  # the parsed answer and explanation, literally
    assert "</b><script>window.__pwned=1" in final and '<img src=x onerror="window.__pwned=2">' in final
    assert page.evaluate("() => typeof window.__pwned") == "undefined"
    assert page.locator("b", has_text="bold").count() == 0
    assert page.locator("img[src='x']").count() == 0
    assert "</b><script>" in page.locator("#verdict").inner_text()  # the parsed answer, as literal text


def open_tab_and_upload(page, url: str, tab: str, elem_id: str, image: str) -> None:
    page.goto(url)
    page.get_by_role("tab", name=tab).click()
    page.locator(f"#{elem_id} input[type=file]").set_input_files(image)
    expect(page.locator(f"#{elem_id} img").first).to_be_visible(timeout=WAIT_MS)  # upload finished


def test_matching_tab_scores_each_text(page, app_url):
    image, _ = example_image_and_question()
    truth = read_scene(image).caption
    open_tab_and_upload(page, app_url, "Image-text matching", "itm-image", image)
    textbox(page, "itm-texts").fill(f"{truth}\na purple elephant")
    page.locator("#itm-button").click()
    scores = page.locator("#itm-scores")
    expect(scores).to_contain_text(truth, timeout=WAIT_MS)
    expect(scores).to_contain_text("a purple elephant")


def test_patch_relevance_tab_shows_the_heatmap_and_the_grid(page, app_url):
    image, _ = example_image_and_question()
    open_tab_and_upload(page, app_url, "Patch relevance", "pbc-image", image)
    textbox(page, "pbc-text").fill(read_scene(image).caption)
    page.locator("#pbc-button").click()
    heatmap = page.locator("#pbc-heatmap img").first
    expect(heatmap).to_be_visible(timeout=WAIT_MS)
    assert page.evaluate("(img) => img.naturalWidth", heatmap.element_handle()) > 0
    expect(page.locator("#pbc-grid")).to_contain_text("relevance")


def test_classification_tab_ranks_the_default_labels_right_one_first(page, app_url):
    image, _ = example_image_and_question()
    open_tab_and_upload(page, app_url, "Zero-shot classification", "classify-image", image)
    labels = textbox(page, "classify-labels").input_value().splitlines()
    assert len(labels) == 24 and "a red circle" in labels  # the bundled checkpoint's default labels
    page.locator("#classify-button").click()
    truth = read_scene(image).caption
    expect(page.locator("#classify-ranked")).to_contain_text(truth, timeout=WAIT_MS)
    top = page.locator("#classify-ranked .output-class, #classify-ranked h2").first
    expect(top).to_have_text(truth)
