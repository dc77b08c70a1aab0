"""The "Visual commonsense (VCR)" tab and ``/vcr``: the record checks, the numbered boxes, the models loaded at
first use, the endpoint through ``gradio_client`` and raw HTTP, and the tab in a real browser.

One server for the module: the app as ``python app.py`` builds it (``app.create_app``), on tiny random models
(no LLM) and tiny random VCR models (``tests/vcr_testing.py``) passed with ``--vcr-q2a``/``--vcr-qa2r``. What it
returns is checked against the vle VCR pipelines run here on the same image and record: Q->A, then QA->R given the
answer Q->A chose. The examples are the generated shape scenes of ``assets/examples/vcr``.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from playwright.sync_api import expect, sync_playwright

import app
from app_testing import free_port
from robustness_testing import call_answer_raw, profile_from_argv, tiny_model_argv
from vcr_testing import build_tiny_vcr_model
from vle import VLEForVCRQ2A, VLEForVCRQ2APipeline, VLEForVCRQA2R, VLEForVCRQA2RPipeline
from vle.processing_vle import VLEProcessor
from vqa_llm.app_examples import EXAMPLES_DIR as APP_EXAMPLES_DIR
from vqa_llm.errors import BadSettingError, ModelUnavailableError
from vqa_llm.uploads import NOT_UPLOADED, UploadPolicy
from vqa_llm.vcr import (
    EXAMPLES_DIR,
    MAX_RECORD_CHARS,
    VCRModels,
    draw_boxes,
    load_vcr_examples,
    read_record,
    record_text,
)
from vqa_llm.vcr_tab import TITLE, VCRHandlers, add_vcr_tab

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 120_000
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.png"))


def example(name: str = "scene-color") -> tuple[Path, dict]:
    """An example image and its record."""
    image = EXAMPLES_DIR / f"{name}.png"
    return image, json.loads(image.with_suffix(".json").read_text())


def data_url(path: Path) -> dict:
    return {"url": "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()}


def edit(record: dict, **changes) -> dict:
    return {**record, **changes}


# ------------------------------------------------------------------------------------------ fixtures
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
def vcr_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vcr_models")
    return {task: build_tiny_vcr_model(root / task, task) for task in ("q2a", "qa2r")}


@pytest.fixture(scope="module")
def argv(offline, vcr_dirs, tmp_path_factory):
    return [*tiny_model_argv(tmp_path_factory.mktemp("tiny_models")), "--no-llm",
            "--vcr-q2a", vcr_dirs["q2a"], "--vcr-qa2r", vcr_dirs["qa2r"]]


@pytest.fixture(scope="module")
def server(argv):
    """The app as ``python app.py ARGV`` starts it, on a free port; yields ``(demo, url)``."""
    args = app.build_parser().parse_args([*argv, "--port", str(free_port()), "--max-file-size", "1mb"])
    demo = app.create_app(args)
    _, url, _ = app.serve(demo, args, prevent_thread_lock=True)
    yield demo, url
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server[1], verbose=False)


@pytest.fixture(scope="module")
def reference(vcr_dirs):
    """The two VCR pipelines loaded straight from vle."""
    def pipeline(task, model_class, pipeline_class):
        model = model_class.from_pretrained(vcr_dirs[task]).eval()
        return pipeline_class(model=model, device="cpu", vle_processor=VLEProcessor.from_pretrained(vcr_dirs[task]))

    return {"q2a": pipeline("q2a", VLEForVCRQ2A, VLEForVCRQ2APipeline),
            "qa2r": pipeline("qa2r", VLEForVCRQA2R, VLEForVCRQA2RPipeline)}


def expected(reference, image: Path, record: dict) -> dict:
    """Q->A, then QA->R given the chosen answer, by the vle pipelines."""
    picture = Image.open(image).convert("RGB")
    meta = {"boxes": record["boxes"], "width": record["width"], "height": record["height"]}
    q2a = reference["q2a"](meta_inputs=record, image=picture, metadata=meta)[0]
    answer = q2a["pred"][0]
    qa2r = reference["qa2r"](meta_inputs={**record, "answer_label": answer}, image=picture, metadata=meta)[0]
    return {"answer_index": answer, "rationale_index": qa2r["pred"][0], "answer_scores": q2a["score"],
            "rationale_scores": qa2r["score"]}


def assert_matches(result: dict, want: dict) -> None:
    assert result["answer_index"] == want["answer_index"] and result["rationale_index"] == want["rationale_index"]
    for key in ("answer_scores", "rationale_scores"):
        assert len(result[key]) == 4 and sum(result[key]) == pytest.approx(1.0, abs=1e-5)
        assert result[key] == pytest.approx(want[key], abs=1e-6)


# ---------------------------------------------------------------------------------- records (no server)
BAD_RECORDS = {
    # case: (record or text, part of the one message it gets)
    "no record": ("", "No VCR record was given"),
    "malformed JSON": ('{"objects": ["circle",', "is not valid JSON (line 1, column"),
    "a JSON list": ("[1, 2]", "must be a JSON object, not a JSON list"),
    "too long": ("{" + " " * MAX_RECORD_CHARS + "}", f"the limit is {MAX_RECORD_CHARS}"),
    "nested too deeply": ("[" * 5000 + "]" * 5000, "nested too deeply"),
    "an object that does not exist": (lambda r: edit(r, question=["What", "color", "is", [5], "?"]),
                                      "question refers to object 5, but the record has 2 objects"),
    "a box outside the image": (lambda r: edit(r, boxes=[[85, 29, 140, 60], [17, 114, 54, 260]]),
                                "Box 1 [17, 114, 54, 260] lies outside the record's 192 x 192 frame"),
    "a box outside the image, no frame": (
        lambda r: {k: v for k, v in edit(r, boxes=[[-20, 0, 10, 10], r["boxes"][1]]).items()
                   if k not in ("width", "height")}, "Box 0 [-20, 0, 10, 10] lies outside the image (192 x 192 px)"),
    "five answers": (lambda r: edit(r, answer_choices=[*r["answer_choices"], ["It", "is", "gray", "."]]),
                     "answer_choices must be a list of 4 token lists"),
    "three rationales": (lambda r: edit(r, rationale_choices=r["rationale_choices"][:3]),
                         "rationale_choices must be a list of 4 token lists"),
    "no boxes": (lambda r: {k: v for k, v in r.items() if k != "boxes"}, "The VCR record has no boxes"),
    "too few boxes": (lambda r: edit(r, boxes=r["boxes"][:1]), "has 1 boxes for 2 objects"),
    "a box upside down": (lambda r: edit(r, boxes=[[140, 29, 85, 60], r["boxes"][1]]), "box 0 in the record is"),
    "a frame of other proportions": (lambda r: edit(r, width=384, height=192), "does not have the image's"),
    "a label out of range": (lambda r: edit(r, answer_label=7), "answer_label must be 0 to 3, got 7"),
    "a number as a word": (lambda r: edit(r, question=["What", 5, "?"]), "the token 5"),
    "too many objects": (lambda r: edit(r, objects=["circle"] * 101), "has 101 objects; the limit is 100"),
}


def bad_record(case: str) -> str:
    make, _ = BAD_RECORDS[case]
    value = make(example()[1]) if callable(make) else make
    return value if isinstance(value, str) else json.dumps(value)


@pytest.mark.parametrize("case", BAD_RECORDS)
def test_a_bad_record_gets_one_clear_message(case):
    with pytest.raises(BadSettingError) as raised:
        read_record(bad_record(case), (192, 192))
    assert BAD_RECORDS[case][1] in str(raised.value)


def test_a_good_record_is_read_without_its_files_and_cleaned():
    _, record = example()
    record = edit(record, img_fn="/etc/passwd", metadata_fn="/nowhere/meta.json",
                  question=["What\u202e", "color", "\u200b", "is", [1], "?"])
    item = read_record(json.dumps(record), (192, 192))
    assert item.question == ["What", "color", "is", [1], "?"] and item.image_path == ""
    assert item.metadata() == {"boxes": record["boxes"], "width": 192.0, "height": 192.0}
    assert "img_fn" not in item.annotation() and item.answer_label == 1
    # a dict works too; the frame defaults to the image; a reduced image needs its frame named
    bare = {k: v for k, v in record.items() if k not in ("width", "height", "annot_id", "question_kind")}
    assert read_record(bare, (192, 192)).width == 192.0
    with pytest.raises(BadSettingError, match="was reduced on entry"):
        read_record(bare, (1024, 1024), frame_known=False)
    assert read_record(record, (96, 96), frame_known=False).width == 192.0  # a frame at twice the size


def test_texts_name_objects_by_name_and_index():
    objects = ["person", "person", "car"]
    assert record_text(["Why", "is", [0, 2], "here", "?"], objects) == "Why is Casey [0] and car [2] here?"
    assert record_text([[1], "'s", "hat", "."], objects) == "Riley [1]'s hat."


def test_boxes_are_drawn_numbered_and_enlarged():
    image, record = example()
    picture = Image.open(image).convert("RGB")
    drawn = draw_boxes(picture, read_record(record, picture.size))
    assert drawn.size == (384, 384) and picture.getpixel((0, 0)) == Image.open(image).convert("RGB").getpixel((0, 0))
    x1, y1, x2, y2, _ = record["boxes"][1]  # the second object's box in the second colour, at twice the size
    assert drawn.getpixel((2 * x1, (y1 + y2))) == (37, 99, 235)
    assert drawn.getpixel((2 * x2, (y1 + y2))) == (37, 99, 235)


def test_the_examples_are_generated_scenes_with_inline_boxes():
    examples = load_vcr_examples()
    assert len(examples) == len(EXAMPLES) >= 3
    for found in examples:
        record = json.loads(found.record)
        assert "img_fn" not in record and "metadata_fn" not in record and record["boxes"]
        assert found.label == record_text(record["question"], record["objects"]) and found.label.endswith("?")
        assert Path(found.image).is_relative_to(APP_EXAMPLES_DIR)  # readable under the app's upload policy


def test_models_load_at_first_use_and_say_when_they_are_missing(vcr_dirs, argv, tmp_path):
    profile, _ = profile_from_argv(argv)
    vcr = VCRModels.from_profile(profile)
    assert vcr.available and vcr.pipelines == {}
    image, record = example()
    result = vcr.predict(str(image), json.dumps(record))
    assert set(vcr.pipelines) == {"q2a", "qa2r"} and 0 <= result.answer_index < 4

    none, _ = profile_from_argv([*argv, "--vcr-qa2r", "none"])
    assert not VCRModels.from_profile(none).available and "has only one" in VCRModels.from_profile(none).note
    gone, _ = profile_from_argv([*argv, "--vcr-q2a", str(tmp_path / "gone")])
    note = VCRModels.from_profile(gone).note
    assert note.startswith("Visual commonsense (VCR) is off: No VCR Q→A model folder")
    assert str(tmp_path) not in note

    later = tmp_path / "removed"  # there at start-up, gone at the first request: a message, no traceback
    build_tiny_vcr_model(later, "q2a")
    vanishing = VCRModels.from_profile(profile_from_argv([*argv, "--vcr-q2a", str(later)])[0])
    assert vanishing.available
    (later / "model.safetensors").unlink()
    with pytest.raises(ModelUnavailableError, match="no weights"):
        vanishing.predict(str(image), record)
    handlers = VCRHandlers(vanishing, UploadPolicy([EXAMPLES_DIR]), app.user_errors)
    with pytest.raises(gr.Error) as raised:
        handlers.api(str(image), json.dumps(record))
    assert "no weights" in raised.value.message and str(tmp_path) not in raised.value.message


def test_without_vcr_models_there_is_no_tab_and_vcr_says_why():
    vcr = VCRModels(note="Visual commonsense (VCR) needs two models; this profile has none.")
    with gr.Blocks() as page:
        handlers = add_vcr_tab(vcr, UploadPolicy([EXAMPLES_DIR]), app.user_errors, {"preprocess": False})
    assert not [block for block in page.blocks.values() if isinstance(block, gr.Tab)]
    assert [fn.api_name for fn in page.fns.values()] == ["vcr"]
    with pytest.raises(gr.Error, match="needs two models"):
        handlers.api(str(example()[0]), json.dumps(example()[1]))
    assert not [block for block in page.blocks.values() if isinstance(block, gr.Markdown)]

    broken = VCRModels({"q2a": "a", "qa2r": "b"}, note="Visual commonsense (VCR) is off: <no> folder")
    with gr.Blocks() as page:  # models named but unusable: the page says why
        add_vcr_tab(broken, UploadPolicy([EXAMPLES_DIR]), app.user_errors, {"preprocess": False})
    notes = [block.value for block in page.blocks.values() if isinstance(block, gr.Markdown)]
    assert notes == ["*Visual commonsense (VCR) is off: &lt;no&gt; folder*"]


# ------------------------------------------------------------------------------------------- the API
def test_the_tab_and_the_endpoint_are_there(server, client):
    demo, _ = server
    assert [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab) and b.label == TITLE] == [TITLE]
    endpoint = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/vcr"]
    assert [p["parameter_name"] for p in endpoint["parameters"]] == ["image", "record"]


@pytest.mark.parametrize("image", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_vcr_returns_what_the_pipelines_say(client, reference, image):
    record = json.loads(image.with_suffix(".json").read_text())
    result = client.predict(handle_file(str(image)), image.with_suffix(".json").read_text(), api_name="/vcr")
    assert 0 <= result["answer_index"] < 4 and 0 <= result["rationale_index"] < 4
    assert_matches(result, expected(reference, image, record))
    assert result["answer"] == record_text(record["answer_choices"][result["answer_index"]], record["objects"])
    assert result["answer_label"] == record["answer_label"]
    assert result["models"] == {"q2a": "q2a (local folder)", "qa2r": "qa2r (local folder)"}


def test_a_bad_record_through_the_client_gets_its_message(client):
    image, _ = example()
    with pytest.raises(AppError, match="refers to object 5"):
        client.predict(handle_file(str(image)), bad_record("an object that does not exist"), api_name="/vcr")
    with pytest.raises(AppError, match="No image was given"):
        client.predict(None, json.dumps(example()[1]), api_name="/vcr")


def raw(server, data: list) -> tuple[str, dict | str]:
    event, payload = call_answer_raw(server[1], data, endpoint="vcr")
    return event, json.loads(payload) if payload else None


@pytest.mark.parametrize("case", [*BAD_RECORDS, "no image", "a file nobody uploaded"])
def test_each_bad_input_gets_one_message_and_the_server_goes_on(server, reference, case):
    image, record = example()
    if case == "no image":
        data, message = [None, json.dumps(record)], "No image was given"
    elif case == "a file nobody uploaded":
        data, message = [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, json.dumps(record)], \
            NOT_UPLOADED
    else:
        data, message = [data_url(image), bad_record(case)], BAD_RECORDS[case][1]
    event, reply = raw(server, data)
    assert event == "error" and message in reply["error"], reply
    event, reply = raw(server, [data_url(image), json.dumps(record)])
    assert event == "complete"
    assert_matches(reply[0], expected(reference, image, record))


def test_the_record_names_files_that_are_never_opened(server, reference, tmp_path):
    """img_fn and metadata_fn name a system file and named pipes: opening a pipe with no writer would block the
    request, so an answer proves nothing was opened."""
    os.mkfifo(tmp_path / "image.fifo")
    os.mkfifo(tmp_path / "meta.fifo")
    image, record = example("scene-left-of")
    for img_fn, metadata_fn in (("/etc/passwd", "/etc/shadow"), (str(tmp_path / "image.fifo"),
                                                                  str(tmp_path / "meta.fifo"))):
        named = edit(record, img_fn=img_fn, metadata_fn=metadata_fn)
        event, reply = raw(server, [data_url(image), json.dumps(named)])
        assert event == "complete", reply
        assert_matches(reply[0], expected(reference, image, record))
        assert "root:" not in json.dumps(reply) and img_fn not in json.dumps(reply)


def test_a_dict_record_is_taken_as_it_is(server, reference):
    image, record = example("scene-count")
    event, reply = raw(server, [data_url(image), record])
    assert event == "complete"
    assert_matches(reply[0], expected(reference, image, record))


# ------------------------------------------------------------------------------------------ the browser
@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), "Install Debian's chromium: apt-get install -y chromium (scripts/setup.sh --dev)."
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.mark.browser
def test_the_tab_runs_an_example_in_a_browser(server, browser, client):
    first = load_vcr_examples()[0]
    record = json.loads(first.record)
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    page = context.new_page()
    try:
        page.goto(server[1])
        page.get_by_role("tab", name=TITLE).click()
        page.get_by_text(first.label, exact=True).click()  # the example fills the image and the record
        expect(page.locator("#vcr-image img").first).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("#vcr-record textarea")).to_have_value(first.record)
        page.locator("#vcr-button").click()

        want = client.predict(handle_file(first.image), first.record, api_name="/vcr")
        answers, rationales = page.locator("#vcr-answers"), page.locator("#vcr-rationales")
        for letter, choice in zip("ABCD", record["answer_choices"]):
            expect(answers).to_contain_text(f"{letter}. {record_text(choice, record['objects'])}", timeout=WAIT_MS)
        for letter, choice in zip("ABCD", record["rationale_choices"]):
            expect(rationales).to_contain_text(f"{letter}. {record_text(choice, record['objects'])}")
        expect(page.locator("#vcr-question textarea, #vcr-question input").first).to_have_value(first.label)
        chosen = re.compile(f"^Answer {'ABCD'[want['answer_index']]} .*\nRationale {'ABCD'[want['rationale_index']]} ")
        expect(page.locator("#vcr-summary textarea").first).to_have_value(chosen)
        boxed = page.locator("#vcr-boxes img").first
        expect(boxed).to_be_visible()
        assert page.evaluate("(img) => [img.naturalWidth, img.naturalHeight]", boxed.element_handle()) == [384, 384]
    finally:
        context.close()
