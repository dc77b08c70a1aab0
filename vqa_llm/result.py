"""What one question produces (:class:`VQALLMResult`) and the progress updates of a streamed run.

A result keeps everything a researcher wants to look at: the caption, the VQA candidates with scores,
the exact chat messages sent to the LLM, its raw reply and the parsed answer, per-stage timings and the
ids of the models used. ``to_dict()`` is JSON-serialisable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: keys of ``VQALLMResult.timings`` (seconds)
STAGES = ("load_image", "caption", "vision_encode", "vqa_fusion", "prompt", "llm", "total")
UPDATE_STAGES = ("vqa", "llm", "done")


def empty_timings() -> dict[str, float]:
    """A timings dict with every stage at 0.0."""
    return dict.fromkeys(STAGES, 0.0)


@dataclass
class VQALLMResult:
    """The outcome of one (image, question).

    ``candidates`` are the VQA model's top-k ``(answer, score)``, best first. ``llm_answer`` is the parsed LLM
    answer (``None`` when the LLM was not used); when the LLM failed or its reply was unusable it falls back to
    the VQA top-1 and ``llm_fallback`` is True. ``llm_short_answer`` (long templates only, else ``None``): the
    short answer that the LLM's sentence gives (see :func:`prompts.parser.answer_in_sentence`);
    :attr:`scored_answer` is what is compared and scored. ``changed``: the scored answer differs from the VQA
    top-1 after VQA answer normalisation. ``error``: why the LLM failed (the VQA fields are still filled).
    ``cache_hit``: the caption and the image encoding came from the per-image cache.
    ``notes``: adjustments made to the inputs (control characters removed, ``top_k`` clamped, ...).
    ``runs`` (``fewshot`` template only): one dict per voting run: ``examples`` (bank ids, most similar
    first), ``similarities``, ``dropped`` (examples left out to fit the LLM's context), ``reply``, ``answer``
    (``None`` when the run gave none) and ``error``; ``votes``: normalised answer -> number of runs.
    """

    question: str
    caption: str
    candidates: list[tuple[str, float]]
    template: str
    top_k: int
    messages: list[dict[str, str]] = field(default_factory=list)
    llm_reply: str = ""
    llm_answer: str | None = None
    llm_short_answer: str | None = None
    llm_explanation: str = ""
    llm_fallback: bool = False
    llm_used: bool = False
    changed: bool = False
    error: str | None = None
    timings: dict[str, float] = field(default_factory=empty_timings)
    cache_hit: bool = False
    models: dict[str, str | None] = field(default_factory=dict)
    image_hash: str = ""
    notes: list[str] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    votes: dict[str, int] = field(default_factory=dict)

    @property
    def vqa_answer(self) -> str:
        """The VQA model's top-1 answer ("" when there are no candidates)."""
        return self.candidates[0][0] if self.candidates else ""

    @property
    def scored_answer(self) -> str | None:
        """The LLM's answer as a short VQA answer: ``llm_short_answer`` when a long template's sentence gave one,
        else ``llm_answer`` (``None`` when the LLM was not used)."""
        return self.llm_short_answer if self.llm_short_answer is not None else self.llm_answer

    @property
    def answer(self) -> str:
        """The final answer to show: the LLM's when it was used, else the VQA top-1."""
        return self.llm_answer if self.llm_answer is not None else self.vqa_answer

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field, plus ``vqa_answer`` and ``answer``."""
        data = asdict(self)
        data["candidates"] = [[answer, float(score)] for answer, score in self.candidates]
        data["timings"] = {k: round(float(v), 6) for k, v in self.timings.items()}
        data["vqa_answer"] = self.vqa_answer
        data["answer"] = self.answer
        return data


@dataclass
class VQALLMUpdate:
    """One step of :meth:`VQALLMPipeline.stream`.

    ``stage``: ``"vqa"`` (caption and candidates are in ``result``), ``"llm"`` (``chunk`` is the new LLM text,
    ``text`` all of it so far), ``"done"`` (``result`` is final). ``result`` is the same object throughout,
    filled in as the run goes.
    """

    stage: str
    result: VQALLMResult
    text: str = ""
    chunk: str = ""


@dataclass
class QuestionEncoding:
    """VLE's view of one (image, question), without the LLM (:meth:`VQALLMPipeline.encode_questions`).

    ``fused``: VLE's fused representation (``pooler_output``, ``[2 * hidden]``), L2-normalised, float32 on
    the CPU; ``scores``: the answer-score vector (``[num_labels]``, softmax or sigmoid as the pipeline scores);
    ``image_hash``: SHA-256 of the normalised image.
    """

    question: str
    caption: str
    candidates: list[tuple[str, float]]
    fused: torch.Tensor
    scores: torch.Tensor
    image_hash: str
