"""The Gradio web demo: ask a question about an image and see the evidence behind the answer.

    python app.py [--profile auto|bundled|base|large] [--host HOST] [--port PORT] [--share] [--no-llm]
                  [--vqa-model ...] [--captioner ...] [--llm ...] [--concurrency N] [--max-queue N]

The Ask tab shows, side by side, BLIP's caption, VLE's top-k answers with scores and the LLM's answer
streaming token by token, a mark when the LLM changed VLE's top-1 answer, the exact prompt, the raw reply
and per-stage timings. Three more tabs run VLE's pretraining heads (image-text matching, zero-shot
classification through matching, patch relevance) when the profile has that checkpoint (every profile does:
``bundled`` carries its own, ``assets/models/vle-easyvqa-pretrain``). A "Visual commonsense (VCR)" tab appears
when the profile has both VCR models (:mod:`vqa_llm.vcr_tab`). This file is UI only: the models come from
:mod:`vqa_llm` (the pipeline, the VLE tasks of :mod:`vqa_llm.tasks`, the VCR models of :mod:`vqa_llm.vcr`).

Named API endpoints (``gradio_client``): ``/answer``, ``/caption``, ``/itm``, ``/classify``, ``/pbc``, ``/vcr``. All
exist on every profile; without a VLE pretraining checkpoint (``--vle-pretrained none``) ``/itm``, ``/classify`` and
``/pbc`` answer with an error message saying so, and ``/vcr`` without the two VCR models.

Every event takes the request's raw values (``preprocess=False``) and checks them itself: images through
:class:`vqa_llm.uploads.UploadPolicy` (only files a visitor uploaded, inline images under the same limits),
settings against the ranges of their sliders, texts cleaned of control and invisible characters. Inputs that
Gradio itself refuses (too few values, a file object naming a file nobody uploaded) get a message too
(:class:`DemoPage`). No reply names a path of the server.
"""

from __future__ import annotations

import argparse
import html
import inspect
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.exceptions import InvalidPathError
from gradio.utils import get_upload_folder
from gradio_client.utils import is_http_url_like
from PIL import Image
from starlette.middleware import Middleware

from vqa_llm import Profile, VQALLMError, VQALLMPipeline, add_profile_arguments, overrides_from_args, resolve_profile
from vqa_llm.errors import user_error_types
from vqa_llm.fewshot import FEWSHOT_TEMPLATE
from vqa_llm.fewshot.locate import BANK_ENV_VAR, example_bank_path
from vqa_llm.hub_access import check_profile_hub
from vqa_llm.inputs import MAX_QUESTION_CHARS, check_flag, check_number, clean_lines, clean_text, template_names
from vqa_llm.pacing import paced
from vqa_llm.profiles import ENV_VARS
from vqa_llm.sources import model_source, public_text
from vqa_llm.tasks import VLETasks, load_tasks, no_tasks_note
from vqa_llm.uploads import NOT_UPLOADED, RequestSizeLimit, UploadPolicy
from vqa_llm.vcr import VCRModels
from vqa_llm.vcr_tab import add_vcr_tab
from vqa_llm.zerogpu import BASE_SECONDS, answer_seconds, gpu_call

logger = logging.getLogger("app")

REPO_ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = REPO_ROOT / "assets" / "examples"
EXAMPLES_FILE = "examples.json"
SPACES_PORT = 7860
DEFAULT_MAX_FILE_SIZE = "10mb"
DEFAULT_CONCURRENCY = 1
DEFAULT_MAX_QUEUE = 20
MAX_TOP_K = 20
MAX_FEWSHOT_RUNS = 5
MAX_ITM_TEXTS = 16
MAX_CLASSIFY_LABELS = 50
MAX_TEXT_CHARS = 300
#: the range of each numeric setting: its slider is built from it, and a request's value is checked against it
RANGES = {"top_k": (1, MAX_TOP_K), "temperature": (0.0, 1.5), "max_new_tokens": (8, 512),
          "runs": (1, MAX_FEWSHOT_RUNS), "alpha": (0.0, 1.0)}
_FILE_SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024 ** 2, "gb": 1024 ** 3}
#: environment variable naming the VLE pretraining checkpoint (ITM + PBC heads)
PRETRAINED_ENV_VAR = ENV_VARS["vle_pretrained"]
BUNDLED_NOTE = (
    "These are small offline models trained on easy-VQA-style images (one coloured shape, drawn on a plain "
    "background): ask about the shape or its colour, e.g. *What color is the triangle?* Photos get poor answers."
)


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The ``python app.py`` argument parser (server flags + the shared model-selection flags)."""
    parser = argparse.ArgumentParser(prog="python app.py", description="VLE VQA+LLM web demo (Gradio).")
    server = parser.add_argument_group("server")
    server.add_argument("--host", default=None,
                        help="address to bind (default: $GRADIO_SERVER_NAME, else 0.0.0.0 on Hugging Face Spaces, "
                             "else 127.0.0.1)")
    server.add_argument("--port", type=int, default=None,
                        help=f"port (default: $GRADIO_SERVER_PORT, else {SPACES_PORT} on Spaces, else the first free "
                             f"one from {SPACES_PORT})")
    server.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    server.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                        help=f"requests answered at the same time (default: {DEFAULT_CONCURRENCY})")
    server.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
                        help=f"requests allowed to wait; more are refused (default: {DEFAULT_MAX_QUEUE})")
    server.add_argument("--max-file-size", type=file_size, default=DEFAULT_MAX_FILE_SIZE,
                        help=f"largest image accepted, uploaded or inline, e.g. 500kb or 10mb (default: "
                             f"{DEFAULT_MAX_FILE_SIZE})")
    server.add_argument("--llm-timeout", type=float, default=60.0,
                        help="seconds one LLM reply may take (default: 60)")
    server.add_argument("--vle-pretrained", default=None,
                        help="VLE pretraining checkpoint for the matching/relevance tabs: Hub id, folder or 'none' "
                             f"(default: ${PRETRAINED_ENV_VAR}, else hfl/vle-base or hfl/vle-large for those profiles)")
    server.add_argument("--example-bank", default=None,
                        help=f"example bank of the fewshot template (default: ${BANK_ENV_VAR}, or the bundled bank "
                             "with the bundled VQA model)")
    add_profile_arguments(parser)
    return parser


def file_size(text: str | int) -> int:
    """A size such as ``10mb``, ``500kb`` or ``2048`` (bytes) in bytes (units of 1024, as Gradio counts them)."""
    match = re.fullmatch(r"(\d+)\s*([kmg]?b)?", str(text).strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: write e.g. 500kb or 10mb.")
    return int(match.group(1)) * _FILE_SIZE_UNITS[match.group(2) or "b"]


def resolve_host(host: str | None, environ: Mapping[str, str] | None = None) -> str:
    """``host`` if given; else ``GRADIO_SERVER_NAME`` (what Hugging Face Spaces sets); else ``0.0.0.0`` on Spaces
    (``SPACE_ID`` set) and ``127.0.0.1`` everywhere else."""
    environ = os.environ if environ is None else environ
    if host:
        return host
    if environ.get("GRADIO_SERVER_NAME"):
        return environ["GRADIO_SERVER_NAME"]
    return "0.0.0.0" if environ.get("SPACE_ID") else "127.0.0.1"


def resolve_port(port: int | None, environ: Mapping[str, str] | None = None) -> int | None:
    """``port`` if given; else ``GRADIO_SERVER_PORT`` (what Spaces sets); else 7860 on Spaces; else ``None``
    (Gradio picks a free one from 7860). A ``GRADIO_SERVER_PORT`` that is not a port number stops with a message."""
    environ = os.environ if environ is None else environ
    if port is not None:
        return port
    if environ.get("GRADIO_SERVER_PORT"):
        value = environ["GRADIO_SERVER_PORT"].strip()
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise SystemExit(f"GRADIO_SERVER_PORT={value!r} is not a port number: set it to e.g. 7860.")
        return int(value)
    return SPACES_PORT if environ.get("SPACE_ID") else None


# ----------------------------------------------------------------------------------------- examples
def load_examples(directory: str | Path = EXAMPLES_DIR) -> list[list[str]]:
    """``[[image_path, question], ...]`` from ``directory/examples.json``; ``[]`` when there is none.

    The file is a list of ``{"image": "file name relative to the folder", "question": "..."}`` objects (or
    ``{"examples": [...]}``). Entries whose image is missing or that are malformed are skipped with a warning,
    so a missing or half-written folder never stops the app.
    """
    path = Path(directory) / EXAMPLES_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        logger.warning("Ignoring the examples file %s: %s", path, exc)
        return []
    entries = data.get("examples", []) if isinstance(data, dict) else data
    examples: list[list[str]] = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) \
                or not isinstance(entry.get("question"), str):
            logger.warning("Ignoring a malformed example in %s: %r", path, entry)
            continue
        image = (Path(directory) / entry["image"]).resolve()
        if not image.is_file():
            logger.warning("Ignoring an example whose image is missing: %s", image)
            continue
        examples.append([str(image), entry["question"]])
    return examples


# -------------------------------------------------------------------------------------- rendering
def candidates_label(candidates: Sequence[tuple[str, float]]) -> dict[str, float]:
    """VQA candidates as a ``gr.Label`` value (answer -> score)."""
    return {str(answer): float(score) for answer, score in candidates}


def format_messages(messages: Sequence[Mapping[str, str]]) -> str:
    """The chat messages as plain text, one ``[role]`` block each."""
    return "\n\n".join(f"[{m.get('role', '?')}]\n{m.get('content', '')}" for m in messages)


def final_answer_text(result: Any) -> str:
    """What the LLM answer box shows once the run is done."""
    if not result.llm_used:
        return ""
    text = result.llm_answer or ""
    if result.llm_explanation:
        text += f"\n\n{result.llm_explanation}"
    return text


def verdict_html(result: Any | None, llm_pending: bool = False) -> str:
    """A coloured mark saying whether the LLM changed VLE's top-1 answer (all model text escaped)."""
    def badge(text: str, colour: str) -> str:
        return (f'<div class="vqa-verdict" style="padding:6px 10px;border-radius:6px;border:2px solid {colour};'
                f'font-weight:600">{text}</div>')

    if result is None:
        return ""
    top1 = html.escape(result.vqa_answer)
    notes = "".join(f'<div style="font-size:0.85em;opacity:0.8">Note: {html.escape(n)}</div>' for n in result.notes)
    if llm_pending:
        return badge(f"VLE says <code>{top1}</code>; waiting for the LLM ...", "#888") + notes
    if result.error:
        return badge(f"LLM failed, showing VLE's answer <code>{top1}</code>: {html.escape(result.error)}",
                     "#d97706") + notes
    if not result.llm_used:
        return badge(f"LLM off: VLE's answer is <code>{top1}</code>", "#888") + notes
    llm = html.escape(result.scored_answer or "")  # long templates: the short answer of the sentence
    if result.changed:
        return badge(f"✎ LLM changed VLE's answer: <code>{top1}</code> → <code>{llm}</code>", "#dc2626") + notes
    fallback = " (its reply named no usable answer)" if result.llm_fallback else ""
    return badge(f"✓ LLM kept VLE's answer <code>{top1}</code>{fallback}", "#16a34a") + notes


def timings_dict(result: Any) -> dict[str, Any]:
    """Per-stage seconds (rounded) and whether the image came from the cache."""
    stages = {k: round(float(v), 3) for k, v in result.timings.items()}
    return {**stages, "cache_hit": bool(result.cache_hit)}


def _md_plain(text: str) -> str:
    """Text safe inside Markdown (no HTML), quotes kept readable."""
    return html.escape(str(text), quote=False)


def _md_code(text: str) -> str:
    """Text as a Markdown code span (shown literally)."""
    return "`" + str(text).replace("`", "'") + "`"


def banner_markdown(profile: Profile, reason: str, models: Mapping[str, str | None], tasks: VLETasks) -> str:
    """The page header: profile, why it was chosen, the models in use by name and origin (no paths of this
    machine), and the bundled-model caveat."""
    shown = [f"{role}: {_md_code(model_source(ident))}" for role, ident in models.items() if ident]
    if tasks.source:
        shown.append(f"VLE pretraining: {_md_code(tasks.source)}")
    lines = [
        "# VLE VQA + LLM",
        f"**Profile:** {_md_code(profile.name)} — {_md_plain(public_text(reason))}",
        "**Models:** " + " · ".join(shown),
    ]
    if profile.description:
        lines.append(_md_plain(profile.description))
    if profile.is_bundled:
        lines.append(f"> {BUNDLED_NOTE}")
    return "\n\n".join(lines)


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


# --------------------------------------------------------------------------------------- handlers
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
            lines = clean_lines(texts, "texts", MAX_ITM_TEXTS, MAX_TEXT_CHARS)
            return dict(zip(lines, self._model_call("match", picture, lines)))

    def classify(self, image: Any, labels: str) -> dict[str, float]:
        """UI + API ``/classify``: zero-shot classification, the labels (one per line) ranked by image-text
        matching with probabilities that sum to 1."""
        with user_errors():
            picture = self._task_image(image)
            lines = clean_lines(labels, "labels", MAX_CLASSIFY_LABELS, MAX_TEXT_CHARS)
            if len(lines) < 2:
                raise gr.Error("Give at least two labels, one per line, to choose between.")
            return dict(self._model_call("classify", picture, lines))

    def pbc(self, image: Any, text: str, alpha: float = 0.5) -> tuple[Image.Image, dict[str, Any]]:
        """UI + API ``/pbc``: heatmap of the image patches the text talks about, and the relevance grid."""
        with user_errors():
            alpha = check_number("alpha", alpha, *RANGES["alpha"])
            picture = self._task_image(image)
            text = clean_text(text)[0] if isinstance(text, str) else ""
            if not text:
                raise gr.Error("Type a text describing something in the image.")
            if len(text) > MAX_TEXT_CHARS:
                raise gr.Error(f"The text is {len(text)} characters long; the limit is {MAX_TEXT_CHARS}. Shorten it.")
            heatmap, relevance = self._model_call("relevance", picture, text, alpha)
            grid = {"rows": int(relevance.shape[0]), "cols": int(relevance.shape[1]),
                    "max": round(float(relevance.max()), 4),
                    "relevance": [[round(float(v), 4) for v in row] for row in relevance]}
            return heatmap, grid


def public_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """A result dict as the API returns it: models by name and origin, notes and error without server paths
    (a researcher's own records keep the full ids)."""
    return {**result, "models": {role: model_source(ident) for role, ident in result.get("models", {}).items()},
            "notes": [public_text(note) for note in result.get("notes", [])],
            "error": public_text(result["error"]) if result.get("error") else result.get("error")}


def default_upload_policy(max_file_size: int = file_size(DEFAULT_MAX_FILE_SIZE)) -> UploadPolicy:
    """Images may be read from Gradio's upload folder and the example images, up to ``max_file_size`` bytes."""
    return UploadPolicy([get_upload_folder(), EXAMPLES_DIR], max_bytes=max_file_size)


class DemoPage(gr.Blocks):
    """The page's Blocks. A request whose inputs Gradio itself refuses before an event function runs gets a
    message saying what was wrong, instead of an empty error: too few values, a file object naming a file
    nobody uploaded (the same reply as :class:`~vqa_llm.uploads.UploadPolicy` gives), a value of the wrong
    shape. ``uploads`` is the policy of the page's image inputs (its size limit is the server's upload limit).
    """

    def __init__(self, uploads: UploadPolicy, **kwargs: Any):
        super().__init__(**kwargs)
        self.uploads = uploads

    async def preprocess_data(self, block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False):
        if any(isinstance(value, dict) and is_http_url_like(str(value.get("path", ""))) for value in inputs):
            raise gr.Error(NOT_UPLOADED)  # Gradio would fetch it: a URL is not an upload
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except InvalidPathError as exc:
            raise gr.Error(NOT_UPLOADED) from exc
        except Exception as exc:
            names = list(inspect.signature(block_fn.fn).parameters)[:len(block_fn.inputs)]
            if len(inputs) < len(block_fn.inputs):
                raise gr.Error(f"This endpoint takes {len(block_fn.inputs)} inputs ({', '.join(names)}); the "
                               f"request sent {len(inputs)}.") from exc
            raise gr.Error(f"An input of the request has the wrong form ({type(exc).__name__}): send the inputs "
                           f"{', '.join(names)} as /gradio_api/info describes them.") from exc


# ------------------------------------------------------------------------------------------- page
def build_demo(pipeline: VQALLMPipeline, profile: Profile, reason: str, tasks: VLETasks | None = None,
               examples: list[list[str]] | None = None, max_file_size: int = file_size(DEFAULT_MAX_FILE_SIZE),
               vcr: VCRModels | None = None) -> DemoPage:
    """Build the page around ``pipeline`` (any :class:`VQALLMPipeline`, real or with fake models).

    ``tasks`` holds the ITM/PBC tasks (their tabs are hidden with a note when absent); ``examples`` is
    ``[[image_path, question], ...]`` (default: :func:`load_examples`); ``max_file_size`` the largest image
    in bytes, uploaded or inline; ``vcr`` the VCR models (default: the profile's, loaded at their first use).
    """
    tasks = tasks if tasks is not None else VLETasks(note=no_tasks_note(profile))
    vcr = vcr if vcr is not None else VCRModels.from_profile(profile)
    examples = load_examples() if examples is None else examples
    uploads = default_upload_policy(max_file_size)
    handlers = DemoHandlers(pipeline, tasks, uploads)
    has_llm = pipeline.llm is not None
    has_bank = pipeline.example_bank is not None  # the fewshot template needs an example bank
    templates = [name for name in template_names() if name != FEWSHOT_TEMPLATE or has_bank]
    top_k_max, defaults = handlers.top_k_max, handlers.defaults
    # all model work shares one concurrency limit; the handlers check the raw values themselves
    heavy = {"concurrency_id": "models", "preprocess": False}
    # questions run together when the LLM works on several chats at once (continuous batching, a server)
    batch = pipeline.llm.max_batch_size if has_llm else 1
    answers = heavy if batch <= 1 else {"concurrency_id": "answers", "concurrency_limit": batch, "preprocess": False}

    with DemoPage(uploads, title="VLE VQA + LLM", analytics_enabled=False) as demo:
        vcr_ids = {f"VCR {task}": ident for task, ident in vcr.model_ids.items()} if vcr.available else {}
        gr.Markdown(banner_markdown(profile, reason, {**pipeline.model_ids, **vcr_ids}, tasks), elem_id="banner")
        with gr.Tab("Ask", id="ask"):
            with gr.Row(equal_height=False):
                with gr.Column(scale=1) as ask_column:
                    image = gr.Image(type="filepath", sources=["upload", "clipboard"], label="Image", height=300,
                                     elem_id="ask-image")
                    question = gr.Textbox(label="Question", placeholder="What color is the shape?", lines=1,
                                          max_length=MAX_QUESTION_CHARS, elem_id="ask-question")
                    ask_button = gr.Button("Ask", variant="primary", elem_id="ask-button")
                    with gr.Accordion("Settings", open=False):
                        top_k = gr.Slider(RANGES["top_k"][0], top_k_max, value=defaults["top_k"], step=1,
                                          label="VLE top-k answers")
                        use_llm = gr.Checkbox(value=has_llm, interactive=has_llm, label="Refine with the LLM",
                                              info=None if has_llm else "No LLM is loaded (started with --no-llm).")
                        template = gr.Dropdown(templates, value="short" if "short" in templates else templates[0],
                                               label="Prompt template")
                        temperature = gr.Slider(*RANGES["temperature"], value=defaults["temperature"], step=0.05,
                                                label="LLM temperature (0 = greedy, reproducible)")
                        max_new_tokens = gr.Slider(*RANGES["max_new_tokens"], value=defaults["max_new_tokens"],
                                                   step=8, label="LLM max new tokens")
                        runs = gr.Slider(*RANGES["runs"], value=defaults["runs"], step=1, visible=has_bank,
                                         label="Few-shot runs voted (fewshot template)")
                with gr.Column(scale=1):
                    caption = gr.Textbox(label="Caption (BLIP)", interactive=False, elem_id="caption")
                    vqa = gr.Label(label="VLE top-k answers", elem_id="vqa-label")
                with gr.Column(scale=1):
                    llm_text = gr.Textbox(label="LLM answer", lines=4, interactive=False, autoscroll=True,
                                          elem_id="llm-answer")
                    verdict = gr.HTML(elem_id="verdict")
                    with gr.Accordion("Prompt and raw LLM reply", open=False):
                        prompt = gr.Textbox(label="Prompt messages", lines=8, interactive=False, elem_id="prompt")
                        raw_reply = gr.Textbox(label="Raw LLM reply", lines=4, interactive=False, elem_id="raw-reply")
                    timings = gr.JSON(label="Timings (seconds)", elem_id="timings")
            ask_inputs = [image, question, top_k, use_llm, template, temperature, max_new_tokens, runs]
            ask_outputs = [caption, vqa, llm_text, verdict, prompt, raw_reply, timings]
            if examples:
                on_spaces = bool(os.environ.get("SPACE_ID"))  # there: each answer cached at its first use
                with ask_column:
                    gr.Examples(examples, inputs=[image, question], outputs=ask_outputs, fn=handlers.ask_example,
                                cache_examples=on_spaces, cache_mode="lazy", preprocess=False,
                                api_visibility="private", label="Examples")
            for trigger in (ask_button.click, question.submit):
                trigger(handlers.ask, ask_inputs, ask_outputs, api_visibility="private", **answers)

        with gr.Tab("Image-text matching", id="itm", visible=tasks.available):
            with gr.Row():
                itm_image = gr.Image(type="filepath", label="Image", height=300, elem_id="itm-image")
                with gr.Column():
                    itm_texts = gr.Textbox(label="Texts, one per line", lines=5, elem_id="itm-texts",
                                           placeholder="a red circle\na blue square")
                    itm_button = gr.Button("Match", variant="primary", elem_id="itm-button")
                    itm_scores = gr.Label(label="Match probability", elem_id="itm-scores")
            itm_button.click(handlers.itm, [itm_image, itm_texts], itm_scores, api_name="itm", **heavy)

        with gr.Tab("Patch relevance", id="pbc", visible=tasks.available):
            with gr.Row():
                pbc_image = gr.Image(type="filepath", label="Image", height=300, elem_id="pbc-image")
                with gr.Column():
                    pbc_text = gr.Textbox(label="Text", placeholder="the red circle", elem_id="pbc-text")
                    alpha = gr.Slider(*RANGES["alpha"], value=0.5, step=0.05, label="Darken irrelevant patches by")
                    pbc_button = gr.Button("Show relevance", variant="primary", elem_id="pbc-button")
                    heatmap = gr.Image(type="pil", format="png", label="Relevance heatmap", interactive=False,
                                       elem_id="pbc-heatmap")
                    grid = gr.JSON(label="Per-patch relevance", elem_id="pbc-grid")
            pbc_button.click(handlers.pbc, [pbc_image, pbc_text, alpha], [heatmap, grid], api_name="pbc", **heavy)

        with gr.Tab("Zero-shot classification", id="classify", visible=tasks.available):
            with gr.Row():
                cls_image = gr.Image(type="filepath", label="Image", height=300, elem_id="classify-image")
                with gr.Column():
                    cls_labels = gr.Textbox(label=f"Labels, one per line (up to {MAX_CLASSIFY_LABELS})", lines=8,
                                            max_lines=12, value="\n".join(tasks.default_labels),
                                            elem_id="classify-labels")
                    cls_button = gr.Button("Classify", variant="primary", elem_id="classify-button")
                    cls_ranked = gr.Label(label="Ranked labels (probability)", elem_id="classify-ranked")
            cls_button.click(handlers.classify, [cls_image, cls_labels], cls_ranked, api_name="classify", **heavy)

        add_vcr_tab(vcr, uploads, user_errors, heavy)  # the VCR tab (with both VCR models) and /vcr

        if not tasks.available:
            gr.Markdown(f"*{_md_plain(tasks.note or no_tasks_note(profile))}*", elem_id="tasks-note")

        # API-only endpoints: hidden triggers, fed by the Ask tab's input components.
        with gr.Group(visible=False):
            api_answer = gr.JSON(visible=False)
            api_caption = gr.Textbox(visible=False)
            answer_trigger = gr.Button(visible=False)
            caption_trigger = gr.Button(visible=False)
        answer_trigger.click(handlers.answer, ask_inputs, api_answer, api_name="answer", **answers)
        caption_trigger.click(handlers.caption, [image], api_caption, api_name="caption", **heavy)
    return demo


# --------------------------------------------------------------------------------------- start-up
def create_app(args: argparse.Namespace) -> DemoPage:
    """Resolve the profile, load every model once (progress logged) and build the page."""
    overrides = {**overrides_from_args(args), "vle_pretrained": args.vle_pretrained}
    profile, reason = resolve_profile(args.profile, overrides)
    logger.info("Profile %s: %s", profile.name, reason)
    profile, note = check_profile_hub(profile, use_llm=not args.no_llm)  # seconds, not minutes, without a Hub
    reason += f"; {note}" if note else ""
    pipeline = VQALLMPipeline.from_profile(profile, use_llm=not args.no_llm, llm_timeout=args.llm_timeout,
                                           example_bank=example_bank_path(args.example_bank, profile))
    tasks = load_tasks(profile)
    logger.info("Models ready: %s", pipeline.model_ids)
    return build_demo(pipeline, profile, reason, tasks, max_file_size=args.max_file_size)


def serve(demo: DemoPage, args: argparse.Namespace, prevent_thread_lock: bool = False,
          announce: bool | None = None) -> tuple[Any, str, Any]:
    """Queue (bounded concurrency and queue size) and launch ``demo``; returns Gradio's ``(app, url, share_url)``.

    Uploads are limited to the page's image size limit (``build_demo``'s ``max_file_size``), the same limit as
    inline images; other request bodies to what an inline image of that size needs
    (:class:`vqa_llm.uploads.RequestSizeLimit`).

    ``announce`` (default: when the call blocks) prints where the app runs; Gradio's own lines are silenced,
    as its hint names ``launch(share=True)`` where this app's users pass ``--share``.
    """
    if args.concurrency < 1 or args.max_queue < 1:
        raise SystemExit("--concurrency and --max-queue must be at least 1.")
    demo.queue(default_concurrency_limit=args.concurrency, max_size=args.max_queue)
    launched = demo.launch(server_name=resolve_host(args.host), server_port=resolve_port(args.port),
                           share=args.share, max_file_size=demo.uploads.max_bytes, prevent_thread_lock=True,
                           show_error=False, quiet=True, app_kwargs={"middleware": [
                               Middleware(RequestSizeLimit, max_bytes=demo.uploads.request_limit)]})
    if announce if announce is not None else not prevent_thread_lock:
        _, url, share_url = launched
        print(f"* Running on local URL:  {url}", flush=True)
        if share_url:
            print(f"* Running on public URL: {share_url}", flush=True)
        else:
            print("* Could not create a public link; the app runs locally only." if args.share
                  else "* To create a public link, start the app with --share.", flush=True)
    if not prevent_thread_lock:
        demo.block_thread()
    return launched


def main(argv: Sequence[str] | None = None) -> int:
    """Start the demo; returns the exit status (2 when a model or setting is unusable)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    try:
        demo = create_app(args)
    except VQALLMError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    serve(demo, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
