"""Build or inspect the example bank of the ``fewshot`` template.

    python -m vqa_llm.example_bank build --dataset easy-vqa --out assets/models/easyvqa-example-bank \\
        --limit 4000 --seed 0 --profile bundled
    python -m vqa_llm.example_bank build --dataset vqav2 --questions v2_OpenEnded_mscoco_train2014_questions.json \\
        --annotations v2_mscoco_train2014_annotations.json --images train2014/ --profile base --out banks/vqav2
    python -m vqa_llm.example_bank info assets/models/easyvqa-example-bank

``build`` runs the profile's VQA model and captioner (never the LLM) over a training split — all of it, or the
fixed seeded ``--limit`` sample the evaluator would draw — and writes the bank files (see
:mod:`vqa_llm.fewshot.bank`) and a README into ``--out``. Use the same model flags as the runs that will use
the bank: its keys are that VQA model's fused representations.

Exit status: 0 done, 2 a user error (message on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from project_base.output_folder import check_output_folder
from vle.vqa_data import VQADataError

from .errors import VQALLMError
from .evaluation.data import add_dataset_arguments, examples_from_args
from .fewshot.bank import META_FILE, ExampleBank, ExampleBankError
from .fewshot.build import DEFAULT_BANK_TOP_K, build_bank
from .hub_access import check_profile_hub
from .profiles import add_profile_arguments, overrides_from_args, resolve_profile

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
logger = logging.getLogger("vqa_llm.example_bank")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m vqa_llm.example_bank`` argument parser."""
    parser = argparse.ArgumentParser(prog="python -m vqa_llm.example_bank",
                                     description="Example banks of the fewshot prompt template.")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build a bank from a training split")
    add_dataset_arguments(build, split="train")
    build.add_argument("--top-k", type=int, default=DEFAULT_BANK_TOP_K,
                       help=f"VQA candidates stored per question (default: {DEFAULT_BANK_TOP_K})")
    build.add_argument("--with-scores", action="store_true",
                       help="also store each question's answer-score vector as a second retrieval key")
    build.add_argument("--batch-size", type=int, default=32, help="questions per batch (default: 32)")
    build.add_argument("--out", required=True, help="output folder")
    build.add_argument("--overwrite", action="store_true", help="replace a bank already in --out")
    build.add_argument("-q", "--quiet", action="store_true", help="no progress bar or messages on stderr")
    add_profile_arguments(build)
    info = commands.add_parser("info", help="print what a bank holds")
    info.add_argument("bank", help="bank folder")
    return parser


def source_name(args: argparse.Namespace) -> str:
    """What bank records name as their ``source``: ``easy-vqa/train``, or ``vqav2/<questions file stem>``."""
    if args.dataset == "easy-vqa":
        return f"easy-vqa/{args.split}"
    return f"vqav2/{Path(args.questions).stem}"


def readme(bank: ExampleBank, command: str) -> str:
    """The README written beside a bank."""
    meta = bank.meta
    size = sum(p.stat().st_size for p in bank.path.iterdir() if p.is_file()) if bank.path else 0
    return "\n".join([
        f"# Example bank: {meta.get('source')}",
        "",
        "Answered training questions with VLE's fused representation as retrieval key, for the `fewshot` prompt "
        "template (see `vqa_llm/fewshot/`).",
        "",
        f"- questions: {len(bank)}",
        f"- VQA model: `{meta.get('vqa_model')}`; captioner: `{meta.get('captioner')}`",
        f"- keys: {', '.join(f'{k} [{len(bank)} x {v}] float16' for k, v in meta.get('keys', {}).items())}",
        f"- candidates per question: {meta.get('top_k')}; sample: limit {meta.get('limit')}, seed {meta.get('seed')}",
        f"- size on disk: {size / 1e6:.2f} MB",
        "",
        "Built with:",
        "",
        f"    {command}",
        "",
    ])


def _build(args: argparse.Namespace) -> int:
    from .pipeline import VQALLMPipeline

    for flag, value in (("--top-k", args.top_k), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ExampleBankError(f"{flag} must be at least 1, got {value}.")
    out = check_output_folder(args.out)
    if (out / META_FILE).is_file() and not args.overwrite:
        raise ExampleBankError(f"{out} already holds an example bank: pass --overwrite to replace it, or choose "
                               "another --out.")
    profile, reason = resolve_profile(args.profile, overrides_from_args(args))
    logger.info("Profile %s: %s", profile.name, reason)
    profile, note = check_profile_hub(profile, use_llm=False)  # seconds, not minutes, without a Hub
    if note:
        logger.info("Note: %s", note)
    examples = examples_from_args(args)
    pipe = VQALLMPipeline.from_profile(profile, use_llm=False)
    bank = build_bank(pipe, examples, source_name(args), top_k=args.top_k, batch_size=args.batch_size,
                      with_scores=args.with_scores, progress=not args.quiet,
                      extra_meta={"limit": args.limit, "seed": args.seed})
    bank.save(out)
    command = "python -m vqa_llm.example_bank " + " ".join(sys.argv[1:] if args.argv is None else args.argv)
    (out / "README.md").write_text(readme(bank, command), encoding="utf-8")
    logger.info("Wrote an example bank of %d questions to %s.", len(bank), out)
    return 0


def _info(args: argparse.Namespace) -> int:
    bank = ExampleBank.load(args.bank)
    print(json.dumps({**bank.meta, "records": len(bank)}, indent=2, ensure_ascii=False))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return the exit status (0 done, 2 user error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else None
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(message)s", stream=sys.stderr, level=logging.WARNING)
    logging.getLogger("vqa_llm").setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    try:
        return _build(args) if args.command == "build" else _info(args)
    except (VQALLMError, VQADataError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("Interrupted; nothing was written.", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
