"""The app's API probed over raw HTTP, the way an attacker would send requests (gradio_client uploads any local
path it is given, so it cannot send these): every named endpoint x every way of naming a file that no visitor
uploaded, inline images over the limits, bad settings, hidden characters, a wrong number of inputs; and for
``/vcr`` bad records, and a record naming server files as its ``img_fn``/``metadata_fn`` (never opened).

Every reply is checked as it comes (:func:`call`): an error carries a message (never ``{"error": null}``), and
no reply holds an absolute path of this machine (Gradio's own file objects for output images aside: their
``path``/``url`` name Gradio's cache, which is how a client downloads them). Tiny random models (VCR ones too); the
server runs in this process with a 1 MB image limit.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from gradio.utils import get_upload_folder
from PIL import Image

import odd_images
from app_testing import build_tiny_vle_pretrained
from llm import ChatLLM
from robustness_testing import (
    QUESTION,
    call_answer_raw,
    pipeline_like,
    profile_from_argv,
    serve_pipeline,
    tiny_pipeline_fixtures,
)
from script_modules import load_script
from tiny_models import single_thread_fixture
from vcr_testing import build_tiny_vcr_model
from vqa_llm.tasks import load_tasks
from vqa_llm.uploads import NOT_UPLOADED

REPO = Path(__file__).resolve().parents[1]


intake = load_script("bench/image_intake.py")  # its image builder and memory sampler serve here too
LIMIT = 1024 * 1024  # --max-file-size 1mb
META = {"_type": "gradio.FileData"}
#: a VCR record with inline boxes that fit every image the endpoints are sent here (24 x 24 and larger)
VCR_RECORD = {"objects": ["circle", "rectangle"], "question": ["What", "color", "is", [1], "?"],
              "answer_choices": [["It", "is", color, "."] for color in ("red", "green", "blue", "gray")],
              "rationale_choices": [[[i], "is", "filled", "with", "red", "."] for i in (0, 1, 0, 1)],
              "boxes": [[1, 1, 10, 10], [12, 12, 23, 23]]}
#: each named endpoint's inputs around an image
ENDPOINTS = {
    "answer": lambda image: [image, QUESTION, 3, False, "short", 0, 16, 1],
    "caption": lambda image: [image],
    "itm": lambda image: [image, "a red circle"],
    "classify": lambda image: [image, "a red circle\na blue square"],
    "pbc": lambda image: [image, "the red circle", 0.5],
    "vcr": lambda image: [image, json.dumps(VCR_RECORD)],
}

one_thread = single_thread_fixture()
argv, pipe = tiny_pipeline_fixtures(use_llm=False)


class CountingLLM(ChatLLM):
    """Answers "red" and counts its calls: bad settings must never reach it."""

    model_id = "counting"

    def __init__(self):
        self.calls = 0

    def _generate(self, messages, opts):
        self.calls += 1
        return "Answer: red"

    def _stream(self, messages, opts):
        self.calls += 1
        yield "Answer: red"


@pytest.fixture(scope="module")
def site(pipe, argv, tmp_path_factory):
    """The app with every endpoint live (a tiny VLE pretraining checkpoint for the matching/relevance tabs, tiny
    VCR models for /vcr)."""
    pretrained = build_tiny_vle_pretrained(tmp_path_factory.mktemp("vle_pretrained"))
    tasks = load_tasks(profile_from_argv([*argv, "--vle-pretrained", pretrained])[0])
    assert tasks.available
    vcr = tmp_path_factory.mktemp("vcr_models")
    vcr_argv = [*argv, *(arg for task in ("q2a", "qa2r")
                         for arg in (f"--vcr-{task}", build_tiny_vcr_model(vcr / task, task)))]
    llm = CountingLLM()
    with serve_pipeline(pipeline_like(pipe, llm=llm), vcr_argv, "--max-file-size", "1mb", tasks=tasks) as (_, url):
        yield SimpleNamespace(url=url, llm=llm)


# ------------------------------------------------------------------------------------------ helpers
def _without_output_files(value: Any) -> Any:
    """``value`` with the ``path``/``url`` of Gradio's output file objects dropped (see the module docstring)."""
    if isinstance(value, dict):
        skip = {"path", "url"} if value.get("meta") == META else set()
        return {k: _without_output_files(v) for k, v in value.items() if k not in skip}
    if isinstance(value, list):
        return [_without_output_files(v) for v in value]
    return value


def _server_paths() -> list[str]:
    return [str(REPO), sys.prefix, get_upload_folder(), tempfile.gettempdir() + "/", "/etc/", "/root", "/home/"]


def call(site, endpoint: str, data: list[Any]) -> tuple[str, Any]:
    """``(event, decoded data)`` of one raw call; fails the test on ``{"error": null}`` or a server path."""
    event, payload = call_answer_raw(site.url, data, endpoint=endpoint)
    decoded = json.loads(payload) if payload else None
    if event == "error":
        assert decoded, f"an error without a message: {payload!r}"
    shown = json.dumps(_without_output_files(decoded))
    leaked = [path for path in _server_paths() if path in shown or json.dumps(path)[1:-1] in shown]
    assert not leaked, f"{endpoint} reply names server paths {leaked}: {shown[:400]}"
    return event, decoded


def error_of(site, endpoint: str, data: list[Any]) -> str:
    event, decoded = call(site, endpoint, data)
    assert event == "error", (endpoint, decoded)
    return decoded["error"] if isinstance(decoded, dict) else decoded


def upload(site, name: str, content: bytes) -> str:
    """The server path of ``content`` uploaded through ``/gradio_api/upload``, as a browser would."""
    reply = requests.post(f"{site.url}gradio_api/upload", files={"files": (name, content)}, timeout=30)
    reply.raise_for_status()
    return reply.json()[0]


def data_url(content: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(content).decode()


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """Files that exist on the server outside every upload folder: a readable PNG, a text file, a folder."""
    folder = tmp_path_factory.mktemp("server_files")
    odd_images.noise(16, 16).save(folder / "secret.png")
    (folder / "notes.txt").write_text("private")
    (folder / "sub").mkdir()
    return folder


def refused_images(outside: Path, port: str) -> dict[str, Any]:
    """Every way of naming a file no visitor uploaded, by case name."""
    upload_folder = get_upload_folder()
    names = {
        "existing PNG": str(outside / "secret.png"),
        "text file": str(outside / "notes.txt"),
        "folder": str(outside / "sub"),
        "missing file": str(outside / "missing.png"),
        "system file": "/etc/passwd",
        "the app's source": str(REPO / "app.py"),
        "escape from the upload folder": f"{upload_folder}/../../{outside.relative_to('/')}/secret.png",
        "relative path": "app.py",
        "file URL": f"file://{outside / 'secret.png'}",
        "loopback URL": f"http://127.0.0.1:{port}/gradio_api/file={outside / 'secret.png'}",
    }
    cases = {}
    for name, path in names.items():
        cases[name] = {"path": path}
        cases[f"{name}, with meta"] = {"path": path, "meta": META}
    return cases


REFUSED = list(refused_images(Path("/x"), "1"))


# --------------------------------------------------------------------------------------------- files
@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("case", REFUSED)
def test_no_endpoint_opens_a_file_nobody_uploaded(site, outside, endpoint, case):
    image = refused_images(outside, site.url.rstrip("/").rsplit(":", 1)[1])[case]
    message = error_of(site, endpoint, ENDPOINTS[endpoint](image))
    assert "No uploaded image was found" in message or "No image was given" in message, message
    assert "red circle" not in message and "private" not in message


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_refused_path_says_nothing_about_what_is_there(site, outside, endpoint):
    """The same reply for a picture, a text file, a folder and nothing at all, with or without meta."""
    port = site.url.rstrip("/").rsplit(":", 1)[1]
    images = refused_images(outside, port)
    replies = {case: error_of(site, endpoint, ENDPOINTS[endpoint](images[case]))
               for case in ("existing PNG", "text file", "folder", "missing file", "system file",
                            "existing PNG, with meta", "missing file, with meta", "folder, with meta")}
    assert set(replies.values()) == {NOT_UPLOADED}, replies


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_every_endpoint_reads_what_a_visitor_uploaded(site, endpoint):
    png = odd_images.encode(odd_images.noise(24, 24))
    path = upload(site, "mine.png", png)
    for image in ({"path": path}, {"path": path, "meta": META, "orig_name": "mine.png"}, {"url": data_url(png)}):
        event, decoded = call(site, endpoint, ENDPOINTS[endpoint](image))
        assert event == "complete", (image.keys(), decoded)


def test_an_unreadable_upload_is_named_as_the_visitor_named_it(site):
    path = upload(site, "holiday.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    message = error_of(site, "answer", ENDPOINTS["answer"]({"path": path, "meta": META, "orig_name": "holiday.svg"}))
    assert "'holiday.svg' is not an image file" in message


# ------------------------------------------------------------------------------------- inline images
def test_an_inline_image_over_the_limit_is_refused_before_decoding(site):
    # just over 1 MB of bytes that are no image: decoding them would answer "not an image", not the size
    for content in (b"\0" * (LIMIT + 10_000), odd_images.noise(600, 600).tobytes()[:LIMIT + 10_000]):
        for endpoint in ENDPOINTS:
            message = error_of(site, endpoint, ENDPOINTS[endpoint]({"url": data_url(content)}))
            assert "The inline image is" in message and "the limit is 1.0 MB" in message, message


@pytest.mark.parametrize("route", ["call/answer", "call/pbc", "queue/join"])
def test_a_request_body_too_large_for_any_image_is_refused_before_it_is_read(site, route):
    """A 5 MB inline image (a 1 MB limit): refused with 413 from the declared length, and from the bytes sent
    when the client declares none."""
    body = json.dumps({"data": ENDPOINTS["pbc"]({"url": data_url(b"\0" * 5 * LIMIT)}), "fn_index": 0,
                       "session_hash": "x"}).encode()
    declared = requests.post(f"{site.url}gradio_api/{route}", data=body, timeout=30,
                             headers={"Content-Type": "application/json"})
    chunked = requests.post(f"{site.url}gradio_api/{route}", data=iter([body[:1000], body[1000:]]), timeout=30,
                            headers={"Content-Type": "application/json"})
    for reply in (declared, chunked):
        assert reply.status_code == 413 and "The request is larger than 1.4 MB" in reply.text, reply.text[:300]


def test_inline_images_that_are_not_base64_images_get_a_message(site):
    assert "base64" in error_of(site, "caption", [{"url": "data:image/png,%89PNG"}])
    assert "not valid base64" in error_of(site, "caption", [{"url": "data:image/png;base64,***"}])


def test_a_12000_pixel_square_is_refused_from_its_header_either_way(site):
    """A real 12000x12000 PNG (about 420 KB, 432 MB decoded): refused from its header as an upload and as a
    data: URL, and the server's memory barely moves (the full figures: bench/image_intake.py)."""
    big = intake.black_png(12000, 12000)
    assert len(big) < LIMIT
    path = upload(site, "big.png", big)
    for image in ({"path": path, "meta": META, "orig_name": "big.png"}, {"url": data_url(big)}):
        message, rise, _ = intake.Memory(os.getpid()).measure(
            lambda image=image: error_of(site, "pbc", ENDPOINTS["pbc"](image)), settle=0)
        assert "The image is too large" in message, message
        assert rise < 200, f"{rise:.0f} MB more memory while refusing {list(image)}"


def test_a_large_image_comes_back_at_a_bounded_size(site):
    """Downscaled once on entry: the heatmap of a 3000x2000 picture is 1024x683."""
    path = upload(site, "wide.png", intake.black_png(3000, 2000))
    event, (heatmap, _) = call(site, "pbc", ENDPOINTS["pbc"]({"path": path, "meta": META}))
    assert event == "complete"
    assert Image.open(io.BytesIO(requests.get(heatmap["url"], timeout=30).content)).size == (1024, 683)


# ------------------------------------------------------------------------------------------ settings
BAD_SETTINGS = [
    # (input index of /answer, value, the message it gets)
    (5, float("nan"), "temperature must be a number"),
    (5, float("inf"), "temperature must be a number"),
    (5, "abc", "temperature must be a number"),
    (5, [0.5], "temperature must be a number"),
    (5, 9, "temperature must be from 0 to 1.5"),
    (6, float("nan"), "max_new_tokens must be a whole number"),
    (6, "abc", "max_new_tokens must be a whole number"),
    (6, 10 ** 9, "max_new_tokens must be from 8 to 512"),
    (6, 16.5, "max_new_tokens must be a whole number"),
    (2, float("nan"), "top_k must be a whole number"),
    (2, "abc", "top_k must be a whole number"),
    (2, None, "top_k must be a whole number"),
    (2, True, "top_k must be a whole number"),
    (7, float("nan"), "runs must be a whole number"),
    (7, "abc", "runs must be a whole number"),
    (7, 0, "runs must be from 1 to"),
    (3, "no", "use_llm must be true or false"),
    (3, 1, "use_llm must be true or false"),
    (3, None, "use_llm must be true or false"),
    (4, 5, "Unknown prompt template 5"),
    (4, None, "Unknown prompt template None"),
    (1, {"text": "what?"}, "The question must be text"),
]


@pytest.mark.parametrize("index, value, message", BAD_SETTINGS,
                         ids=[f"{i}-{v!r}" for i, v, _ in BAD_SETTINGS])
def test_bad_settings_get_a_message_and_never_reach_the_llm(site, index, value, message):
    data = ENDPOINTS["answer"]({"url": data_url(odd_images.one_pixel_png())})
    data[3] = True  # with the LLM on: a bad setting must stop the request before it
    data[index] = value
    calls = site.llm.calls
    assert message in error_of(site, "answer", data)
    assert site.llm.calls == calls


@pytest.mark.parametrize("alpha", [float("nan"), "abc", None, 2, -1])
def test_bad_alpha_gets_a_message(site, alpha):
    image = {"url": data_url(odd_images.one_pixel_png())}
    assert "alpha must be" in error_of(site, "pbc", [image, "the red circle", alpha])


def test_good_settings_still_reach_the_llm(site):
    calls = site.llm.calls
    data = ENDPOINTS["answer"]({"url": data_url(odd_images.one_pixel_png())})
    data[3], data[5] = True, 0.7
    event, (decoded,) = call(site, "answer", data)
    assert event == "complete" and decoded["llm_used"] and site.llm.calls == calls + 1


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_too_few_inputs_get_a_message(site, endpoint):
    wanted = len(ENDPOINTS[endpoint](None))
    message = error_of(site, endpoint, ENDPOINTS[endpoint](None)[:-1] if wanted > 1 else [])
    assert f"This endpoint takes {wanted} input" in message and f"the request sent {wanted - 1}" in message


@pytest.mark.parametrize("image", ["/etc/passwd", 5, ["a"], {"path": 5}, {"url": 5}])
def test_an_image_of_the_wrong_form_gets_a_message(site, image):
    message = error_of(site, "caption", [image])
    assert "wrong form" in message or "No uploaded image" in message or "No image was given" in message, message


# ---------------------------------------------------------------------------------------------- text
def test_direction_overrides_and_invisible_characters_are_removed(site):
    image = {"url": data_url(odd_images.one_pixel_png())}
    data = ENDPOINTS["answer"](image)
    data[1] = "what\u202e color\u200b is the\u2066 shape?\ufeff"
    event, (decoded,) = call(site, "answer", data)
    assert event == "complete" and decoded["question"] == "what color is the shape?"
    assert any("removed 4 control character" in note for note in decoded["notes"])
    event, (scores,) = call(site, "itm", [image, "a red\u202e circle\x00\nthe\u2067 blue square"])
    assert event == "complete" and {c["label"] for c in scores["confidences"]} == {"a red circle", "the blue square"}
    event, (ranked,) = call(site, "classify", [image, "\u202ered\nblue\u200f"])
    assert event == "complete" and {c["label"] for c in ranked["confidences"]} == {"red", "blue"}


def test_results_name_models_without_server_paths(site):
    event, (decoded,) = call(site, "answer", ENDPOINTS["answer"]({"url": data_url(odd_images.one_pixel_png())}))
    assert event == "complete"
    assert decoded["models"]["vqa"] == "vle-vqa (local folder)", decoded["models"]


# ----------------------------------------------------------------------------------------------- VCR
BAD_VCR_RECORDS = [
    # (the record as sent, the message it gets)
    ("{'objects': 1}", "The VCR record is not valid JSON"),
    ("[]", "must be a JSON object"),
    (dict(VCR_RECORD, question=["Is", [2], "red", "?"]), "question refers to object 2, but the record has 2 objects"),
    (dict(VCR_RECORD, boxes=[[1, 1, 10, 10], [12, 12, 23, 40]]), "Box 1 [12, 12, 23, 40] lies outside the image"),
    (dict(VCR_RECORD, rationale_choices=VCR_RECORD["rationale_choices"] * 2), "rationale_choices must be a list of 4"),
    (dict(VCR_RECORD, boxes=[[1, 1, 10, 10]]), "has 1 boxes for 2 objects"),
    (dict(VCR_RECORD, boxes=[[1, 1, 10, float("nan")], [12, 12, 23, 23]]), "box 0 in the record is"),
    ({k: v for k, v in VCR_RECORD.items() if k != "boxes"}, "The VCR record has no boxes"),
    (dict(VCR_RECORD, note="x" * 30_000), "the limit is 20000"),
    (5, "The VCR record must be JSON text, not int"),
    (None, "No VCR record was given"),
]


@pytest.mark.parametrize("record, message", BAD_VCR_RECORDS, ids=[m[:30] for _, m in BAD_VCR_RECORDS])
def test_bad_vcr_records_get_one_message_each(site, record, message):
    image = {"url": data_url(odd_images.encode(odd_images.noise(24, 24)))}
    sent = record if record is None or isinstance(record, (str, int)) else json.dumps(record)
    assert message in error_of(site, "vcr", [image, sent])
    event, (result,) = call(site, "vcr", ENDPOINTS["vcr"](image))  # and the next good request is answered
    assert event == "complete" and len(result["answer_scores"]) == len(result["rationale_scores"]) == 4


@pytest.mark.parametrize("named", ["/etc/passwd", "../../../../etc/passwd", "file:///etc/passwd",
                                   "http://127.0.0.1:1/x.png"])
def test_vcr_never_opens_the_files_a_record_names(site, named):
    """The image comes with the request and the boxes inline: img_fn and metadata_fn are ignored."""
    image = {"url": data_url(odd_images.encode(odd_images.noise(24, 24)))}
    record = dict(VCR_RECORD, img_fn=named, metadata_fn=named)
    event, (result,) = call(site, "vcr", [image, json.dumps(record)])  # call() fails on any server path shown
    assert event == "complete" and "root:" not in json.dumps(result)
    _, (plain,) = call(site, "vcr", ENDPOINTS["vcr"](image))
    assert (result["answer_scores"], result["rationale_scores"]) == (plain["answer_scores"], plain["rationale_scores"])
