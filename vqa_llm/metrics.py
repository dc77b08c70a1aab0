"""The official VQAv2 accuracy metric, reproduced result for result.

Reference: ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` of GT-Vision-Lab/VQA (current master,
the revision the VQA evaluation server and most papers use). This module is a re-implementation of
its per-question rules, quirks included, so that numbers computed here equal the official ones:

* Cleaning: newlines and tabs become spaces, then the text is stripped (answers and prediction).
* Normalisation (:func:`normalize_answer`) = punctuation step, then digit/article step.
* Normalisation is applied to the answers **and** the prediction only when the cleaned human answers
  are not all identical; when they are, the cleaned prediction is compared as it is (so ``"Yes"``
  scores 0 against ten ``"yes"``).
* Accuracy is the leave-one-annotator-out average of ``min(1, matches among the others / 3)``.
* Aggregates are percentages rounded to 2 digits (:func:`summarise_accuracy`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "ARTICLES",
    "CONTRACTIONS",
    "NUMBER_WORDS",
    "PUNCTUATION",
    "AccuracyReport",
    "normalize_answer",
    "summarise_accuracy",
    "vqa_accuracy",
]

# Marks handled one by one by the punctuation step (the period has its own rule). Note that the
# official list has neither the apostrophe nor the colon: "it's" and "10:30" keep them.
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
    ">", "<", "@", "`", ",", "?", "!",
)

NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# The official contractions map, entry for entry. Its oddities are kept on purpose: keys with
# capitals ("Im", "Ive", "Id've", "I'dve") can never match (words are lower-cased first), a few
# entries map a word to itself ("let's", "she's"), and "somebody'd" maps to "somebodyd".
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}

# "digit , digit" anywhere in the text switches every mark to deletion.
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a negative *lookahead* for the
# literal "<=" + digit (a typo for a lookbehind), which can never match where a "." stands, so the
# pattern is exactly "a period not followed by a digit". Periods after a digit are removed too.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The official call is periodStrip.sub("", text, re.UNICODE): re.UNICODE (== 32) lands in the
# `count` argument, so at most 32 periods are removed.
_OFFICIAL_PERIOD_COUNT = int(re.UNICODE)

# Number of matching other annotators that gives full credit.
_MATCHES_FOR_FULL_CREDIT = 3


def _clean(text: str) -> str:
    """Newlines and tabs to spaces, then strip (the official first step)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def _process_punctuation(text: str) -> str:
    """The official ``processPunctuation``.

    Each mark of :data:`PUNCTUATION` is deleted when, in the *input* text, it has a space right after
    or right before it, or when the input contains digit-comma-digit anywhere; otherwise it is
    replaced by a space. Then periods not followed by a digit are deleted (at most 32 of them).
    """
    has_digit_comma_digit = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if has_digit_comma_digit or f"{mark} " in text or f" {mark}" in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_OFFICIAL_PERIOD_COUNT)


def _process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``.

    Lower-case, split on whitespace, map number words to digits, drop articles (after the number
    mapping), then map contractions word by word, and re-join with single spaces.
    """
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
    """Normalise an answer exactly as the official VQA evaluation does.

    Steps: newlines/tabs to spaces and strip; punctuation (see :func:`_process_punctuation`);
    lower-case, number words to digits, articles dropped, contractions mapped.

    Examples: ``"Two dogs."`` -> ``"2 dogs"``; ``"the man's hat"`` -> ``"man's hat"``;
    ``"1,000"`` -> ``"1000"``; ``"black-and-white"`` -> ``"black and white"``.
    """
    return _process_digit_article(_process_punctuation(_clean(text)))


def vqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """Official VQA accuracy of one predicted answer against the human answers, in ``[0, 1]``.

    For each human answer left out in turn, the score is ``min(1, n / 3)`` with ``n`` the number of
    the *other* answers equal to the prediction; the result is the mean over the left-out answers.
    With ten answers: 1 match -> 0.3, 2 -> 0.6, 3 -> 0.9, 4 or more -> 1.0.

    As in the official code, answers and prediction are first cleaned (newlines/tabs to spaces,
    strip); then **only if the cleaned answers are not all identical** are both the answers and the
    prediction passed through :func:`normalize_answer`. When all answers are identical the cleaned
    prediction is compared as it is, so ``"Yes"`` or ``"yes."`` scores 0 against ten ``"yes"``.

    Fewer (or more) than ten answers use the same leave-one-out formula over the answers given
    (e.g. five answers, all matching: each left-out one sees 4 matches -> 1.0; with two answers, one
    matching -> mean(1/3, 0) = 1/6). A single answer cannot be left out (the formula would give 0
    for every prediction), so it is scored as an exact match, 1.0 or 0.0, after the same cleaning.

    Raises:
        ValueError: ``gt_answers`` is empty (a question without annotations cannot be scored).
    """
    answers = [_clean(answer) for answer in gt_answers]
    if not answers:
        raise ValueError("vqa_accuracy needs at least one human answer; this question has none "
                         "(test-dev/test questions carry no annotations and cannot be scored locally).")
    predicted = _clean(prediction)
    if len(set(answers)) > 1:
        answers = [_process_digit_article(_process_punctuation(answer)) for answer in answers]
        predicted = _process_digit_article(_process_punctuation(predicted))
    if len(answers) == 1:
        return float(answers[0] == predicted)
    total_matches = sum(answer == predicted for answer in answers)
    per_left_out = [
        min(1, float(total_matches - (answer == predicted)) / _MATCHES_FOR_FULL_CREDIT)
        for answer in answers
    ]
    return float(sum(per_left_out)) / len(per_left_out)


@dataclass(frozen=True)
class AccuracyReport:
    """Aggregated VQA accuracy as the official tool reports it: percentages rounded to ``digits``."""

    overall: float
    per_question_type: dict[str, float] = field(default_factory=dict)
    per_answer_type: dict[str, float] = field(default_factory=dict)
    count: int = 0


def _percent(values: Sequence[float], digits: int) -> float:
    return round(100 * float(sum(values)) / len(values), digits)


def _by_group(accuracies: Sequence[float], groups: Sequence[str] | None, digits: int) -> dict[str, float]:
    if groups is None:
        return {}
    if len(groups) != len(accuracies):
        raise ValueError(f"got {len(accuracies)} accuracies but {len(groups)} group labels; "
                         "pass one label per question.")
    grouped: dict[str, list[float]] = defaultdict(list)
    for group, accuracy in zip(groups, accuracies):
        grouped[group].append(accuracy)
    return {group: _percent(values, digits) for group, values in grouped.items()}


def summarise_accuracy(
    accuracies: Sequence[float],
    question_types: Sequence[str] | None = None,
    answer_types: Sequence[str] | None = None,
    digits: int = 2,
) -> AccuracyReport:
    """Aggregate per-question accuracies (each in ``[0, 1]``, from :func:`vqa_accuracy`) like the
    official ``setAccuracy``: ``round(100 * mean, digits)`` overall, per question type and per answer
    type (groups in order of first appearance).

    Raises:
        ValueError: no accuracies, or a type list whose length differs from ``accuracies``.
    """
    if len(accuracies) == 0:
        raise ValueError("summarise_accuracy needs at least one scored question.")
    return AccuracyReport(
        overall=_percent(accuracies, digits),
        per_question_type=_by_group(accuracies, question_types, digits),
        per_answer_type=_by_group(accuracies, answer_types, digits),
        count=len(accuracies),
    )
