"""One prediction record per question: what the pipeline produced, scored with the official VQA metric.

A record is a flat JSON object (one line of ``predictions.jsonl``)::

    question_id, image_id, image, question, answers, answer_type, question_type,
    candidates [[answer, score], ...], vqa_answer, caption,
    template, llm_reply, llm_answer, llm_explanation, llm_fallback, changed,
    raw_accuracy, llm_accuracy, error, timings {stage: seconds}

With the ``fewshot`` template a record also has ``runs`` (per voting run: ``examples`` — the example bank
ids used, most similar first —, their ``similarities``, ``dropped`` examples, the run's ``answer`` and
``error``) and ``votes`` (normalised answer -> number of runs).

``raw_accuracy`` scores the VQA top-1 (``vqa_answer``) and ``llm_accuracy`` the LLM's answer (``llm_answer``),
both with :func:`vqa_llm.metrics.vqa_accuracy` against ``answers``. With a ``long`` template the reply is a
sentence (``llm_reply``) and ``llm_answer`` is the short answer it gives (the candidate it names, or yes/no;
see :func:`prompts.parser.answer_in_sentence`), or the sentence itself when it gives none. Without the LLM the
``template`` and ``llm_*`` fields and ``changed`` are null. A question that could not be answered at all
(unreadable image) has no candidates, ``error`` says why, and it scores 0. The prompt itself is not stored: it is
``prompts.build_messages(template, caption, question, candidates)``.
"""

from __future__ import annotations

from typing import Any

from vle.vqa_data import VQAExample

from ..metrics import vqa_accuracy
from ..result import VQALLMResult

#: fields that hold measured times, which differ from run to run
TIMING_FIELDS = ("timings",)
#: what a record keeps of each few-shot run (the replies are in ``llm_reply``)
RUN_FIELDS = ("examples", "similarities", "dropped", "answer", "error")


def _base(example: VQAExample) -> dict[str, Any]:
    return {
        "question_id": example.question_id,
        "image_id": example.image_id,
        "image": example.image_path,
        "question": example.question,
        "answers": list(example.answers),
        "answer_type": example.answer_type,
        "question_type": example.question_type,
    }


def record_from_result(example: VQAExample, result: VQALLMResult, use_llm: bool) -> dict[str, Any]:
    """The record of one answered question. ``use_llm``: the LLM was asked (else its fields are null)."""
    record = _base(example)
    vqa_answer = result.vqa_answer
    llm_answer = result.scored_answer if use_llm else None  # long templates: the short answer of the sentence
    record.update({
        "candidates": [[answer, float(score)] for answer, score in result.candidates],
        "vqa_answer": vqa_answer,
        "caption": result.caption,
        "template": result.template if use_llm else None,
        "llm_reply": result.llm_reply if use_llm else None,
        "llm_answer": llm_answer,
        "llm_explanation": result.llm_explanation if use_llm else None,
        "llm_fallback": result.llm_fallback if use_llm else None,
        "changed": result.changed if use_llm else None,
        "raw_accuracy": vqa_accuracy(vqa_answer, example.answers),
        "llm_accuracy": vqa_accuracy(llm_answer, example.answers) if llm_answer is not None else None,
        "error": result.error,
        "timings": {stage: round(float(seconds), 6) for stage, seconds in result.timings.items()},
    })
    if use_llm and result.runs:
        record["runs"] = [{key: run.get(key) for key in RUN_FIELDS} for run in result.runs]
        record["votes"] = dict(result.votes)
    return record


def failed_record(example: VQAExample, error: str, use_llm: bool, template: str) -> dict[str, Any]:
    """The record of a question the pipeline could not answer (it scores 0; ``error`` says why)."""
    record = _base(example)
    record.update({
        "candidates": [],
        "vqa_answer": "",
        "caption": None,
        "template": template if use_llm else None,
        "llm_reply": None,
        "llm_answer": "" if use_llm else None,
        "llm_explanation": None,
        "llm_fallback": True if use_llm else None,
        "changed": False if use_llm else None,
        "raw_accuracy": 0.0,
        "llm_accuracy": 0.0 if use_llm else None,
        "error": error,
        "timings": {},
    })
    return record


def is_failed(record: dict[str, Any]) -> bool:
    """True for a question the pipeline could not answer at all (no VQA candidates)."""
    return not record.get("candidates")


def question_sort_key(question_id: Any) -> tuple[int, int, str]:
    """Sort key putting integer ids first (numerically), then any other ids (as text)."""
    if isinstance(question_id, int) and not isinstance(question_id, bool):
        return (0, question_id, "")
    return (1, 0, str(question_id))
