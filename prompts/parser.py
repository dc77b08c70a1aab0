"""Parsing an LLM reply into the final answer (and explanation).

For ``short`` templates the parser looks, in order, for an ``Answer:`` label, then (a reply without the
label) a first line that is a bare answer: a letter (``B`` / ``(B)`` / ``option B`` → the second candidate),
a candidate, or a free answer of at most three words. A reply that does not follow the template
otherwise (a sentence without the label), that repeats the prompt's candidate list, or that echoes the prompt
falls back to the top candidate with ``fallback=True`` and ``problem`` saying why; so does an empty reply. For
``long`` templates the answer is the reply's last sentence, the sentences before it the explanation (a reply
may reason first, :func:`split_long_reply`), and ``short`` is the short answer that sentence gives
(:func:`answer_in_sentence`), which is what is compared with the VQA answer and scored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .render import LETTERS, check_candidates, one_line
from .templates import template_kind

MAX_FREE_WORDS = 6
#: longest reply without an "Answer:" label that still counts as a bare short answer (the templates ask for 1-3)
MAX_BARE_WORDS = 3
# a candidate line as the prompt renders it ("B. dark blue (0.12)"), and the prompt's own labels and tags
_CANDIDATE_LINE = re.compile(r"^\s*(?:[A-Z][.)]|-)\s+[^\n]*\(\s*[01](?:\.\d+)?\s*\)\s*$", re.MULTILINE)
_PROMPT_ECHO = re.compile(r"<\s*/?\s*question\s*>|^\s*(?:caption|candidates|candidate answers)\b[^\n]*:",
                          re.IGNORECASE | re.MULTILINE)
_TRAILING_SCORE = re.compile(r"\s*\(\s*[01](?:\.\d+)?\s*\)\s*$")
ECHO_PROBLEM = "the reply repeated the prompt (its candidate list or labels) instead of answering"
OFF_TEMPLATE_PROBLEM = "the reply did not follow the template's 'Answer: ...' format"
_ANSWER_LABEL = re.compile(r"(?:final\s+|short\s+)?answer\s*[:：]", re.IGNORECASE)
_EXPLANATION_LABEL = re.compile(r"(?:explanation|reason(?:ing)?|because)\s*[:：]", re.IGNORECASE)
_LETTER = re.compile(r"^(?:option|choice|candidate)?\s*[(\[]?([A-Za-z])[)\].:]?$", re.IGNORECASE)
_LETTER_PREFIX = re.compile(r"^[(\[]?([A-Z])[)\].:]\s+(.+)$")
_WRAPPERS = "\"'`*_“”‘’«»<> \t"
_TRAILING = ".,;:!?。"


@dataclass
class ParsedAnswer:
    """What the parser made of a reply.

    ``source`` says how the answer was found: ``label`` (after "Answer:"), ``letter`` (a candidate
    letter), ``candidate`` (a candidate named in the reply), ``free`` (the reply's own short answer,
    or the sentence of a long template) or ``fallback`` (reply unusable: top candidate, ``fallback=True``).
    ``short``: long templates only, the short answer the sentence gives (``None`` when it names no candidate
    and says neither yes nor no); see :attr:`short_answer`.
    """

    answer: str
    explanation: str
    fallback: bool
    source: str
    short: str | None = None
    #: why the reply was not used (``fallback`` replies only; ``None`` for an empty reply)
    problem: str | None = None

    @property
    def short_answer(self) -> str:
        """The answer as a short VQA answer (what is compared and scored): ``short`` when a long template's
        sentence gave one, else ``answer``."""
        return self.short if self.short is not None else self.answer


def _clean(text: str) -> str:
    """Collapse whitespace, strip wrapping quotes/markdown and trailing punctuation; keep the case."""
    text = one_line(text)
    previous = None
    while text != previous:
        previous = text
        text = text.strip(_WRAPPERS).rstrip(_TRAILING)
    return text


def normalise(text: str) -> str:
    """:func:`_clean`, lower-cased: how answers are compared."""
    return _clean(text).lower()


def _match_candidate(text: str, candidates: list[tuple[str, float]]) -> tuple[str, str] | None:
    """(candidate, source) when ``text`` is a letter or equals a candidate, else None."""
    cleaned = _clean(text)
    letter = _LETTER.match(cleaned)
    if letter and cleaned.lower() not in {normalise(c) for c, _ in candidates}:
        index = LETTERS.find(letter.group(1).upper())
        if 0 <= index < len(candidates):
            return candidates[index][0], "letter"
    prefixed = _LETTER_PREFIX.match(cleaned)
    if prefixed:
        index = LETTERS.find(prefixed.group(1))
        if 0 <= index < len(candidates) and normalise(prefixed.group(2)) == normalise(candidates[index][0]):
            return candidates[index][0], "letter"
    for cand, _ in candidates:
        if normalise(cand) == normalise(cleaned):
            return cand, "candidate"
    return None


def _find_word(words: str, text: str) -> re.Match | None:
    """Where ``words`` stand in ``text`` as whole words (not inside a longer word), or None."""
    return re.search(r"(?<!\w)" + re.escape(words) + r"(?!\w)", text)


def _mentioned_candidate(text: str, candidates: list[tuple[str, float]]) -> str | None:
    """The candidate named earliest in ``text`` as whole words (longest wins on ties), else None."""
    low = one_line(text).lower()
    best = None
    for cand, _ in candidates:
        c = normalise(cand)
        if not c:
            continue
        m = _find_word(c, low)
        if m and (best is None or (m.start(), -len(c)) < (best[0], -len(best[1]))):
            best = (m.start(), c, cand)
    return best[2] if best else None


def _leading_candidate(text: str, candidates: list[tuple[str, float]]) -> str | None:
    """The longest candidate that ``text`` starts with as whole words ("dark blue, probably" → "dark blue")."""
    low = normalise(text)
    for cand, _ in sorted(candidates, key=lambda c: -len(c[0])):
        c = normalise(cand)
        if c and re.match(re.escape(c) + r"(?!\w)", low):
            return cand
    return None


_NEGATION = re.compile(r"\b(?:no|not|none|nothing|neither|nor|never)\b|n't\b", re.IGNORECASE)
_YES_NO = ("yes", "no")
_STATED_ANSWER = re.compile(r"\banswer\s+(?:is|would\s+be)\s*[:：]?\s+|\banswer\s*[:：]\s*", re.IGNORECASE)


def _stated_answer(sentence: str, candidates: list[tuple[str, float]]) -> str | None:
    """The candidate (or yes/no) a sentence states as its answer ("..., so the answer is yes."), the last such
    statement winning; None when it states none."""
    text = one_line(sentence)
    for m in reversed(list(_STATED_ANSWER.finditer(text))):
        stated = _leading_candidate(text[m.end():], [*candidates, *((w, 0.0) for w in _YES_NO)])
        if stated is not None:
            return stated
    return None


def answer_in_sentence(sentence: str, question: str, candidates: Sequence[tuple[str, float]]) -> str | None:
    """The short answer a free-form sentence gives, read against the VQA candidates.

    A sentence that states its answer ("..., so the answer is yes.") gives that candidate, or yes or no, whatever
    it names before (a sentence that works the answer out quotes the evidence first). Otherwise: the earliest
    candidate the sentence names that the question does not already name ("The red shape is a triangle." answers
    "what is the red shape?" with "triangle", not "red"; yes and no always count); when it names only such
    candidates, the earliest of those. When the VQA model reads the question as yes/no (its top
    candidate is yes or no) and the sentence says neither, a negation ("does not contain ...") means "no", else
    "yes".
    ``None`` when none of this applies.
    """
    cands = check_candidates(candidates)
    stated = _stated_answer(sentence, cands)
    if stated is not None:
        return stated
    asked = one_line(question).lower()
    fresh = [c for c in cands if normalise(c[0]) in _YES_NO  # "is no red shape present?" still takes "no"
             or not _find_word(normalise(c[0]), asked)]
    named = _mentioned_candidate(sentence, fresh) if fresh else None
    if named is not None:
        return named
    if cands and normalise(cands[0][0]) in _YES_NO:
        return "no" if _NEGATION.search(sentence) else "yes"
    return _mentioned_candidate(sentence, cands)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'“‘(]?[A-Z])")


def split_long_reply(reply: str) -> tuple[str, str]:
    """``(explanation, answer sentence)`` of a ``long`` reply: its last sentence is the answer (what the app shows
    and the parser reads), the sentences before it, if any, the reasoning that led there. A sentence ends in
    . ! or ? before a capital letter, so "scores 0.91, below 1.00; ..." stays whole."""
    sentences = [part for part in _SENTENCE_END.split(one_line(reply)) if part.strip()]
    if not sentences:
        return "", ""
    return " ".join(sentences[:-1]), sentences[-1]


def is_echo(reply: str) -> bool:
    """True when ``reply`` repeats the prompt: a rendered candidate line ("A. green (1.00)"), the
    ``<question>`` tags, or a "Caption:"/"Candidates:" label."""
    return bool(_CANDIDATE_LINE.search(reply or "") or _PROMPT_ECHO.search(reply or ""))


def _fallback(candidates: list[tuple[str, float]], problem: str | None = None, kind: str = "short") -> "ParsedAnswer":
    top = candidates[0][0] if candidates else ""
    return ParsedAnswer(answer=top, explanation="", fallback=True, source="fallback",
                        short=top if kind == "long" else None, problem=problem)


def _split_label(reply: str) -> tuple[str | None, str]:
    """(text after the first "Answer:" label up to its line end, explanation) from a reply."""
    m = _ANSWER_LABEL.search(reply)
    if not m:
        return None, ""
    rest = reply[m.end() :]
    stop = _EXPLANATION_LABEL.search(rest)
    line_end = rest.find("\n")
    cut = min(x for x in (stop.start() if stop else len(rest), line_end if line_end >= 0 else len(rest)))
    answer = rest[:cut]
    expl_m = _EXPLANATION_LABEL.search(reply)
    if expl_m and expl_m.start() < m.start():  # explanation first, then the answer line
        explanation = reply[expl_m.end() : m.start()] + " " + rest[cut:]
    elif expl_m:
        explanation = reply[expl_m.end() :]
    else:
        explanation = reply[: m.start()] + " " + rest[cut:]
    return answer, one_line(explanation)


def parse_answer(
    reply: str,
    candidates: Sequence[tuple[str, float]],
    template: str = "short",
    directory: str | Path | None = None,
    question: str = "",
) -> ParsedAnswer:
    """Turn an LLM ``reply`` into a :class:`ParsedAnswer`, using ``candidates`` (best first) to resolve it.

    ``template`` is a template name or kind (``"short"``/``"long"``): for long templates the answer is
    the reply's last sentence, the explanation the sentences before it (:func:`split_long_reply`) and ``short``
    :func:`answer_in_sentence` of that sentence, or of the whole reply when the sentence names no answer
    (``question`` helps there). ``directory`` is where custom templates live.
    """
    cands = check_candidates(candidates)
    reply = reply or ""
    kind = template_kind(template, directory)
    if not reply.strip():
        return _fallback(cands, kind=kind)
    if is_echo(reply):
        return _fallback(cands, problem=ECHO_PROBLEM, kind=kind)
    if kind == "long":
        explanation, sentence = split_long_reply(reply)
        short = answer_in_sentence(sentence, question, cands)
        if short is None and explanation:  # an answer sentence that names nothing: what the whole reply gives
            short = answer_in_sentence(one_line(reply), question, cands)
        return ParsedAnswer(sentence, explanation, False, "free", short=short)

    labelled, explanation = _split_label(reply)
    if labelled is not None:
        labelled = _TRAILING_SCORE.sub("", labelled)
        if not _clean(labelled):
            mentioned = _mentioned_candidate(explanation, cands)
            if mentioned is not None:
                return ParsedAnswer(mentioned, explanation, False, "candidate")
            return _fallback(cands, problem=OFF_TEMPLATE_PROBLEM)
        found = _match_candidate(labelled, cands)
        if found is not None:
            answer, how = found
            return ParsedAnswer(answer, explanation, False, "letter" if how == "letter" else "label")
        leading = _leading_candidate(labelled, cands)
        if leading is not None:
            return ParsedAnswer(leading, explanation, False, "label")
        answer = _clean(re.split(r"(?<=[.!?])\s", labelled.strip(), maxsplit=1)[0])
        return ParsedAnswer(answer, explanation, False, "label")

    text = reply.strip()
    first_line = next(line for line in text.splitlines() if line.strip())
    explanation = one_line(text[text.find(first_line) + len(first_line) :])
    found = _match_candidate(first_line, cands)
    if found is not None:
        return ParsedAnswer(found[0], explanation, False, found[1])
    # Fix (refiner issue): a sentence without the label used to be read for any candidate it named ("A circle
    # is not a circle." -> "circle"); only a bare answer of at most three words is taken now.
    free = _clean(re.split(r"(?<=[.!?])\s", first_line.strip(), maxsplit=1)[0])
    if free and len(free.split()) <= MAX_BARE_WORDS:
        return ParsedAnswer(free, explanation, False, "free")
    return _fallback(cands, problem=OFF_TEMPLATE_PROBLEM)  # an unused reply is no explanation of VLE's answer
