"""The Gradio app served on a free local port, called through ``gradio_client`` like any API user would.

The server runs the bundled easy-VQA VLE and BLIP when ``assets/models/`` holds them (tiny random models
otherwise), a tiny chat LLM and the bundled VLE pretraining checkpoint (a tiny random one when absent). Covers
every named endpoint and its fields, streaming of ``/answer``, user errors (no image, empty/overlong question or
texts, empty or too long label lists, unreadable image, upload too large) shown as clear messages with the server
still answering after them, the queue limits, and — calling the event functions directly — LLM failures, the
"changed" mark, HTML escaping, the matching/classification/relevance tabs shown or hidden and the command-line
helpers.
"""

import asyncio
import json
import os
from pathlib import Path

import easy_vqa
import gradio as gr
import pytest
import requests
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app
from app_testing import BUNDLED_PRETRAIN, bundled_models_present, bundled_pretrain_present, demo_model_argv, free_port
from llm import ChatLLM, LLMConnectionError
from project_base.paths import REPO_ROOT
from training.shape_scenes import read_scene
from vqa_llm import VQALLMPipeline, overrides_from_args, resolve_profile
from vqa_llm.app_launch import resolve_host, resolve_port
from vqa_llm.sources import model_source
from vqa_llm.tasks import MAX_CLASSIFY_LABELS, MAX_ITM_TEXTS, MAX_TEXT_CHARS
from vqa_llm.uploads import UploadPolicy

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
QUESTION = "what is the color of the shape?"
MAX_FILE_SIZE = "200kb"


@pytest.fixture(scope="module", autouse=True)
def every_streamed_chunk():
    """These tests follow the reply chunk by chunk: no pacing (tests/test_pacing.py checks it)."""
    from vqa_llm import pacing

    previous, pacing.STREAM_INTERVAL_S = pacing.STREAM_INTERVAL_S, 0.0
    yield
    pacing.STREAM_INTERVAL_S = previous


@pytest.fixture(scope="module")
def offline():
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "GRADIO_ANALYTICS_ENABLED")}
    os.environ.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    yield
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def model_args(offline, tmp_path_factory):
    return demo_model_argv(tmp_path_factory.mktemp("app_models"))


@pytest.fixture(scope="module")
def server(model_args):
    """The app started as ``python app.py`` would, in a thread; yields ``(demo, url, args)``."""
    args = app.build_parser().parse_args(model_args + ["--port", str(free_port()), "--max-file-size", MAX_FILE_SIZE,
                                                       "--concurrency", "2", "--max-queue", "7"])
    demo = app.create_app(args)
    _, url, _ = app.serve(demo, args, prevent_thread_lock=True)
    yield demo, url, args
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server[1], verbose=False)


@pytest.fixture(scope="module")
def reference(model_args):
    """The same models loaded straight through vqa_llm (no LLM), to check what the app reports."""
    args = app.build_parser().parse_args(model_args)
    profile, _ = resolve_profile(args.profile, overrides_from_args(args))
    return VQALLMPipeline.from_profile(profile, use_llm=False)


@pytest.fixture(scope="module")
def image_path():
    return easy_vqa.get_test_image_paths()[0]


# ------------------------------------------------------------------------------------------ API
def test_api_lists_the_named_endpoints(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/answer", "/caption", "/itm", "/classify", "/pbc"} <= set(endpoints)
    assert [p["parameter_name"] for p in endpoints["/classify"]["parameters"]] == ["image", "labels"]
    params = [p["parameter_name"] for p in endpoints["/answer"]["parameters"]]
    assert params[:5] == ["image", "question", "top_k", "use_llm", "template"]


def test_answer_returns_every_field(client, reference, image_path):
    out = client.predict(handle_file(image_path), QUESTION, 3, True, "short", api_name="/answer")
    expected = reference.run(image_path, QUESTION, top_k=3, use_llm=False)
    assert out["stage"] == "done" and out["error"] is None
    assert out["caption"] == expected.caption and out["caption"]
    assert [a for a, _ in out["candidates"]] == [a for a, _ in expected.candidates]
    assert out["candidates"][0][1] == pytest.approx(expected.candidates[0][1], abs=1e-4)
    assert isinstance(out["llm_reply"], str) and out["llm_reply"]
    assert isinstance(out["llm_answer"], str) and out["llm_answer"]
    assert [m["role"] for m in out["messages"]][-1] == "user" and QUESTION in out["messages"][-1]["content"]
    assert isinstance(out["changed"], bool)
    assert {"load_image", "caption", "vision_encode", "vqa_fusion", "llm", "total"} <= set(out["timings"])
    assert out["timings"]["llm"] > 0
    assert set(out["models"]) == {"vqa", "captioner", "llm"} and out["models"]["llm"]


def test_answer_without_llm_and_with_another_template(client, image_path):
    out = client.predict(handle_file(image_path), QUESTION, 2, False, "short", api_name="/answer")
    assert out["llm_answer"] is None and out["messages"] == [] and out["llm_reply"] == "" and not out["changed"]
    assert len(out["candidates"]) == 2 and out["answer"] == out["candidates"][0][0]
    long = client.predict(handle_file(image_path), QUESTION, 2, True, "long", 0, 8, api_name="/answer")
    assert long["template"] == "long" and long["messages"]


def test_answer_streams_vqa_first_then_llm_text_then_done(client, image_path):
    job = client.submit(handle_file(image_path), QUESTION, 3, True, "short", 0, 16, api_name="/answer")
    final = job.result()
    outputs = job.outputs()
    stages = [o["stage"] for o in outputs]
    assert stages[0] == "vqa" and stages[-1] == "done" and set(stages[1:-1]) == {"llm"} and len(stages) > 3
    assert outputs[0]["candidates"] and outputs[0]["llm_reply"] == ""
    replies = [o["llm_reply"] for o in outputs[1:-1]]
    assert all(later.startswith(earlier) for earlier, later in zip(replies, replies[1:]))
    assert final == outputs[-1] and final["llm_reply"].startswith(replies[-1])


def test_caption_matches_the_answer_caption(client, reference, image_path):
    caption = client.predict(handle_file(image_path), api_name="/caption")
    assert caption == reference.run(image_path, QUESTION, use_llm=False).caption


def test_itm_scores_each_line(client, image_path):
    out = client.predict(handle_file(image_path), "a red circle\n\n  a blue square \na red circle", api_name="/itm")
    scores = {c["label"]: c["confidence"] for c in out["confidences"]}
    assert set(scores) == {"a red circle", "a blue square"}  # blank lines dropped, duplicates merged, trimmed
    assert all(0.0 <= s <= 1.0 for s in scores.values())


def test_pbc_returns_a_heatmap_of_the_input_size(client, image_path):
    heatmap, grid = client.predict(handle_file(image_path), "the shape", 0.5, api_name="/pbc")
    assert Image.open(heatmap).size == Image.open(image_path).size
    assert len(grid["relevance"]) == grid["rows"] and all(len(r) == grid["cols"] for r in grid["relevance"])
    assert grid["max"] == pytest.approx(max(max(r) for r in grid["relevance"]), abs=1e-3)


def _colour_shape_labels():
    return [f"a {c} {s}" for s in ("circle", "rectangle", "triangle")
            for c in ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")]


def test_classify_ranks_the_labels(client, image_path):
    labels = _colour_shape_labels()
    out = client.predict(handle_file(image_path), "\n".join(labels), api_name="/classify")
    ranked = [c["label"] for c in out["confidences"]]
    probs = [c["confidence"] for c in out["confidences"]]
    assert sorted(ranked) == sorted(labels) and out["label"] == ranked[0]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-3)


def test_bundled_checkpoint_names_what_easy_vqa_test_images_show(client):
    """On the bundled profile the three endpoints know the shape: checked against the pixels of test images."""
    assert bundled_pretrain_present(), "the bundled VLE pretraining checkpoint is missing from assets/models"
    labels = "\n".join(_colour_shape_labels())
    for path in sorted(easy_vqa.get_test_image_paths().values())[:12]:
        scene = read_scene(path)
        assert client.predict(handle_file(path), labels, api_name="/classify")["label"] == scene.caption
        # another colour and another shape: clearly no match (a colour-only mismatch is the model's weak spot,
        # measured in its model card)
        other = next(f"a {c} {s}" for c, s in (("red", "circle"), ("blue", "triangle"), ("green", "rectangle"))
                     if c != scene.color and s != scene.shape)
        out = client.predict(handle_file(path), f"{scene.caption}\n{other}", api_name="/itm")
        scores = {c["label"]: c["confidence"] for c in out["confidences"]}
        assert scores[scene.caption] > 0.5 > scores[other]
        _, grid = client.predict(handle_file(path), scene.caption, 0.5, api_name="/pbc")
        relevance = [v for row in grid["relevance"] for v in row]
        assert max(relevance) > 0.5 and min(relevance) < 0.5  # the shape's patches stand out from the rest


# ------------------------------------------------------------------------------------ user errors
@pytest.mark.parametrize("question, message", [
    ("", "The question is empty"),
    ("   \n\t ", "The question is empty"),
    ("why " * 200, "the limit is 500"),
])
def test_bad_questions_give_a_clear_message(client, image_path, question, message):
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(image_path), question, 3, True, "short", api_name="/answer")


def test_bad_settings_give_a_clear_message(client, image_path):
    with pytest.raises(AppError, match="Unknown prompt template .no-such-template.: use one of"):
        client.predict(handle_file(image_path), QUESTION, 3, True, "no-such-template", api_name="/answer")


def test_missing_image_gives_a_clear_message(client):
    with pytest.raises(AppError, match="No image was given"):
        client.predict(None, QUESTION, 3, True, "short", api_name="/answer")
    for endpoint, extra in (("/caption", ()), ("/itm", ("a cat",)), ("/pbc", ("a cat", 0.5)),
                            ("/classify", ("a cat\na dog",))):
        with pytest.raises(AppError, match="No image was given"):
            client.predict(None, *extra, api_name=endpoint)


def test_unreadable_images_give_a_clear_message(client, tmp_path, image_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not a picture")
    with pytest.raises(AppError, match="'notes.png' is not an image file"):  # named as the visitor named it
        client.predict(handle_file(str(not_image)), QUESTION, 3, True, "short", api_name="/answer")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(Path(image_path).read_bytes()[:200])  # a valid header, then nothing
    with pytest.raises(AppError, match="damaged or truncated"):
        client.predict(handle_file(str(truncated)), QUESTION, 3, True, "short", api_name="/answer")


def test_itm_and_pbc_text_errors(client, image_path):
    with pytest.raises(AppError, match="one or more texts"):
        client.predict(handle_file(image_path), " \n ", api_name="/itm")
    with pytest.raises(AppError, match=f"the limit is {MAX_ITM_TEXTS}"):
        client.predict(handle_file(image_path), "\n".join(f"text {i}" for i in range(40)), api_name="/itm")
    with pytest.raises(AppError, match=f"the limit is {MAX_TEXT_CHARS}"):
        client.predict(handle_file(image_path), "a red circle\n" + "long " * 100, api_name="/itm")
    with pytest.raises(AppError, match="Type a text"):
        client.predict(handle_file(image_path), "  ", 0.5, api_name="/pbc")
    with pytest.raises(AppError, match=f"the limit is {MAX_TEXT_CHARS}"):
        client.predict(handle_file(image_path), "long " * 100, 0.5, api_name="/pbc")


@pytest.mark.parametrize("labels, message", [
    ("", "Type one or more labels"),
    (" \n\n ", "Type one or more labels"),
    ("a red circle\n a red circle ", "at least two labels"),
    ("\n".join(f"label {i}" for i in range(MAX_CLASSIFY_LABELS + 1)), f"the limit is {MAX_CLASSIFY_LABELS}"),
    ("a red circle\n" + "long " * 100, f"the limit is {MAX_TEXT_CHARS}"),
])
def test_classify_label_errors_and_the_server_stays_up(client, image_path, labels, message):
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(image_path), labels, api_name="/classify")
    out = client.predict(handle_file(image_path), "a red circle\na blue circle", api_name="/classify")
    assert {c["label"] for c in out["confidences"]} == {"a red circle", "a blue circle"}


def test_uploads_over_the_size_limit_are_refused(server, tmp_path):
    _, url, _ = server
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(300_000))
    small = tmp_path / "small.png"
    small.write_bytes(os.urandom(1_000))
    with big.open("rb") as f:
        refused = requests.post(f"{url}gradio_api/upload", files={"files": f}, timeout=30)
    with small.open("rb") as f:
        accepted = requests.post(f"{url}gradio_api/upload", files={"files": f}, timeout=30)
    assert refused.status_code == 413 and accepted.status_code == 200


def test_server_binds_localhost_with_bounded_queue(server):
    demo, url, _ = server
    assert url.startswith("http://127.0.0.1:")
    assert demo._queue.max_size == 7 and demo._queue.default_concurrency_limit == 2
    assert demo.max_file_size == 200 * 1024


# ------------------------------------------------------------------ event functions called directly
class ScriptedLLM(ChatLLM):
    model_id = "scripted"

    def __init__(self, chunks):
        self.chunks = list(chunks)

    def _generate(self, messages, opts):
        return "".join(self.chunks)

    def _stream(self, messages, opts):
        yield from self.chunks


class RefusingLLM(ScriptedLLM):
    def _stream(self, messages, opts):
        raise LLMConnectionError("connection refused by http://127.0.0.1:9")


def handlers_with(reference, llm):
    """The page's handlers, called from Python: they may read the easy-VQA test images' folder."""
    pipe = VQALLMPipeline(reference.vqa_model, reference.processor, reference.captioner, llm)
    uploads = UploadPolicy([Path(easy_vqa.get_test_image_paths()[0]).parent])
    return app.DemoHandlers(pipe, app.VLETasks(note="no pretraining checkpoint in this test"), uploads)


def test_llm_failure_keeps_caption_and_vqa_answers(reference, image_path):
    handlers = handlers_with(reference, RefusingLLM([]))
    final = list(handlers.answer(image_path, QUESTION, 3, True, "short"))[-1]
    assert final["caption"] and len(final["candidates"]) == 3
    assert "could not be reached" in final["error"] and final["answer"] == final["candidates"][0][0]
    with pytest.warns(UserWarning, match="could not be reached"):  # gr.Warning: a toast in the browser
        caption, label, llm_text, verdict, *_ = list(handlers.ask(image_path, QUESTION, 3, True, "short"))[-1]
    assert caption == final["caption"] and list(label) == [a for a, _ in final["candidates"]]
    assert "LLM failed" in verdict and "could not be reached" in verdict


def test_ask_streams_and_marks_a_changed_answer(reference, image_path):
    top = reference.run(image_path, QUESTION, top_k=3, use_llm=False).candidates
    other = top[1][0]
    handlers = handlers_with(reference, ScriptedLLM(["Answer: ", other, "\nExplanation: ", "it looks so."]))
    updates = list(handlers.ask(image_path, QUESTION, 3, True, "short"))
    first, *streamed, final = updates
    assert first[0] and list(first[1]) == [a for a, _ in top] and "waiting for the LLM" in first[3]
    assert [u[2] for u in streamed] == ["Answer: ", f"Answer: {other}", f"Answer: {other}\nExplanation: ",
                                        f"Answer: {other}\nExplanation: it looks so."]
    assert QUESTION in streamed[0][4]  # the prompt appears with the first chunk
    assert final[2] == f"{other}\n\nit looks so."
    assert "changed" in final[3] and top[0][0] in final[3] and other in final[3]
    assert final[5] == f"Answer: {other}\nExplanation: it looks so."  # raw reply


def test_model_text_is_escaped_in_the_verdict(reference, image_path):
    handlers = handlers_with(reference, ScriptedLLM(["Answer: <script>alert(1)</script><b>x</b>"]))
    verdict = list(handlers.ask(image_path, QUESTION, 3, True, "short"))[-1][3]
    assert "<script>" not in verdict and "<b>" not in verdict


def test_tasks_report_why_they_are_missing(reference, image_path):
    handlers = handlers_with(reference, None)
    with pytest.raises(gr.Error, match="no pretraining checkpoint"):
        handlers.itm(image_path, "a cat")
    with pytest.raises(gr.Error, match="no pretraining checkpoint"):
        handlers.pbc(image_path, "a cat")
    with pytest.raises(gr.Error, match="no pretraining checkpoint"):
        handlers.classify(image_path, "a cat\na dog")


def test_tabs_hidden_and_note_shown_without_pretraining_checkpoint(reference):
    profile, reason = resolve_profile("bundled", {"vqa_model": "x", "captioner": "y"})
    demo = app.build_demo(reference, profile, reason, tasks=None, examples=[])
    tabs = {b.label: b.visible for b in demo.blocks.values() if isinstance(b, gr.Tab)}
    assert tabs == {"Ask": True, "Image-text matching": False, "Patch relevance": False,
                    "Zero-shot classification": False, "Visual commonsense (VCR)": True}  # VCR has its own models
    texts = " ".join(str(b.value) for b in demo.blocks.values() if isinstance(b, gr.Markdown))
    assert "pretraining checkpoint" in texts and "easy-VQA" in texts and reason.split(";")[0] in texts
    checkbox = next(b for b in demo.blocks.values() if isinstance(b, gr.Checkbox))
    assert checkbox.value is False and checkbox.interactive is False  # no LLM loaded: the switch is off


def test_bundled_profile_shows_every_tab_with_its_default_labels(server):
    demo, _, _ = server
    tabs = {b.label: b.visible for b in demo.blocks.values() if isinstance(b, gr.Tab)}
    assert tabs == {"Ask": True, "Image-text matching": True, "Patch relevance": True,
                    "Zero-shot classification": True, "Visual commonsense (VCR)": True}
    labels = next(b.value for b in demo.blocks.values() if getattr(b, "elem_id", None) == "classify-labels")
    if bundled_pretrain_present():
        assert sorted(labels.splitlines()) == sorted(_colour_shape_labels())
    assert not any(getattr(b, "elem_id", None) == "tasks-note" for b in demo.blocks.values())


def test_examples_are_offered_when_given(reference, image_path):
    no_vcr = {"vcr_q2a": "none", "vcr_qa2r": "none"}  # the VCR tab has examples of its own
    profile, reason = resolve_profile("bundled", {"vqa_model": "x", "captioner": "y", **no_vcr})
    demo = app.build_demo(reference, profile, reason, examples=[[image_path, "what shape is it?"]])
    datasets = [b for b in demo.blocks.values() if isinstance(b, gr.Dataset)]
    assert len(datasets) == 1 and datasets[0].raw_samples[0][1] == "what shape is it?"


# --------------------------------------------------------------------------------- start-up helpers
def test_host_and_port_defaults():
    assert resolve_host(None, {}) == "127.0.0.1"
    assert resolve_host(None, {"SPACE_ID": "hfl/vle"}) == "0.0.0.0"
    assert resolve_host("10.0.0.5", {"SPACE_ID": "hfl/vle"}) == "10.0.0.5"
    assert resolve_port(None, {}) is None
    assert resolve_port(None, {"SPACE_ID": "x"}) == 7860 and resolve_port(8000, {"SPACE_ID": "x"}) == 8000
    # what Hugging Face Spaces passes wins over the defaults, and a flag over both
    space = {"SPACE_ID": "x/y", "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7861"}
    assert resolve_host(None, space) == "0.0.0.0" and resolve_port(None, space) == 7861
    assert resolve_host(None, {"GRADIO_SERVER_NAME": "127.0.0.2"}) == "127.0.0.2"
    assert resolve_host("127.0.0.1", space) == "127.0.0.1" and resolve_port(9000, space) == 9000
    with pytest.raises(SystemExit, match="GRADIO_SERVER_PORT='http' is not a port number"):
        resolve_port(None, {"GRADIO_SERVER_PORT": "http"})


def test_banner_names_models_and_their_origin_without_machine_paths(server, model_args):
    demo, _, args = server
    banner = next(b.value for b in demo.blocks.values() if getattr(b, "elem_id", None) == "banner")
    assert "vqa: `" in banner and "captioner: `" in banner and "llm: `chat (local folder)`" in banner
    assert f"VLE pretraining: `{model_source(args.vle_pretrained or str(BUNDLED_PRETRAIN))}`" in banner
    for path in (str(REPO_ROOT), args.llm, args.vle_pretrained or str(BUNDLED_PRETRAIN), "site-packages", "/tmp"):
        assert path not in banner


def test_examples_loader_tolerates_missing_and_broken_files(tmp_path, image_path):
    assert app.load_examples(tmp_path / "nowhere") == []
    (tmp_path / "examples.json").write_text("{not json")
    assert app.load_examples(tmp_path) == []
    Image.open(image_path).save(tmp_path / "a.png")
    (tmp_path / "examples.json").write_text(json.dumps([
        {"image": "a.png", "question": "what shape is it?"},
        {"image": "gone.png", "question": "lost?"},
        {"question": "no image"},
        "junk",
    ]))
    assert app.load_examples(tmp_path) == [[str((tmp_path / "a.png").resolve()), "what shape is it?"]]
    (tmp_path / "examples.json").write_text(json.dumps({"examples": [{"image": "a.png", "question": "q?"}]}))
    assert [q for _, q in app.load_examples(tmp_path)] == ["q?"]


def test_main_reports_a_missing_model_and_exits_2(tmp_path, capsys, offline):
    status = app.main(["--profile", "bundled", "--vqa-model", str(tmp_path / "nope"), "--no-llm",
                       "--vle-pretrained", "none"])
    assert status == 2 and "No VQA model folder" in capsys.readouterr().err


def test_fixture_uses_bundled_models_when_present(model_args):
    assert ("--vqa-model" in model_args) != bundled_models_present()


def test_the_ask_tab_refuses_a_path_nobody_uploaded(reference, tmp_path):
    """The Ask tab's event (the browser's, not a named endpoint) goes through the same upload check."""
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(secret)
    handlers = handlers_with(reference, None)
    for image in ({"path": str(secret)}, {"path": str(secret), "meta": {"_type": "gradio.FileData"}}):
        with pytest.raises(gr.Error, match="No uploaded image was found for this request"):
            list(handlers.ask(image, QUESTION, 3, False, "short"))


def test_examples_are_answered_once_and_cached_on_spaces(reference, image_path, tmp_path, monkeypatch):
    """On a Space an example is answered at its first use with the default settings, then served from Gradio's
    cache (no GPU call or model work again); elsewhere examples only fill the inputs."""
    made, real = [], gr.Examples
    monkeypatch.setattr(app.gr, "Examples", lambda *args, **kwargs: made.append(real(*args, **kwargs)) or made[-1])
    monkeypatch.chdir(tmp_path)  # Gradio caches under ./.gradio
    no_vcr = {"vcr_q2a": "none", "vcr_qa2r": "none"}  # the VCR tab has examples of its own
    profile, reason = resolve_profile("bundled", {"vqa_model": "x", "captioner": "y", **no_vcr})
    app.build_demo(reference, profile, reason, examples=[[image_path, QUESTION]])
    assert made[-1].cache_examples is False
    monkeypatch.setenv("SPACE_ID", "hfl/vle-demo")
    pipe = VQALLMPipeline(reference.vqa_model, reference.processor, reference.captioner, None)
    app.build_demo(pipe, profile, reason, examples=[[image_path, QUESTION]])
    examples = made[-1]
    assert examples.cache_examples == "lazy"
    asyncio.run(examples.cache(example_id=0))
    caption, label, *_ = examples.load_from_cache(0)
    expected = reference.run(image_path, QUESTION, top_k=5, use_llm=False)
    assert caption == expected.caption
    assert label.label == expected.candidates[0][0]


def test_questions_run_together_up_to_what_the_llm_batches(reference):
    """An LLM that works on several chats at once (continuous batching, a server) lets as many questions run at
    the same time; the other model events keep the shared limit."""
    profile, reason = resolve_profile("bundled", {"vqa_model": "x", "captioner": "y"})

    def limits(batch: int) -> dict[str, tuple]:
        llm = ScriptedLLM(["Answer: circle"])
        llm.max_batch_size = batch
        pipe = VQALLMPipeline(reference.vqa_model, reference.processor, reference.captioner, llm)
        demo = app.build_demo(pipe, profile, reason, tasks=None, examples=[])
        return {fn.api_name or fn.name: (fn.concurrency_id, fn.concurrency_limit) for fn in demo.fns.values()}

    batched, single = limits(6), limits(1)
    assert batched["answer"] == ("answers", 6) and batched["ask"] == ("answers", 6)
    assert batched["caption"][0] == "models" and batched["itm"][0] == "models"
    assert single["answer"][0] == single["ask"][0] == "models"
