"""Command line: ``python -m vqa_llm ask IMAGE "QUESTION" [--profile ...] [--json] [--no-llm] ...``.

In text mode the caption and the VQA candidates are printed first, then the LLM reply as it streams, then
the final answer (with ``--template fewshot``: each run's reply, then the votes). ``--json`` prints the whole
result (``VQALLMResult.to_dict()``). Errors a user can cause
(unreadable image, empty question, missing model, unknown setting) print their message and exit with 2.
Progress and the chosen profile go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import TextIO

from .errors import VQALLMError
from .fewshot.arguments import add_template_arguments
from .fewshot.locate import example_bank_path, open_example_bank
from .fewshot.runs import FEWSHOT_TEMPLATE, check_counts
from .hub_access import check_profile_hub
from .profiles import add_profile_arguments, overrides_from_args, resolve_profile

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
logger = logging.getLogger("vqa_llm.cli")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m vqa_llm`` argument parser."""
    parser = argparse.ArgumentParser(prog="python -m vqa_llm", description="VQA + LLM from the command line.")
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("ask", help="answer one question about one image")
    ask.add_argument("image", help="image file (JPEG, PNG, WebP, ...)")
    ask.add_argument("question", help="the question, in quotes")
    add_template_arguments(ask)
    ask.add_argument("--top-k", type=int, default=5, help="number of VQA candidates shown and given to the LLM")
    ask.add_argument("--json", action="store_true", help="print the full result as JSON")
    ask.add_argument("--max-new-tokens", type=int, default=64, help="longest LLM reply in tokens (default: 64)")
    ask.add_argument("--temperature", type=float, default=None, help="LLM sampling temperature (default: greedy)")
    ask.add_argument("--llm-timeout", type=float, default=60.0, help="seconds the LLM may take (default: 60)")
    ask.add_argument("-q", "--quiet", action="store_true", help="no progress messages on stderr")
    add_profile_arguments(ask)
    return parser


def _print_vqa(result, out: TextIO) -> None:
    if result.caption:
        print(f"Caption: {result.caption}", file=out)
    shown = ", ".join(f"{answer} ({score:.2f})" for answer, score in result.candidates)
    print(f"VQA: {shown}", file=out)
    for note in result.notes:
        print(f"Note: {note}", file=out)


def _ask(args: argparse.Namespace, out: TextIO) -> int:
    from .inputs import check_template, clean_question, read_image
    from .pipeline import VQALLMPipeline

    # cheap checks first: a bad question or image is reported before any model loads
    clean_question(args.question)
    check_template(args.template)
    check_counts(args.runs, args.examples)
    image, _ = read_image(args.image)
    profile, reason = resolve_profile(args.profile, overrides_from_args(args))
    logger.info("Profile %s: %s", profile.name, reason)
    profile, note = check_profile_hub(profile, use_llm=not args.no_llm)  # seconds, not minutes, without a Hub
    if note:
        logger.info("Note: %s", note)
    fewshot = args.template == FEWSHOT_TEMPLATE and not args.no_llm
    bank = open_example_bank(example_bank_path(args.example_bank, profile)) if fewshot else None  # before models load
    pipe = VQALLMPipeline.from_profile(profile, use_llm=not args.no_llm, llm_timeout=args.llm_timeout,
                                       example_bank=bank)
    llm_opts = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
    updates = pipe.stream(image, args.question, top_k=args.top_k, use_llm=not args.no_llm,
                          template=args.template, runs=args.runs, n_examples=args.examples, **llm_opts)
    result = None
    streamed = False
    for update in updates:
        result = update.result
        if args.json:
            continue
        if update.stage == "vqa":
            _print_vqa(result, out)
        elif update.stage == "llm":
            if not streamed:
                print("LLM: ", end="", file=out)
                streamed = True
            print(update.chunk, end="", file=out, flush=True)
    if args.json:
        json.dump(result.to_dict(), out, indent=2, ensure_ascii=False)
        print(file=out)
        return 0
    if streamed:
        print(file=out)
    if result.error:
        print(f"LLM error: {result.error}", file=out)
    if result.runs:
        shown = ", ".join(f"{answer} ({count})" for answer, count in result.votes.items()) or "none"
        print(f"Votes: {shown} over {len(result.runs)} run(s) of "
              f"{', '.join(str(len(run['examples'])) for run in result.runs)} example(s)", file=out)
    source = ""
    if result.error:
        source = " (the VQA model's top answer)"
    elif result.llm_used and result.llm_fallback:
        source = " (the VQA model's top answer: the LLM reply held no usable answer)"
    elif not result.llm_used:
        source = " (VQA model)"
    print(f"Answer: {result.answer}{source}", file=out)
    if result.llm_explanation:
        print(f"Explanation: {result.llm_explanation}", file=out)
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the CLI; return the exit status (0 ok, 2 user error, 130 interrupted)."""
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(message)s", stream=sys.stderr, level=logging.WARNING)
    logging.getLogger("vqa_llm").setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        return _ask(args, out)
    except VQALLMError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
