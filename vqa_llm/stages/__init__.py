"""The VQA+LLM pipeline in stages, shared by :meth:`~vqa_llm.pipeline.VQALLMPipeline.run`, ``stream`` and
``run_batch``:

1. :mod:`.prepare` — the call's settings checked once (:class:`Request`) and its images read;
2. :mod:`.vqa` — caption + VLE image encoding (per-image cache), VLE fusion: a :class:`VQAOutcome`;
3. :mod:`.llm` — prompts, generation (streamed or batched), parsing and few-shot voting: an
   :class:`LLMOutcome`, written into the result in one place (:func:`apply_outcome`).

On a ZeroGPU Space the app runs a whole request, all stages, as one GPU call (:mod:`vqa_llm.zerogpu`).
"""

from .clock import Clock
from .llm import LLMCalls, LLMOutcome, apply_outcome
from .prepare import LLMPlan, Request, Settings
from .vqa import VLEParts, VQAOutcome

__all__ = ["Clock", "LLMCalls", "LLMOutcome", "LLMPlan", "Request", "Settings", "VLEParts", "VQAOutcome",
           "apply_outcome"]
