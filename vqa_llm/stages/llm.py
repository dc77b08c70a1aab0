"""Stage 3: the LLM stage. Prompts from the VQA outcome, the LLM's replies (streamed or batched), the parsed
answer (few-shot runs voted), as an :class:`LLMOutcome` that :func:`apply_outcome` writes into the result.

:func:`apply_outcome` is the one place that writes the result's LLM fields; while a reply streams, only its
text so far (``llm_reply``) is updated. LLM failures never lose the VQA work: the outcome keeps the VQA top-1
as the answer and says what happened in ``error``. The generation calls are :class:`LLMCalls`; prompts are built
and replies parsed around them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm import ChatLLM
from llm.base import DEFAULT_MAX_NEW_TOKENS
from prompts import PromptError, build_fitted_messages, build_messages, parse_answer

from ..errors import LLMFailure
from ..fewshot import join_replies, plan_runs, run_header, vote
from ..llm_guard import generate_batch_with_deadline, stream_with_deadline
from ..metrics import normalize_answer
from ..result import VQALLMResult, VQALLMUpdate
from .clock import Clock
from .prepare import LLMPlan
from .vqa import VQAOutcome

logger = logging.getLogger(__name__)

Chat = list[dict]
Examples = list[list[dict[str, Any]]]  # the example sets of one question's few-shot runs


@dataclass
class Prompted:
    """The chat(s) of one question: one, or one per few-shot run; ``runs`` records each run's examples."""

    chats: list[Chat]
    runs: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class LLMOutcome:
    """What the LLM stage concluded for one question: the result's LLM fields (see
    :class:`~vqa_llm.result.VQALLMResult`) and ``notes`` to add to it."""

    messages: list[dict[str, str]] = field(default_factory=list)
    reply: str = ""
    answer: str | None = None
    short_answer: str | None = None
    explanation: str = ""
    fallback: bool = False
    changed: bool = False
    error: str | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    votes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def apply_outcome(result: VQALLMResult, outcome: LLMOutcome) -> None:
    """Write ``outcome`` into ``result``'s LLM fields (the only place that does)."""
    result.llm_used = True
    result.messages = outcome.messages
    result.llm_reply = outcome.reply
    result.llm_answer = outcome.answer
    result.llm_short_answer = outcome.short_answer
    result.llm_explanation = outcome.explanation
    result.llm_fallback = outcome.fallback
    result.changed = outcome.changed
    result.error = outcome.error
    result.runs = outcome.runs
    result.votes = outcome.votes
    result.notes += outcome.notes


def failed(result: VQALLMResult, message: str, base: LLMOutcome | None = None) -> LLMOutcome:
    """``base`` (or an empty outcome) turned into a failure: VLE's top-1 as the answer, ``message`` as error."""
    logger.warning("%s", message)
    outcome = base if base is not None else LLMOutcome()
    outcome.error, outcome.answer, outcome.explanation = message, result.vqa_answer, ""
    outcome.fallback, outcome.changed = True, False
    return outcome


# --------------------------------------------------------------------------------------------- prompts
def _token_budget(llm: ChatLLM, options: dict[str, Any]) -> tuple[Callable[[Chat], int] | None, int | None]:
    """The LLM's prompt-token counter and limit, when its backend knows them (local models)."""
    limit = llm.prompt_limit(options.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
    return (None, None) if limit is None else (llm.count_tokens, limit)


def build_chats(result: VQALLMResult, plan: LLMPlan, llm: ChatLLM, examples: Examples | None) -> Prompted:
    """The chat(s) to send for ``result``: one, or one per few-shot run of ``examples`` (examples dropped,
    least similar first, until each fits the LLM's context). Raises PromptError."""
    if examples is None:
        return Prompted([build_messages(result.template, result.caption, result.question, result.candidates,
                                        directory=plan.template_dir)])
    count, limit = _token_budget(llm, plan.options)
    prompted = Prompted([])
    for run in examples:
        messages, kept = build_fitted_messages(result.template, result.caption, result.question,
                                               result.candidates, run, count, limit, plan.template_dir)
        prompted.chats.append(messages)
        prompted.runs.append({"examples": [e["id"] for e in kept],
                              "similarities": [round(float(e["similarity"]), 4) for e in kept],
                              "dropped": len(run) - len(kept)})
    return prompted


def prompt(result: VQALLMResult, plan: LLMPlan, llm: ChatLLM, examples: Examples | None,
           clock: Clock) -> Prompted | None:
    """:func:`build_chats`, timed as ``prompt``; the result shows the first chat (and the runs) from here on.
    ``None`` when no prompt can be built (the result then says why and keeps the VQA answer)."""
    try:
        with clock("prompt"):
            prompted = build_chats(result, plan, llm, examples)
    except PromptError as exc:
        apply_outcome(result, failed(result, f"Could not build the LLM prompt ({exc}); the VQA answer is shown "
                                             "instead."))
        return None
    apply_outcome(result, LLMOutcome(messages=prompted.chats[0], runs=prompted.runs))
    return prompted


def fewshot_examples(plan: LLMPlan, vqa: VQAOutcome, keys: Sequence[str], top_k: int,
                     clock: Clock) -> list[Examples] | None:
    """Per question, the example sets of its voting runs (``None`` without few-shot)."""
    if plan.fewshot is None:
        return None
    with clock("prompt"):
        return plan_runs(plan.fewshot, vqa.fused, list(keys), top_k)


# --------------------------------------------------------------------------------------------- replies
def _parsed_outcome(result: VQALLMResult, reply: str, directory: Path | None) -> LLMOutcome:
    parsed = parse_answer(reply, result.candidates, result.template, directory, question=result.question)
    notes = [f"The LLM's reply was not used ({parsed.problem}); VLE's top answer is shown."] if parsed.problem else []
    return LLMOutcome(reply=reply, answer=parsed.answer, short_answer=parsed.short, explanation=parsed.explanation,
                      fallback=parsed.fallback, notes=notes,
                      changed=normalize_answer(parsed.short_answer) != normalize_answer(result.vqa_answer))


def _voted_outcome(result: VQALLMResult, prompted: Prompted, replies: list[str],
                   failures: list[LLMFailure | None], directory: Path | None) -> LLMOutcome:
    runs = [dict(run) for run in prompted.runs]
    parsed = []
    for run, reply, failure in zip(runs, replies, failures):
        answer = None if failure is not None else parse_answer(reply, result.candidates, result.template, directory,
                                                               question=result.question)
        parsed.append(answer)
        run.update(reply=reply, answer=answer.answer if answer is not None and not answer.fallback else None,
                   error=str(failure) if failure is not None else None)
    voted = vote([run["answer"] for run in runs], result.candidates)
    outcome = LLMOutcome(reply=join_replies(replies), runs=runs, votes=voted.votes)
    if all(failure is not None for failure in failures):
        return failed(result, str(failures[0]), outcome)
    outcome.notes = [f"few-shot run {i + 1} of {len(failures)} failed: {failure}"
                     for i, failure in enumerate(failures) if failure is not None]
    if voted.answer is None:  # no run gave a usable answer: keep the VQA top-1
        outcome.answer, outcome.fallback = result.vqa_answer, True
        return outcome
    outcome.answer, outcome.explanation = voted.answer, parsed[voted.run].explanation
    outcome.changed = normalize_answer(voted.answer) != normalize_answer(result.vqa_answer)
    return outcome


def conclude(result: VQALLMResult, prompted: Prompted, replies: list[str], failures: list[LLMFailure | None],
             directory: Path | None) -> LLMOutcome:
    """The outcome of one question from the reply (or failure) of each of its chats; few-shot runs are voted."""
    if prompted.runs:
        outcome = _voted_outcome(result, prompted, replies, failures, directory)
    elif failures[0] is not None:
        outcome = failed(result, str(failures[0]), LLMOutcome(reply=replies[0]))
    else:
        outcome = _parsed_outcome(result, replies[0], directory)
    outcome.messages = prompted.chats[0]
    return outcome


# ----------------------------------------------------------------------------------------- generation
class LLMCalls:
    """The LLM's generation calls: the model work of the LLM stage (prompts are built and replies parsed
    around them)."""

    def __init__(self, llm: ChatLLM):
        self.llm = llm

    def stream(self, chats: list[Chat], timeout: float | None,
                options: dict[str, Any]) -> Iterator[tuple[int, str | LLMFailure]]:
        """``(chat index, chunk)`` of each chat's reply in turn; a chat that fails gives ``(index, failure)``."""
        for index, chat in enumerate(chats):
            try:
                for chunk in stream_with_deadline(self.llm, chat, timeout, **options):
                    yield index, chunk
            except LLMFailure as exc:
                yield index, exc

    def _batch(self, chats: list[Chat], timeout: float | None, options: dict[str, Any]) -> list[str | LLMFailure]:
        """Replies to ``chats`` in one ``generate_batch`` call; when the batch fails for a reason other than a
        timeout, the chats are retried one by one so one bad chat cannot sink the others."""
        try:
            return list(generate_batch_with_deadline(self.llm, chats, timeout, **options))
        except LLMFailure as exc:
            if exc.timed_out:
                return [exc] * len(chats)
            logger.warning("Batched LLM call failed (%s); retrying the chats one by one.", exc)
        replies: list[str | LLMFailure] = []
        for chat in chats:
            try:
                replies.append(generate_batch_with_deadline(self.llm, [chat], timeout, **options)[0])
            except LLMFailure as one:
                replies.append(one)
        return replies

    def generate(self, rounds: list[list[Chat]], timeout: float | None,
                  options: dict[str, Any]) -> list[list[str | LLMFailure]]:
        """The replies of each round of chats, one batch per round."""
        return [self._batch(chats, timeout, options) for chats in rounds]


def stream_llm(result: VQALLMResult, calls: LLMCalls, plan: LLMPlan, clock: Clock,
               examples: Examples | None = None) -> Iterator[VQALLMUpdate]:
    """The LLM stage of one question, streamed: ``"llm"`` updates with the reply so far (few-shot runs one
    after the other, each after its run header), then the outcome is written into ``result``."""
    prompted = prompt(result, plan, calls.llm, examples, clock)
    if prompted is None:
        return
    total = len(prompted.chats)
    texts = [""] * total
    failures: list[LLMFailure | None] = [None] * total
    emitted = 0  # characters of llm_reply already sent as chunks (run headers go with the next chunk)
    with clock("llm"):
        for index, piece in calls.stream(prompted.chats, plan.timeout, plan.options):
            if isinstance(piece, LLMFailure):
                failures[index] = piece
                continue
            texts[index] += piece
            result.llm_reply = "\n".join(run_header(i, total) + texts[i] for i in range(index + 1))
            shown, emitted = result.llm_reply[emitted:], len(result.llm_reply)
            yield VQALLMUpdate("llm", result, text=result.llm_reply, chunk=shown)
    apply_outcome(result, conclude(result, prompted, texts, failures, plan.template_dir))


def batch_llm(results: list[VQALLMResult], calls: LLMCalls, plan: LLMPlan, clock: Clock,
              examples: list[Examples] | None = None) -> None:
    """The LLM stage of a batch of questions: one ``generate_batch`` per few-shot run index (just one without
    few-shot); each outcome is written into its result."""
    ready = []
    for index, result in enumerate(results):
        prompted = prompt(result, plan, calls.llm, examples[index] if examples is not None else None, clock)
        if prompted is not None:
            ready.append((result, prompted))
    if not ready:
        return
    rounds: list[list[Chat]] = []  # round r: the r-th chat of every question that has one
    places: list[list[tuple[int, int]]] = []  # per question: (round, position in it) of each of its chats
    for _, prompted in ready:
        places.append([])
        for r, chat in enumerate(prompted.chats):
            if r == len(rounds):
                rounds.append([])
            places[-1].append((r, len(rounds[r])))
            rounds[r].append(chat)
    with clock("llm"):
        replies = calls.generate(rounds, plan.timeout, plan.options)
    for (result, prompted), where in zip(ready, places):
        got = [replies[r][i] for r, i in where]
        apply_outcome(result, conclude(result, prompted, [r if isinstance(r, str) else "" for r in got],
                                       [r if isinstance(r, LLMFailure) else None for r in got], plan.template_dir))
