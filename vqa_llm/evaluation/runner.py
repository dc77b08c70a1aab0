"""Answering questions in batches through :meth:`VQALLMPipeline.run_batch` and writing their records.

A batch that raises a per-question error (an unreadable image, an unusable question) is split into single
questions, so only the bad question is recorded as failed; bad settings and model bugs still raise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from vle.vqa_data import VQADataError, VQAExample

from ..errors import BadImageError, BadQuestionError
from ..pipeline import VQALLMPipeline
from .records import failed_record, record_from_result
from .store import RecordWriter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnswerSettings:
    """How each question is answered (the same for every batch of a run)."""

    top_k: int = 5
    use_llm: bool = True
    template: str = "short"
    max_new_tokens: int = 64
    runs: int = 1
    n_examples: int = 8

    def llm_options(self) -> dict[str, Any]:
        """Generation options passed to the LLM (none without it)."""
        return {"max_new_tokens": self.max_new_tokens} if self.use_llm else {}


def answer_batch(pipe: VQALLMPipeline, examples: Sequence[VQAExample], settings: AnswerSettings,
                 batch_size: int) -> list[dict[str, Any]]:
    """The records of ``examples``, answered together by one ``run_batch`` call (in input order)."""
    use_llm = settings.use_llm and pipe.llm is not None
    try:
        results = pipe.run_batch([e.image_path for e in examples], [e.question for e in examples],
                                 top_k=settings.top_k, use_llm=use_llm, template=settings.template,
                                 batch_size=batch_size, runs=settings.runs, n_examples=settings.n_examples,
                                 **(settings.llm_options() if use_llm else {}))
    except (BadImageError, BadQuestionError, VQADataError) as exc:
        if len(examples) == 1:
            logger.warning("Question %s failed: %s", examples[0].question_id, exc)
            return [failed_record(examples[0], str(exc), use_llm, settings.template)]
        return [record for example in examples for record in answer_batch(pipe, [example], settings, batch_size)]
    return [record_from_result(e, r, use_llm) for e, r in zip(examples, results)]


def answer_all(pipe: VQALLMPipeline, examples: Sequence[VQAExample], settings: AnswerSettings,
               writer: RecordWriter, batch_size: int, *, progress: bool = True, description: str = "evaluating") -> int:
    """Answer ``examples`` ``batch_size`` at a time, appending each batch's records to ``writer`` as soon as
    it is done (durable before the next batch starts); return the number of records written."""
    written = 0
    with tqdm(total=len(examples), desc=description, unit="q", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(examples), batch_size):
            records = answer_batch(pipe, examples[start:start + batch_size], settings, batch_size)
            writer.write(records)
            written += len(records)
            bar.update(len(records))
    return written
