"""Building chat messages (system + optional few-shot turns + user) from a template."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .errors import PromptError
from .render import check_candidates, neutralise, one_line, render_candidates
from .templates import load_template


def fields(caption: str, question: str, candidates: Sequence[tuple[str, float]]) -> dict[str, str]:
    """Placeholder values for one (caption, question, candidates) triple, made safe for the templates."""
    return {
        "caption": neutralise(one_line(caption)) or "(no caption)",
        "question": neutralise(str(question).strip()),
        "candidates": render_candidates(candidates),
    }


def render_user(
    template: str,
    caption: str,
    question: str,
    candidates: Sequence[tuple[str, float]],
    directory: str | Path | None = None,
) -> str:
    """The user message of ``template`` for one (caption, question, candidates) triple."""
    return load_template(template, directory).user.substitute(fields(caption, question, candidates))


def example_reply(kind: str, example: dict) -> str:
    """The assistant turn of a few-shot example: its ``reply`` if given, else built from ``answer``."""
    if example.get("reply"):
        return str(example["reply"]).strip()
    answer = one_line(example["answer"])
    if kind == "long":
        return answer
    explanation = one_line(example.get("explanation", ""))
    return f"Answer: {answer}" + (f"\nExplanation: {explanation}" if explanation else "")


def build_messages(
    template: str,
    caption: str,
    question: str,
    candidates: Sequence[tuple[str, float]],
    examples: list[dict] | None = None,
    directory: str | Path | None = None,
) -> list[dict]:
    """Chat messages for an LLM: system, then each few-shot example as a user/assistant pair, then the question.

    ``candidates`` are ``(answer, score)`` pairs, best first. ``examples`` are dicts with ``caption``,
    ``question``, ``candidates`` and ``answer`` (optionally ``explanation`` or a verbatim ``reply``),
    e.g. from :func:`prompts.load_examples`. Raises PromptError on an unknown template or bad inputs.
    """
    if not isinstance(question, str) or not question.strip():
        raise PromptError("The question is empty; type a question about the image.")
    if not isinstance(caption, str):
        raise PromptError(f"caption must be a string, got {type(caption).__name__}.")
    check_candidates(candidates)
    tmpl = load_template(template, directory)
    messages = [{"role": "system", "content": tmpl.system.substitute(fields(caption, question, candidates))}]
    for i, ex in enumerate(examples or []):
        missing = [k for k in ("caption", "question", "candidates", "answer") if k not in ex]
        if missing:
            raise PromptError(
                f"few-shot example #{i} lacks {missing}; each needs caption, question, candidates, answer."
            )
        messages.append(
            {
                "role": "user",
                "content": render_user(template, ex["caption"], ex["question"], ex["candidates"], directory),
            }
        )
        messages.append({"role": "assistant", "content": example_reply(tmpl.kind, ex)})
    messages.append({"role": "user", "content": render_user(template, caption, question, candidates, directory)})
    return messages
