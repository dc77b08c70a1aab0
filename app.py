"""The Gradio web demo: ask a question about an image and see the evidence behind the answer.

    python app.py [--profile auto|bundled|base|large] [--host HOST] [--port PORT] [--share] [--no-llm]
                  [--vqa-model ...] [--captioner ...] [--llm ...] [--concurrency N] [--max-queue N]

The Ask tab shows, side by side, BLIP's caption, VLE's top-k answers with scores and the LLM's answer
streaming token by token, a mark when the LLM changed VLE's top-1 answer, the exact prompt, the raw reply
and per-stage timings. Three more tabs run VLE's pretraining heads (image-text matching, zero-shot
classification through matching, patch relevance) when the profile has that checkpoint (every profile does:
``bundled`` carries its own, ``assets/models/vle-easyvqa-pretrain``). A "Visual commonsense (VCR)" tab appears
when the profile has both VCR models (:mod:`vqa_llm.vcr_tab`). This file is the page's layout and its event
wiring only; the rest comes from :mod:`vqa_llm`: the models (the pipeline, the VLE tasks of :mod:`vqa_llm.tasks`,
the VCR models of :mod:`vqa_llm.vcr`), the event functions and their checks (:mod:`vqa_llm.app_handlers`), what
the page shows (:mod:`vqa_llm.app_views`), the page's Blocks and upload policy (:mod:`vqa_llm.app_page`), the
examples (:mod:`vqa_llm.app_examples`), the flags and the server's start (:mod:`vqa_llm.app_launch`).

Named API endpoints (``gradio_client``): ``/answer``, ``/caption``, ``/itm``, ``/classify``, ``/pbc``, ``/vcr``. All
exist on every profile; without a VLE pretraining checkpoint (``--vle-pretrained none``) ``/itm``, ``/classify`` and
``/pbc`` answer with an error message saying so, and ``/vcr`` without the two VCR models.

Every event takes the request's raw values (``preprocess=False``) and checks them itself: images through
:class:`vqa_llm.uploads.UploadPolicy` (only files a visitor uploaded, inline images under the same limits),
settings against the ranges of their sliders, questions and texts by the checks the CLI and Python callers get
too. Inputs that Gradio itself refuses (too few values, a file object naming a file nobody uploaded) get a
message too (:class:`vqa_llm.app_page.DemoPage`). No reply names a path of the server.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import gradio as gr

from vqa_llm import Profile, VQALLMPipeline
from vqa_llm.app_examples import load_examples
from vqa_llm.app_handlers import RANGES, DemoHandlers, user_errors
from vqa_llm.app_launch import build_parser, load_models, run, serve
from vqa_llm.app_page import DEFAULT_MAX_FILE_SIZE, DemoPage, default_upload_policy, file_size
from vqa_llm.app_views import VERDICT_CSS, banner_markdown, tasks_note_markdown
from vqa_llm.fewshot import FEWSHOT_TEMPLATE
from vqa_llm.inputs import MAX_QUESTION_CHARS, template_names
from vqa_llm.tasks import MAX_CLASSIFY_LABELS, VLETasks, no_tasks_note
from vqa_llm.vcr import VCRModels
from vqa_llm.vcr_tab import add_vcr_tab

# what scripts and tests start the app with: the page, and python app.py's steps
__all__ = ["build_demo", "build_parser", "create_app", "main", "serve"]


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
                    verdict = gr.HTML(elem_id="verdict", css_template=VERDICT_CSS)
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
            gr.Markdown(tasks_note_markdown(tasks, profile), elem_id="tasks-note")

        # API-only endpoints: hidden triggers, fed by the Ask tab's input components.
        with gr.Group(visible=False):
            api_answer = gr.JSON(visible=False)
            api_caption = gr.Textbox(visible=False)
            answer_trigger = gr.Button(visible=False)
            caption_trigger = gr.Button(visible=False)
        answer_trigger.click(handlers.answer, ask_inputs, api_answer, api_name="answer", **answers)
        caption_trigger.click(handlers.caption, [image], api_caption, api_name="caption", **heavy)
    return demo


def create_app(args: argparse.Namespace) -> DemoPage:
    """Resolve the profile, load every model once (progress logged) and build the page."""
    pipeline, profile, reason, tasks = load_models(args)
    return build_demo(pipeline, profile, reason, tasks, max_file_size=args.max_file_size)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the demo; returns the exit status (2 when a model or setting is unusable)."""
    return run(create_app, argv)


if __name__ == "__main__":
    sys.exit(main())
