"""Building an example bank from answered training questions with the pipeline's VQA model and captioner.

Each question is run through :meth:`VQALLMPipeline.encode_questions` (caption, VLE top-k candidates, fused
representation); its record keeps the gold answer(s) and where it came from. Questions are processed grouped
by image, so each image is captioned and encoded once; the bank keeps the input order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from project_base.paths import portable_path
from vle.vqa_data import VQAExample

from .bank import ExampleBank, ExampleBankError, short_image_hash

if TYPE_CHECKING:
    from ..pipeline import VQALLMPipeline

DEFAULT_BANK_TOP_K = 10


def gold_answers(answers: Sequence[str]) -> list[str]:
    """The distinct human answers, most frequent first (ties in first-seen order)."""
    counts = Counter(answers)
    return sorted(counts, key=lambda answer: -counts[answer])


def build_bank(pipe: VQALLMPipeline, examples: Sequence[VQAExample], source: str, *,
               top_k: int = DEFAULT_BANK_TOP_K, batch_size: int = 32, with_scores: bool = False,
               progress: bool = True, extra_meta: dict[str, Any] | None = None) -> ExampleBank:
    """An :class:`ExampleBank` of ``examples`` (each needs its human answers), named ``source`` (e.g.
    ``easy-vqa/train``). ``with_scores`` also stores the answer-score vectors as a second key. Raises
    ExampleBankError when there are no examples or one has no answer."""
    if not examples:
        raise ExampleBankError("No questions to build an example bank from: check the dataset and --limit.")
    unanswered = [e.question_id for e in examples if not e.answers]
    if unanswered:
        raise ExampleBankError(f"{len(unanswered)} questions have no human answer (first: {unanswered[0]}); an "
                               "example bank needs an annotated training split.")
    order = sorted(range(len(examples)), key=lambda i: (examples[i].image_path, i))
    fused: list[torch.Tensor | None] = [None] * len(examples)
    scores: list[torch.Tensor | None] = [None] * len(examples)
    records: list[dict[str, Any] | None] = [None] * len(examples)
    with tqdm(total=len(examples), desc="example bank", unit="q", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            encodings = pipe.encode_questions([examples[i].image_path for i in chunk],
                                              [examples[i].question for i in chunk], top_k=top_k,
                                              batch_size=batch_size)
            for i, enc in zip(chunk, encodings):
                example = examples[i]
                answers = gold_answers(example.answers)
                fused[i], scores[i] = enc.fused, enc.scores
                records[i] = {
                    "id": f"{source}:{example.question_id}", "source": source,
                    "question_id": example.question_id, "image_id": example.image_id,
                    "image_hash": short_image_hash(enc.image_hash), "question": enc.question,
                    "caption": enc.caption,
                    "candidates": [[answer, round(float(score), 4)] for answer, score in enc.candidates],
                    "answer": answers[0], "answers": answers,
                }
            bar.update(len(chunk))
    keys = {"fused": torch.stack(fused).to(torch.float16)}  # type: ignore[arg-type]
    if with_scores:
        keys["scores"] = F.normalize(torch.stack(scores), dim=-1).to(torch.float16)  # type: ignore[arg-type]
    meta = {
        "source": source,
        "vqa_model": portable_path(pipe.model_ids.get("vqa")),
        "captioner": portable_path(pipe.model_ids.get("captioner")),
        "score_function": pipe.score_function,
        "top_k": top_k,
        "num_labels": pipe.num_labels,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra_meta or {}),
    }
    return ExampleBank(records=records, keys=keys, meta=meta)  # type: ignore[arg-type]
