"""Starting the app: ``python app.py``'s flags, the models loaded once, the server's settings and start-up lines.

    >>> args = build_parser().parse_args(["--profile", "bundled"])
    >>> pipeline, profile, reason, tasks = load_models(args)
    >>> serve(page, args)        # page: the Blocks app.py built around them

:func:`run` is ``python app.py``: parse, load and build (the caller's ``create``), serve; exit status 2 when a
model or setting is unusable.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from starlette.middleware import Middleware

from .app_page import DEFAULT_MAX_FILE_SIZE, DemoPage, file_size
from .errors import VQALLMError
from .fewshot.locate import BANK_ENV_VAR, example_bank_path
from .hub_access import check_profile_hub
from .pipeline import VQALLMPipeline
from .profiles import ENV_VARS, Profile, add_profile_arguments, overrides_from_args, resolve_profile
from .tasks import VLETasks, load_tasks
from .uploads import RequestSizeLimit

logger = logging.getLogger(__name__)

SPACES_PORT = 7860
DEFAULT_CONCURRENCY = 1
DEFAULT_MAX_QUEUE = 20
#: environment variable naming the VLE pretraining checkpoint (ITM + PBC heads)
PRETRAINED_ENV_VAR = ENV_VARS["vle_pretrained"]


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


def load_models(args: argparse.Namespace) -> tuple[VQALLMPipeline, Profile, str, VLETasks]:
    """Resolve the profile and load every model once (progress logged): ``(pipeline, profile, reason, tasks)``.
    Raises VQALLMError when a model or setting is unusable."""
    overrides = {**overrides_from_args(args), "vle_pretrained": args.vle_pretrained}
    profile, reason = resolve_profile(args.profile, overrides)
    logger.info("Profile %s: %s", profile.name, reason)
    profile, note = check_profile_hub(profile, use_llm=not args.no_llm)  # seconds, not minutes, without a Hub
    reason += f"; {note}" if note else ""
    pipeline = VQALLMPipeline.from_profile(profile, use_llm=not args.no_llm, llm_timeout=args.llm_timeout,
                                           example_bank=example_bank_path(args.example_bank, profile))
    tasks = load_tasks(profile)
    logger.info("Models ready: %s", pipeline.model_ids)
    return pipeline, profile, reason, tasks


def serve(demo: DemoPage, args: argparse.Namespace, prevent_thread_lock: bool = False,
          announce: bool | None = None) -> tuple[Any, str, Any]:
    """Queue (bounded concurrency and queue size) and launch ``demo``; returns Gradio's ``(app, url, share_url)``.

    Uploads are limited to the page's image size limit (``demo.uploads``), the same limit as inline images; other
    request bodies to what an inline image of that size needs (:class:`vqa_llm.uploads.RequestSizeLimit`).

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
        print_addresses(launched[1], launched[2], args.share)
    if not prevent_thread_lock:
        demo.block_thread()
    return launched


def print_addresses(url: str, share_url: str | None, share: bool) -> None:
    """Say where the app runs, and how to get a public link (``--share``) when there is none."""
    print(f"* Running on local URL:  {url}", flush=True)
    if share_url:
        print(f"* Running on public URL: {share_url}", flush=True)
    else:
        print("* Could not create a public link; the app runs locally only." if share
              else "* To create a public link, start the app with --share.", flush=True)


def run(create: Callable[[argparse.Namespace], DemoPage], argv: Sequence[str] | None = None) -> int:
    """``python app.py ARGV``: parse the flags, ``create(args)`` the page (loading the models), serve it until
    stopped. Returns the exit status (2 when a model or setting is unusable)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests
    try:
        demo = create(args)
    except VQALLMError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    serve(demo, args)
    return 0
