"""The app's "Visual commonsense (VCR)" tab and its ``/vcr`` API endpoint (Gradio), over :mod:`vqa_llm.vcr`.

The tab takes an image and one VCR annotation record as JSON with its boxes inline, and shows the image with the
objects as numbered boxes, the question, the four answers with their Q->A scores and the four rationales for the
chosen answer with their QA->R scores. ``/vcr`` takes the same two inputs and returns JSON::

    {"answer_index": 1, "rationale_index": 2, "answer_scores": [4 floats], "rationale_scores": [4 floats],
     "question": "...", "answer": "...", "rationale": "...", "answer_label": 1 or null,
     "rationale_label": 2 or null, "seconds": 0.4, "models": {"q2a": "name (origin)", "qa2r": "..."}}

The tab exists only when the profile has both VCR models (:attr:`vqa_llm.vcr.VCRModels.available`); ``/vcr``
exists on every profile and otherwise answers with the reason. As on the other tabs, the events take raw values
(``preprocess=False``): the image goes through the page's :class:`~vqa_llm.uploads.UploadPolicy`, the record
through :func:`vqa_llm.vcr.read_record` (size, JSON, fields, object references, boxes inside the image); each
problem is one message, and the record's ``img_fn``/``metadata_fn`` are never opened.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from .uploads import UploadPolicy
from .vcr import (
    EXAMPLES_DIR,
    LETTERS,
    MAX_RECORD_CHARS,
    VCRModels,
    VCRPrediction,
    draw_boxes,
    load_vcr_examples,
    read_record,
)
from .zerogpu import BASE_SECONDS, gpu_call

TITLE = "Visual commonsense (VCR)"
#: an image reduced on entry has lost this much of its proportions at most; beyond, images were padded
MAX_ASPECT = 8.0
HELP = (
    "Upload an image and paste one VCR annotation record (JSON): `objects`, `question`, `answer_choices`, "
    "`rationale_choices` (token lists; an object is referred to by its index, e.g. `[\"What\", \"color\", \"is\", "
    "[1], \"?\"]`) and `boxes` (`[x1, y1, x2, y2]` per object, in the image's pixels; `width`/`height` if they "
    "are in another frame). The question → answer model scores the four answers; the question + answer → "
    "rationale model then scores the four rationales for the answer it chose. Or pick an example below."
)


class VCRHandlers:
    """The tab's and ``/vcr``'s event functions, bound to the VCR models and the page's upload policy.

    ``errors`` is the app's context manager turning user errors into ``gr.Error``
    (:func:`vqa_llm.app_handlers.user_errors`).
    """

    def __init__(self, vcr: VCRModels, uploads: UploadPolicy, errors: Callable[[], AbstractContextManager]):
        self.vcr, self.uploads, self.errors = vcr, uploads, errors
        # one GPU call per request on a ZeroGPU Space (vqa_llm.zerogpu); elsewhere the method itself
        self._model_call = gpu_call(self._run, duration=BASE_SECONDS)

    def _run(self, picture: Image.Image, item: Any) -> VCRPrediction:
        with self.errors():
            return self.vcr.run(picture, item)

    def _predict(self, image: Any, record: Any) -> tuple[Image.Image, VCRPrediction]:
        if not self.vcr.available:
            raise gr.Error(self.vcr.note or f"{TITLE} is not available here.")
        picture = self.uploads.open(image)
        if picture is None:
            raise gr.Error("No image was given: upload an image or pick an example first.")
        width, height = picture.size
        if max(width, height) >= MAX_ASPECT * min(width, height):
            raise gr.Error(f"The image is {width} x {height} px: VCR needs one less than {MAX_ASPECT:g} times as "
                           "wide as it is tall (or tall as wide).")
        item = read_record(record, picture.size, frame_known=max(picture.size) < self.uploads.max_side)
        self.vcr.load()  # here, in this process: at the first request only (a GPU worker would not keep them)
        return picture, self._model_call(picture, item)

    def show(self, image: Any, record: Any) -> tuple:
        """UI event: (boxed image, question, answers with scores, rationales with scores, summary)."""
        with self.errors():
            picture, prediction = self._predict(image, record)
            item = prediction.item
            answers, rationales = prediction.answers(), prediction.rationales()
            return (draw_boxes(picture, item), prediction.to_dict()["question"],
                    _scores(answers, prediction.answer_scores), _scores(rationales, prediction.rationale_scores),
                    summary_text(prediction))

    def api(self, image: Any, record: Any) -> dict[str, Any]:
        """API ``/vcr``: the chosen answer and rationale (indices 0-3), all 8 scores and the texts, as JSON."""
        with self.errors():
            _, prediction = self._predict(image, record)
            return {**prediction.to_dict(), "models": self.vcr.sources}


def _scores(texts: list[str], scores: list[float]) -> dict[str, float]:
    """Choices as a ``gr.Label`` value: ``"A. text"`` -> score (the letter keeps equal texts apart)."""
    return {f"{LETTERS[i]}. {text}": float(score) for i, (text, score) in enumerate(zip(texts, scores))}


def summary_text(prediction: VCRPrediction) -> str:
    """The chosen answer and rationale in words, and how they compare with the record's labels when it has them."""
    a, r = prediction.answer_index, prediction.rationale_index
    lines = [f"Answer {LETTERS[a]} ({prediction.answer_scores[a]:.2f}): {prediction.answers()[a]}",
             f"Rationale {LETTERS[r]} ({prediction.rationale_scores[r]:.2f}): {prediction.rationales()[r]}"]
    item = prediction.item
    if item.answer_label is not None:
        lines.append(f"The record's right answer is {LETTERS[item.answer_label]}: the model is "
                     f"{'right' if item.answer_label == a else 'wrong'}.")
    if item.rationale_label is not None and item.answer_label == a:
        lines.append(f"The record's right rationale is {LETTERS[item.rationale_label]}: the model is "
                     f"{'right' if item.rationale_label == r else 'wrong'}.")
    return "\n".join(lines)


def add_vcr_tab(vcr: VCRModels, uploads: UploadPolicy, errors: Callable[[], AbstractContextManager],
                events: dict[str, Any], examples_dir: str | Path = EXAMPLES_DIR) -> VCRHandlers:
    """Add the VCR tab (when ``vcr`` is available; else a note when the profile names VCR models that are not
    usable) and the ``/vcr`` endpoint to the Blocks being built.

    ``events``: the keyword arguments every model event of the page takes (concurrency id, ``preprocess=False``);
    ``examples_dir``: the examples' folder (it must lie inside the upload policy's folders).
    """
    handlers = VCRHandlers(vcr, uploads, errors)
    if vcr.available:
        with gr.Tab(TITLE, id="vcr"):
            gr.Markdown(HELP)
            with gr.Row(equal_height=False):
                with gr.Column(scale=1) as inputs_column:
                    image = gr.Image(type="filepath", sources=["upload", "clipboard"], label="Image", height=300,
                                     elem_id="vcr-image")
                    record = gr.Textbox(label="VCR record (JSON, boxes inline)", lines=10, max_lines=20,
                                        max_length=MAX_RECORD_CHARS, elem_id="vcr-record")
                    button = gr.Button("Answer and explain", variant="primary", elem_id="vcr-button")
                with gr.Column(scale=1):
                    boxed = gr.Image(type="pil", format="png", label="Objects", interactive=False,
                                     elem_id="vcr-boxes")
                    question = gr.Textbox(label="Question", interactive=False, elem_id="vcr-question")
                with gr.Column(scale=1):
                    answers = gr.Label(label="Answers (question → answer)", elem_id="vcr-answers")
                    rationales = gr.Label(label="Rationales for the chosen answer (question + answer → rationale)",
                                          elem_id="vcr-rationales")
                    summary = gr.Textbox(label="Chosen", lines=4, interactive=False, elem_id="vcr-summary")
            examples = load_vcr_examples(examples_dir)
            if examples:
                with inputs_column:
                    gr.Examples([[e.image, e.record] for e in examples], inputs=[image, record],
                                example_labels=[e.label for e in examples], label="Examples (generated shape scenes)",
                                api_visibility="private")
            button.click(handlers.show, [image, record], [boxed, question, answers, rationales, summary],
                         api_visibility="private", **events)
    else:  # no tab: /vcr still exists and says why (on the page too when the profile names models that are unusable)
        if any(vcr.model_ids.values()) and vcr.note:
            gr.Markdown(f"*{html.escape(vcr.note, quote=False)}*", elem_id="vcr-note")
        with gr.Group(visible=False):
            image = gr.Image(type="filepath", visible=False)
            record = gr.Textbox(visible=False)
    with gr.Group(visible=False):
        result = gr.JSON(visible=False)
        trigger = gr.Button(visible=False)
    trigger.click(handlers.api, [image, record], result, api_name="vcr", **events)
    return handlers
