"""The app page's event functions (:class:`DemoHandlers`): each takes a request's raw values, checks them and runs
the models; :func:`user_errors` turns the project's errors into the message a visitor sees.

Every event takes the request's raw values (``preprocess=False``) and checks them before any model runs: images
through :class:`vqa_llm.uploads.UploadPolicy` (only files a visitor uploaded, inline images under the same
limits), the Ask tab's settings against :data:`RANGES` (the ranges of their sliders), questions and texts by the
checks of the pipeline and the VLE tasks (:mod:`vqa_llm.inputs`, :mod:`vqa_llm.tasks`), which the CLI and
Python callers get too. No reply names a path of the server.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gradio as gr
from PIL import Image

from .app_page import default_upload_policy
from .app_views import (
    candidates_label,
    final_answer_text,
    format_messages,
    public_result,
    relevance_grid,
    timings_dict,
    verdict_html,
)
from .errors import user_error_types
from .fewshot import FEWSHOT_TEMPLATE
from .inputs import check_flag, check_number
from .pacing import paced
from .pipeline import VQALLMPipeline
from .sources import public_text
from .tasks import ALPHA_RANGE, VLETasks, classify_labels, match_texts, relevance_alpha, relevance_text
from .uploads import UploadPolicy
from .zerogpu import BASE_SECONDS, answer_seconds, gpu_call

logger = logging.getLogger(__name__)

MAX_TOP_K = 20
MAX_FEWSHOT_RUNS = 5
#: the range of each numeric setting: its slider is built from it, and a request's value is checked against it
RANGES = {"top_k": (1, MAX_TOP_K), "temperature": (0.0, 1.5), "max_new_tokens": (8, 512),
          "runs": (1, MAX_FEWSHOT_RUNS), "alpha": ALPHA_RANGE}


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the project's user errors into ``gr.Error(message)`` (any server path in it shortened, see
    :func:`vqa_llm.sources.public_text`); anything else into a short generic message."""
    try:
        yield
    except gr.Error:
        raise
    except user_error_types() as exc:
        raise gr.Error(public_text(str(exc))) from exc
    except Exception as exc:  # a bug or a resource problem: log it, never show a traceback
        logger.exception("Request failed")
        raise gr.Error(f"Something went wrong inside the app ({type(exc).__name__}); try again, and see the "
                       "server log if it keeps happening.") from exc


class DemoHandlers:
    """The event functions of the page, bound to one pipeline, one set of VLE tasks and the upload policy.

    They receive a request's raw values and check each of them before any model runs (see the module
    docstring): ``image`` is a Gradio file object or, called from Python, a path inside ``uploads``' folders.
    """

    def __init__(self, pipeline: VQALLMPipeline, tasks: VLETasks, uploads: UploadPolicy | None = None):
        self.pipeline = pipeline
        self.tasks = tasks
        self.uploads = uploads if uploads is not None else default_upload_policy()
        #: the largest top_k offered: the slider's limit, or the size of the answer vocabulary if smaller
        self.top_k_max = max(1, min(RANGES["top_k"][1], pipeline.num_labels))
        # on a ZeroGPU Space each request is one GPU call (see vqa_llm.zerogpu); elsewhere these are the methods
        self._answer_updates = gpu_call(self._updates, duration=self._answer_seconds)
        self._model_call = gpu_call(self._model_work, duration=BASE_SECONDS)

    def _updates(self, image: Image.Image, question: Any, template: Any, options: dict[str, Any]) -> Iterator[Any]:
        """The pipeline's updates for one question: its whole model work, one GPU call on ZeroGPU, where only a
        ``gr.Error`` keeps its message on the way out (hence :func:`user_errors` in here too)."""
        with user_errors():
            yield from paced(self.pipeline.stream(image, question, template=template, **options))

    def _answer_seconds(self, image: Image.Image, question: Any, template: Any, options: dict[str, Any]) -> int:
        """The GPU seconds :meth:`_updates` asks for on ZeroGPU: from the tokens the request may generate."""
        return answer_seconds(options.get("max_new_tokens"), options.get("runs", 1),
                              options["use_llm"] and self.pipeline.llm is not None)

    def _model_work(self, name: str, *args: Any) -> Any:
        """``pipeline.caption`` or a VLE task (``match``, ``classify``, ``relevance``): one short GPU call."""
        with user_errors():
            return getattr(self.pipeline if name == "caption" else self.tasks, name)(*args)

    def _image(self, value: Any, missing: str = "No image was given: upload an image first.") -> Image.Image:
        image = self.uploads.open(value)
        if image is None:
            raise gr.Error(missing)
        return image

    def _ask_settings(self, top_k: Any, use_llm: Any, temperature: Any, max_new_tokens: Any,
                      runs: Any) -> tuple[int, bool, dict[str, Any], int]:
        """``(top_k, use_llm, llm options, runs)`` checked against :data:`RANGES` (``top_k`` up to
        ``top_k_max``); ``None`` for temperature, max_new_tokens and runs means their default."""
        def number(name: str, value: Any, whole: bool) -> Any:
            low, high = RANGES[name]
            return check_number(name, value, low, self.top_k_max if name == "top_k" else high, whole=whole)

        options: dict[str, Any] = {}
        if max_new_tokens is not None:
            options["max_new_tokens"] = number("max_new_tokens", max_new_tokens, whole=True)
        if temperature is not None and number("temperature", temperature, whole=False) > 0:
            options["temperature"] = float(temperature)
        return (number("top_k", top_k, whole=True), check_flag("use_llm", use_llm), options,
                1 if runs is None else number("runs", runs, whole=True))

    @property
    def defaults(self) -> dict[str, Any]:
        """The settings a visitor starts from (the sliders' values) and cached examples are answered with."""
        return {"top_k": min(5, self.top_k_max), "use_llm": self.pipeline.llm is not None, "template": "short",
                "temperature": 0.0, "max_new_tokens": 64, "runs": 1}

    def ask_example(self, image: Any, question: str) -> tuple:
        """An example's final Ask-tab outputs with the default settings (what the cached examples on Spaces show)."""
        d = self.defaults
        *_, final = self.ask(image, question, d["top_k"], d["use_llm"], d["template"], d["temperature"],
                             d["max_new_tokens"], d["runs"])
        return final

    def _stream(self, image: Any, question: Any, top_k: Any, use_llm: Any, template: Any, temperature: Any,
                max_new_tokens: Any, runs: Any = 1) -> Iterator[Any]:
        top_k, use_llm, options, runs = self._ask_settings(top_k, use_llm, temperature, max_new_tokens, runs)
        picture = self._image(image, "No image was given: upload an image or pick an example first.")
        fewshot = {"runs": runs} if template == FEWSHOT_TEMPLATE else {}  # runs only vote with few-shot
        return self._answer_updates(picture, question, template, {"top_k": top_k, "use_llm": use_llm,
                                                                  **fewshot, **options})

    def ask(self, image: Any, question: str, top_k: float, use_llm: bool, template: str,
            temperature: float | None = None, max_new_tokens: float | None = None,
            runs: float | None = 1) -> Iterator[tuple]:
        """UI event: stream (caption, top-k, LLM text, verdict, prompt, raw reply, timings) as they come."""
        with user_errors():
            prompt_shown = False
            for update in self._stream(image, question, top_k, use_llm, template, temperature, max_new_tokens,
                                       runs):
                result = update.result
                if update.stage == "vqa":
                    yield (result.caption, candidates_label(result.candidates), "",
                           verdict_html(result, llm_pending=use_llm is True and self.pipeline.llm is not None),
                           "", "", timings_dict(result))
                elif update.stage == "llm":
                    prompt = gr.skip() if prompt_shown else format_messages(result.messages)
                    prompt_shown = True
                    yield gr.skip(), gr.skip(), update.text, gr.skip(), prompt, update.text, gr.skip()
                else:
                    if result.error:
                        gr.Warning(public_text(result.error))
                    yield (result.caption, candidates_label(result.candidates), final_answer_text(result),
                           verdict_html(result), format_messages(result.messages), result.llm_reply,
                           timings_dict(result))

    def answer(self, image: Any, question: str, top_k: float = 5, use_llm: bool = True, template: str = "short",
               temperature: float | None = None, max_new_tokens: float | None = None,
               runs: float | None = 1) -> Iterator[dict[str, Any]]:
        """API ``/answer``: the result as a JSON dict, streamed (``stage`` vqa → llm ... → done)."""
        with user_errors():
            for update in self._stream(image, question, top_k, use_llm, template, temperature, max_new_tokens,
                                       runs):
                yield {"stage": update.stage, **public_result(update.result.to_dict())}

    def caption(self, image: Any) -> str:
        """API ``/caption``: the BLIP caption of the image."""
        with user_errors():
            picture = self._image(image)
            if self.pipeline.captioner is None:
                raise gr.Error("This app runs without a captioner; start it with a --captioner model.")
            return self._model_call("caption", picture)

    def _task_image(self, image: Any) -> Image.Image:
        if not self.tasks.available:
            raise gr.Error(self.tasks.note or "Image-text matching and patch relevance are not available here.")
        return self._image(image)

    def itm(self, image: Any, texts: str) -> dict[str, float]:
        """UI + API ``/itm``: probability that each text (one per line) matches the image."""
        with user_errors():
            picture = self._task_image(image)
            lines = match_texts(texts)
            return dict(zip(lines, self._model_call("match", picture, lines)))

    def classify(self, image: Any, labels: str) -> dict[str, float]:
        """UI + API ``/classify``: zero-shot classification, the labels (one per line) ranked by image-text
        matching with probabilities that sum to 1."""
        with user_errors():
            picture = self._task_image(image)
            return dict(self._model_call("classify", picture, classify_labels(labels)))

    def pbc(self, image: Any, text: str, alpha: float = 0.5) -> tuple[Image.Image, dict[str, Any]]:
        """UI + API ``/pbc``: heatmap of the image patches the text talks about, and the relevance grid."""
        with user_errors():
            alpha = relevance_alpha(alpha)
            picture = self._task_image(image)
            heatmap, relevance = self._model_call("relevance", picture, relevance_text(text), alpha)
            return heatmap, relevance_grid(relevance)
