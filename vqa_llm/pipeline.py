"""The VQA+LLM pipeline: image → caption + VLE top-k answers → prompt → LLM → parsed final answer.

    >>> pipe = VQALLMPipeline.from_profile(resolve_profile("bundled")[0])
    >>> pipe.run("photo.jpg", "What colour is the shape?").answer
    >>> for update in pipe.stream("photo.jpg", "Which shape is it?"): ...   # "vqa", "llm"..., "done"

Each image is normalised once (:func:`vle.image_io.load_image`) and hashed; its caption and its VLE image-side
encoding are cached per hash (:class:`~vqa_llm.cache.ImageCache`), so a further question about the same image
runs neither the captioner nor the vision encoder. LLM failures never lose the VQA work: the result keeps the
caption and candidates, ``error`` says what happened and the answer falls back to the VQA top-1.

The ``fewshot`` template (Prophet-style) needs an example bank (:mod:`vqa_llm.fewshot`): each question gets the
bank entries nearest to VLE's fused representation of it as solved examples, ``runs`` prompts with disjoint
example sets are answered, and their answers are voted (``result.runs``, ``result.votes``).

The class is a thin front over the stages of :mod:`vqa_llm.stages` (prepare, VQA, LLM), which ``run``,
``stream`` and ``run_batch`` share.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from captioner import BlipCaptioner
from llm import ChatLLM
from vle import VLEForVQA
from vle.image_io import ImageSource
from vle.processing_vle import VLEProcessor

from .cache import ImageCache
from .errors import BadSettingError
from .fewshot import DEFAULT_N_EXAMPLES, DEFAULT_RUNS, FEWSHOT_TEMPLATE
from .fewshot.locate import open_example_bank
from .inputs import clean_question
from .loading import load_components
from .profiles import Profile
from .result import QuestionEncoding, VQALLMResult, VQALLMUpdate
from .stages import Clock, LLMCalls, Request, Settings, VLEParts
from .stages.llm import batch_llm, fewshot_examples, stream_llm
from .stages.prepare import BankSource, Context, pair_up, prepare, read_images
from .stages.vqa import Images, VQAOutcome, caption_only, run_vqa

SCORE_FUNCTIONS = ("softmax", "sigmoid")
DEFAULT_LLM_TIMEOUT_S = 60.0


class VQALLMPipeline:
    """Answers questions about images with a VLE VQA model, a BLIP captioner and a chat LLM.

    Args:
        vqa_model: a :class:`vle.VLEForVQA` (its ``config.id2label`` names the answers).
        processor: the model's :class:`vle.processing_vle.VLEProcessor`.
        captioner: a :class:`captioner.BlipCaptioner`, or ``None`` (empty captions).
        llm: a :class:`llm.ChatLLM`, or ``None`` (raw VQA answers only).
        cache: the per-image cache (a fresh :class:`ImageCache` by default).
        llm_timeout: seconds one LLM reply may take (``None``: unbounded).
        model_ids: ids reported in results (``{"vqa", "captioner", "llm"}``); read from the models when omitted.
        score_function: ``"softmax"`` over all answers (as the original VLE demo) or ``"sigmoid"`` per answer.
        example_bank: the example bank (or its folder) of the ``fewshot`` template; calls may pass their own.
    """

    def __init__(self, vqa_model: VLEForVQA, processor: VLEProcessor, captioner: BlipCaptioner | None = None,
                 llm: ChatLLM | None = None, *, cache: ImageCache | None = None,
                 llm_timeout: float | None = DEFAULT_LLM_TIMEOUT_S, model_ids: dict[str, str | None] | None = None,
                 score_function: str = "softmax", example_bank: BankSource | None = None):
        if score_function not in SCORE_FUNCTIONS:
            raise BadSettingError(f"score_function must be one of {SCORE_FUNCTIONS}, got {score_function!r}.")
        if llm_timeout is not None and llm_timeout <= 0:
            raise BadSettingError(f"llm_timeout must be a positive number of seconds, got {llm_timeout!r}.")
        self.vqa_model = vqa_model.eval()
        self.processor = processor
        self.captioner = captioner
        self.llm = llm
        self.cache = cache if cache is not None else ImageCache()
        self.llm_timeout = llm_timeout
        self.score_function = score_function
        self.model_ids = {
            "vqa": getattr(vqa_model.config, "_name_or_path", None) or type(vqa_model).__name__,
            "captioner": getattr(captioner, "model_id", None) if captioner is not None else None,
            "llm": getattr(llm, "model_id", None) if llm is not None else None,
        }
        self.model_ids.update(model_ids or {})
        self.id2label = {int(k): str(v) for k, v in vqa_model.config.id2label.items()}
        self.example_bank = open_example_bank(example_bank) if example_bank is not None else None
        self._llm_calls = LLMCalls(llm) if llm is not None else None
        self._vle_lock = threading.Lock()  # concurrent requests take turns on the captioner and VLE

    @classmethod
    def from_profile(cls, profile: Profile, use_llm: bool = True, *, use_captioner: bool = True,
                     cache: ImageCache | None = None, llm_timeout: float | None = DEFAULT_LLM_TIMEOUT_S,
                     score_function: str = "softmax", example_bank: BankSource | None = None) -> "VQALLMPipeline":
        """Load the profile's models (each once, progress logged) and build the pipeline.

        The LLM is loaded only when ``use_llm`` and ``profile.use_llm``. Raises ModelUnavailableError naming
        the model path/file when one cannot be loaded; ExampleBankError when ``example_bank`` is unusable.
        """
        bank = open_example_bank(example_bank) if example_bank is not None else None
        parts = load_components(profile, use_llm=use_llm, use_captioner=use_captioner)
        return cls(parts.vqa_model, parts.processor, parts.captioner, parts.llm, cache=cache,
                   llm_timeout=llm_timeout, model_ids=parts.model_ids, score_function=score_function,
                   example_bank=bank)

    @property
    def num_labels(self) -> int:
        """Size of the VQA answer vocabulary."""
        return len(self.id2label)

    # ---------------------------------------------------------------------------------------- stages
    def _prepare(self, settings: Settings) -> Request:
        """Stage 1 (see :mod:`vqa_llm.stages.prepare`) with what this pipeline brings."""
        width = 2 * int(self.vqa_model.config.hidden_size)
        return prepare(settings, Context(self.llm, self.num_labels, self.llm_timeout, self.example_bank, width,
                                         str(self.model_ids["vqa"])))

    def _vle_stage(self, stage: Callable[..., Any], *args: Any) -> Any:
        """``stage(parts, *args)`` with this pipeline's VLE models, captioner and cache, one call at a time (two
        forward passes at once would only share the same cores)."""
        parts = VLEParts(self.vqa_model, self.processor, self.captioner, self.cache, self.id2label,
                         self.score_function)
        with self._vle_lock:
            return stage(parts, *args)

    def _vqa(self, images: Images, questions: list[str], top_k: int, clock: Clock) -> VQAOutcome:
        """Stage 2: the VQA outcome of ``questions`` about ``images``, its timings added to ``clock``."""
        outcome = self._vle_stage(run_vqa, images, questions, top_k)
        for stage, seconds in outcome.timings.items():
            clock.add(stage, seconds)
        return outcome

    @property
    def _calls(self) -> LLMCalls:
        if self._llm_calls is None or self._llm_calls.llm is not self.llm:
            self._llm_calls = LLMCalls(self.llm)
        return self._llm_calls

    def _results(self, questions: Sequence[tuple[str, list[str]]], vqa: VQAOutcome, keys: Sequence[str],
                 request: Request) -> list[VQALLMResult]:
        """One result per (question, its notes), filled with the VQA outcome."""
        return [VQALLMResult(question=q, caption=caption, candidates=candidates, template=request.template,
                             top_k=request.top_k, timings={}, cache_hit=hit, models=dict(self.model_ids),
                             image_hash=key, notes=notes + list(request.notes))
                for (q, notes), caption, candidates, hit, key
                in zip(questions, vqa.captions, vqa.candidates, vqa.hits, keys)]

    # ------------------------------------------------------------------------------------ public API
    def caption(self, image: ImageSource) -> str:
        """The caption of ``image`` ("" without a captioner), from the per-image cache when known.

        Only the captioner runs (not the vision encoder). Raises BadImageError when the image is unreadable.
        """
        (pil,), (key,) = read_images([image], None)
        return self._vle_stage(caption_only, pil, key)

    def stream(self, image: ImageSource, question: str, top_k: int = 5, use_llm: bool = True,
               template: str = "short", *, describe_image: bool = True, runs: int = DEFAULT_RUNS,
               n_examples: int = DEFAULT_N_EXAMPLES, example_bank: BankSource | None = None,
               **llm_opts: Any) -> Iterator[VQALLMUpdate]:
        """Answer ``question`` about ``image`` step by step.

        Yields a ``"vqa"`` update as soon as the caption and the candidates exist, then ``"llm"`` updates with
        the reply so far (when the LLM runs), then ``"done"`` with the final result. ``llm_opts``:
        ``max_new_tokens``, ``temperature``, ``top_p``, ``timeout``. ``describe_image=False`` skips the caption.
        With ``template="fewshot"``: ``n_examples`` solved examples per prompt from ``example_bank`` (default:
        the pipeline's), ``runs`` prompts with disjoint examples, streamed one after the other, then voted.
        Raises (on the first iteration) BadImageError, BadQuestionError or BadSettingError for bad inputs.
        """
        started = time.perf_counter()
        clock = Clock()
        cleaned = clean_question(question)
        request = self._prepare(Settings(top_k, use_llm, template, describe_image, runs, n_examples, example_bank,
                                         llm_opts))
        with clock("load_image"):
            pils, keys = read_images([image], None)
        vqa = self._vqa(Images(pils, keys, request.describe), [cleaned[0]], request.top_k, clock)
        (result,) = self._results([cleaned], vqa, keys, request)
        result.timings = clock.timings
        yield VQALLMUpdate("vqa", result)
        if request.llm is not None:
            examples = fewshot_examples(request.llm, vqa, keys, request.top_k, clock)
            yield from stream_llm(result, self._calls, request.llm, clock,
                                  examples[0] if examples is not None else None)
        clock.timings["total"] = time.perf_counter() - started
        yield VQALLMUpdate("done", result, text=result.llm_reply)

    def run(self, image: ImageSource, question: str, top_k: int = 5, use_llm: bool = True, template: str = "short",
            *, describe_image: bool = True, runs: int = DEFAULT_RUNS, n_examples: int = DEFAULT_N_EXAMPLES,
            example_bank: BankSource | None = None, **llm_opts: Any) -> VQALLMResult:
        """Answer ``question`` about ``image``; the final result of :meth:`stream`."""
        result = None
        for update in self.stream(image, question, top_k=top_k, use_llm=use_llm, template=template,
                                  describe_image=describe_image, runs=runs, n_examples=n_examples,
                                  example_bank=example_bank, **llm_opts):
            result = update.result
        assert result is not None
        return result

    def run_batch(self, images: Sequence[ImageSource], questions: Sequence[str], top_k: int = 5,
                  use_llm: bool = True, template: str = "short", batch_size: int = 16, *,
                  describe_image: bool = True, runs: int = DEFAULT_RUNS, n_examples: int = DEFAULT_N_EXAMPLES,
                  example_bank: BankSource | None = None, **llm_opts: Any) -> list[VQALLMResult]:
        """Answer ``questions[i]`` about ``images[i]`` for all ``i`` (one image may serve all questions).

        Works ``batch_size`` questions at a time: the captioner and the vision encoder run batched over the
        distinct uncached images of the chunk, VLE fusion runs as one batch, and the LLM answers through
        ``generate_batch`` (when a whole batch fails for a reason other than a timeout, its chats are retried
        one by one so one bad chat cannot sink the others). Timings of batched stages are shared equally
        among the chunk's results; ``cache_hit`` is per image. The few-shot options are those of
        :meth:`stream`; each voting run of a chunk is one ``generate_batch`` call.
        """
        images, questions = pair_up(images, questions, batch_size)
        request = self._prepare(Settings(top_k, use_llm, template, describe_image, runs, n_examples, example_bank,
                                         llm_opts))
        cleaned = [clean_question(q) for q in questions]
        results: list[VQALLMResult] = []
        for start in range(0, len(questions), batch_size):
            chunk = range(start, min(start + batch_size, len(questions)))
            results += self._run_chunk([images[i] for i in chunk], [cleaned[i] for i in chunk], list(chunk),
                                       request, batch_size)
        return results

    def _run_chunk(self, images: list[ImageSource], cleaned: list[tuple[str, list[str]]], indices: list[int],
                   request: Request, batch_size: int) -> list[VQALLMResult]:
        """:meth:`run_batch` for one chunk of questions (``indices`` name their images in error messages)."""
        started = time.perf_counter()
        clock = Clock()
        with clock("load_image"):
            pils, keys = read_images(images, indices)
        vqa = self._vqa(Images(pils, keys, request.describe, batch_size=batch_size), [q for q, _ in cleaned],
                        request.top_k, clock)
        results = self._results(cleaned, vqa, keys, request)
        if request.llm is not None:
            examples = fewshot_examples(request.llm, vqa, keys, request.top_k, clock)
            batch_llm(results, self._calls, request.llm, clock, examples)
        clock.timings["total"] = time.perf_counter() - started
        share = 1.0 / len(results)
        for result in results:
            result.timings = {stage: seconds * share for stage, seconds in clock.timings.items()}
        return results

    def encode_questions(self, images: Sequence[ImageSource], questions: Sequence[str], top_k: int = 5,
                         batch_size: int = 16, *, describe_image: bool = True) -> list[QuestionEncoding]:
        """VLE's view of each (``images[i]``, ``questions[i]``), without the LLM: caption, top-``top_k``
        candidates, fused representation (L2-normalised) and answer-score vector. One image may serve all
        questions; captions and image encodings come from (and go to) the per-image cache. Used to build
        few-shot example banks. Raises BadImageError, BadQuestionError or BadSettingError for bad inputs.
        """
        images, questions = pair_up(images, questions, batch_size)
        request = self._prepare(Settings(top_k, use_llm=False))
        encodings: list[QuestionEncoding] = []
        for start in range(0, len(questions), batch_size):
            chunk = range(start, min(start + batch_size, len(questions)))
            texts = [clean_question(questions[i])[0] for i in chunk]
            pils, keys = read_images([images[i] for i in chunk], list(chunk))
            vqa = self._vqa(Images(pils, keys, describe_image, batch_size=batch_size), texts, request.top_k, Clock())
            encodings += [QuestionEncoding(question=q, caption=c, candidates=cands, fused=f, scores=s, image_hash=k)
                          for q, c, cands, f, s, k in zip(texts, vqa.captions, vqa.candidates, vqa.fused, vqa.scores,
                                                          keys)]
        return encodings


__all__ = ["FEWSHOT_TEMPLATE", "SCORE_FUNCTIONS", "VQALLMPipeline"]
