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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from captioner import BlipCaptioner
from llm import ChatLLM, GenerationOptions, LLMError
from llm.base import DEFAULT_MAX_NEW_TOKENS
from prompts import PromptError, build_fitted_messages, build_messages, parse_answer
from vle import VLEForVQA
from vle.image_io import ImageSource
from vle.pipeline_vle import top_answers
from vle.processing_vle import VLEProcessor

from .cache import CachedImage, ImageCache
from .errors import BadSettingError, LLMFailure
from .fewshot import (
    DEFAULT_N_EXAMPLES,
    DEFAULT_RUNS,
    FEWSHOT_TEMPLATE,
    ExampleBank,
    FewShotSettings,
    join_replies,
    plan_runs,
    run_header,
    vote,
)
from .fewshot.locate import check_bank_fits, open_example_bank
from .inputs import check_template, clamp_top_k, clean_question, read_image
from .llm_guard import generate_batch_with_deadline, stream_with_deadline
from .loading import load_components
from .metrics import normalize_answer
from .profiles import Profile
from .result import QuestionEncoding, VQALLMResult, VQALLMUpdate, empty_timings

logger = logging.getLogger(__name__)

SCORE_FUNCTIONS = ("softmax", "sigmoid")
DEFAULT_LLM_TIMEOUT_S = 60.0
BankSource = ExampleBank | str | Path


@dataclass
class _VQAOutput:
    """What one VLE fusion batch gives: top-k candidates, the fused representation (L2-normalised) and the
    answer-score vectors (both float32 on the CPU)."""

    candidates: list[list[tuple[str, float]]]
    fused: torch.Tensor
    scores: torch.Tensor


class _Clock:
    """Adds the seconds spent inside ``with clock("stage"):`` to ``timings[stage]``."""

    def __init__(self, timings: dict[str, float]):
        self.timings = timings
        self._stage = ""

    def __call__(self, stage: str) -> "_Clock":
        self._stage = stage
        return self

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self._stage] = self.timings.get(self._stage, 0.0) + time.perf_counter() - self._start


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

    # ------------------------------------------------------------------------------------- inputs
    def _llm_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Validated generation options for the LLM, with the pipeline's ``timeout`` unless one is given."""
        options = dict(options)
        options.setdefault("timeout", self.llm_timeout)
        try:
            GenerationOptions(**options)
        except TypeError as exc:
            raise BadSettingError(f"Unknown LLM option ({exc}): use max_new_tokens, temperature, top_p or timeout.") from exc
        except LLMError as exc:
            raise BadSettingError(str(exc)) from exc
        return options

    # ------------------------------------------------------------------------------- model stages
    @property
    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        param = next(self.vqa_model.parameters())
        return param.device, param.dtype

    @torch.inference_mode()
    def _encode_images(self, images: list[Image.Image], batch_size: int) -> list[torch.Tensor]:
        """VLE image-side encodings (``[1, tokens, hidden]`` each), ``batch_size`` images at a time."""
        device, dtype = self._device_dtype
        out: list[torch.Tensor] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            pixels = self.processor(images=chunk, return_tensors="pt")["pixel_values"].to(device, dtype)
            embeds = self.vqa_model.encode_image(pixels)
            out += [embeds] if len(chunk) == 1 else [e.unsqueeze(0).clone() for e in embeds]
        return out

    def _image_features(self, images: Sequence[Image.Image], keys: Sequence[str], describe: bool,
                        clock: _Clock, batch_size: int = 16, encode: bool = True) -> tuple[list[CachedImage], bool]:
        """Caption (when ``describe``) + encoding (when ``encode``) of each image, cached per hash; the distinct
        uncached images are computed in batches. Returns the entries in input order and whether everything
        came from the cache.
        """
        by_key = dict(zip(keys, images))
        want_caption = describe and self.captioner is not None
        cached = {k: self.cache.get(k, need_caption=want_caption, need_embeds=encode) for k in by_key}
        no_caption = [k for k, e in cached.items() if want_caption and (e is None or e.caption is None)]
        no_embeds = [k for k, e in cached.items() if encode and (e is None or e.image_embeds is None)]
        captions: dict[str, str] = {}
        embeds: dict[str, torch.Tensor] = {}
        if no_caption:
            with clock("caption"):
                texts = self.captioner.caption([by_key[k] for k in no_caption], batch_size=batch_size)
            captions = dict(zip(no_caption, texts))
        if no_embeds:
            with clock("vision_encode"):
                embeds = dict(zip(no_embeds, self._encode_images([by_key[k] for k in no_embeds], batch_size)))
        entries: dict[str, CachedImage] = {}
        for k, old in cached.items():
            entry = CachedImage(
                caption=captions.get(k, old.caption if old is not None else None),
                image_embeds=embeds.get(k, old.image_embeds if old is not None else None),
            )
            if k in captions or k in embeds:
                self.cache.update(k, caption=entry.caption, image_embeds=entry.image_embeds)
            entries[k] = entry
        return [entries[k] for k in keys], not no_caption and not no_embeds

    @torch.inference_mode()
    def _answer(self, questions: list[str], image_embeds: list[torch.Tensor], top_k: int) -> _VQAOutput:
        """Top-``top_k`` ``(answer, score)`` per (question, image encoding) pair, in one fusion batch, with the
        fused representations and answer-score vectors."""
        device, dtype = self._device_dtype
        enc = self.processor(text=questions, return_tensors="pt")
        inputs = {k: enc[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        embeds = torch.cat([e.to(device, dtype) for e in image_embeds])
        output = self.vqa_model(**inputs, image_embeds=embeds)
        candidates, probs = top_answers(output.logits, self.id2label, top_k, self.score_function)
        fused = F.normalize(output.pooler_output.float(), dim=-1)
        return _VQAOutput(candidates, fused.cpu(), probs.cpu())

    # ------------------------------------------------------------------------------- few-shot setup
    def _fewshot_settings(self, template: str, run_llm: bool, runs: object, n_examples: object,
                          example_bank: BankSource | None) -> tuple[FewShotSettings | None, list[str]]:
        """The few-shot settings of a request (``None`` unless the fewshot template is used with the LLM) and
        notes on settings that were ignored. Raises BadSettingError / ExampleBankError."""
        if template != FEWSHOT_TEMPLATE:
            ignored = runs not in (None, DEFAULT_RUNS)
            return None, [f"runs={runs} ignored: only the {FEWSHOT_TEMPLATE} template votes over runs"] if ignored else []
        if not run_llm:
            return None, []
        bank = open_example_bank(example_bank if example_bank is not None else self.example_bank)
        check_bank_fits(bank, 2 * int(self.vqa_model.config.hidden_size), str(self.model_ids["vqa"]))
        return FewShotSettings(bank, runs=DEFAULT_RUNS if runs is None else runs,
                               n_examples=DEFAULT_N_EXAMPLES if n_examples is None else n_examples), []

    @staticmethod
    def _plan(fewshot: FewShotSettings | None, vqa: _VQAOutput, image_hashes: list[str], top_k: int,
              clock: _Clock) -> list[list[list[dict[str, Any]]]] | None:
        """Per question, the example sets of its voting runs (``None`` without few-shot)."""
        if fewshot is None:
            return None
        with clock("prompt"):
            return plan_runs(fewshot, vqa.fused, image_hashes, top_k)

    # --------------------------------------------------------------------------------- LLM stages
    @staticmethod
    def _fail_llm(result: VQALLMResult, message: str) -> None:
        logger.warning("%s", message)
        result.error = message
        result.llm_answer = result.vqa_answer
        result.llm_explanation = ""
        result.llm_fallback = True
        result.changed = False

    @staticmethod
    def _parse_reply(result: VQALLMResult, reply: str) -> None:
        result.llm_reply = reply
        parsed = parse_answer(reply, result.candidates, result.template, question=result.question)
        result.llm_answer = parsed.answer
        result.llm_short_answer = parsed.short
        result.llm_explanation = parsed.explanation
        result.llm_fallback = parsed.fallback
        result.changed = normalize_answer(parsed.short_answer) != normalize_answer(result.vqa_answer)

    def _token_budget(self, options: dict[str, Any]) -> tuple[Callable[[list[dict]], int] | None, int | None]:
        """The LLM's prompt-token counter and limit, when its backend knows them (local transformers models)."""
        count, limit_of = getattr(self.llm, "count_tokens", None), getattr(self.llm, "prompt_limit", None)
        if not callable(count) or not callable(limit_of):
            return None, None
        return count, limit_of(options.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)

    def _chats(self, result: VQALLMResult, clock: _Clock, options: dict[str, Any],
               plan: list[list[dict[str, Any]]] | None) -> list[list[dict]] | None:
        """The chat(s) to send for ``result``: one, or one per few-shot run of ``plan`` (examples dropped,
        least similar first, until each fits the LLM's context; ``result.runs`` records them). ``messages``
        gets the first chat. ``None`` (and ``error`` set) when a prompt cannot be built."""
        result.llm_used = True
        try:
            with clock("prompt"):
                if plan is None:
                    chats = [build_messages(result.template, result.caption, result.question, result.candidates)]
                else:
                    count, limit = self._token_budget(options)
                    chats = []
                    for examples in plan:
                        messages, kept = build_fitted_messages(result.template, result.caption, result.question,
                                                               result.candidates, examples, count, limit)
                        chats.append(messages)
                        result.runs.append({"examples": [e["id"] for e in kept],
                                            "similarities": [round(float(e["similarity"]), 4) for e in kept],
                                            "dropped": len(examples) - len(kept)})
        except PromptError as exc:
            result.runs = []
            self._fail_llm(result, f"Could not build the LLM prompt ({exc}); the VQA answer is shown instead.")
            return None
        result.messages = chats[0]
        return chats

    def _finish(self, result: VQALLMResult, replies: list[str], failures: list[LLMFailure | None]) -> None:
        """Fill the LLM fields of ``result`` from the reply (or failure) of each chat; few-shot runs are voted."""
        if not result.runs:
            result.llm_reply = replies[0]
            if failures[0] is not None:
                self._fail_llm(result, str(failures[0]))
            else:
                self._parse_reply(result, replies[0])
            return
        result.llm_reply = join_replies(replies)
        parsed = []
        for run, reply, failure in zip(result.runs, replies, failures):
            answer = None if failure is not None else parse_answer(reply, result.candidates, result.template,
                                                                       question=result.question)
            parsed.append(answer)
            run.update(reply=reply, answer=answer.answer if answer is not None and not answer.fallback else None,
                       error=str(failure) if failure is not None else None)
        outcome = vote([run["answer"] for run in result.runs], result.candidates)
        result.votes = outcome.votes
        if all(failure is not None for failure in failures):
            self._fail_llm(result, str(failures[0]))
            return
        result.notes += [f"few-shot run {i + 1} of {len(failures)} failed: {failure}"
                         for i, failure in enumerate(failures) if failure is not None]
        if outcome.answer is None:  # no run gave a usable answer: keep the VQA top-1
            result.llm_answer, result.llm_explanation, result.llm_fallback = result.vqa_answer, "", True
            result.changed = False
            return
        result.llm_answer = outcome.answer
        result.llm_explanation = parsed[outcome.run].explanation
        result.llm_fallback = False
        result.changed = normalize_answer(outcome.answer) != normalize_answer(result.vqa_answer)

    def _stream_llm(self, result: VQALLMResult, options: dict[str, Any], clock: _Clock,
                    plan: list[list[dict[str, Any]]] | None = None) -> Iterator[VQALLMUpdate]:
        chats = self._chats(result, clock, options, plan)
        if chats is None:
            return
        timeout = options.pop("timeout")
        replies: list[str] = []
        failures: list[LLMFailure | None] = []
        emitted = 0  # characters of llm_reply already sent as chunks (run headers go with the next chunk)
        for index, chat in enumerate(chats):
            before = result.llm_reply + "\n" if index else ""
            header = run_header(index, len(chats))
            text, failure = "", None
            try:
                with clock("llm"):
                    for chunk in stream_with_deadline(self.llm, chat, timeout, **options):
                        text += chunk
                        result.llm_reply = before + header + text
                        shown, emitted = result.llm_reply[emitted:], len(result.llm_reply)
                        yield VQALLMUpdate("llm", result, text=result.llm_reply, chunk=shown)
            except LLMFailure as exc:
                failure = exc
            result.llm_reply = before + header + text
            replies.append(text)
            failures.append(failure)
        self._finish(result, replies, failures)

    def _generate_batch(self, chats: list[list[dict]], timeout: float | None,
                        options: dict[str, Any]) -> list[str | LLMFailure]:
        """Replies to ``chats`` in one ``generate_batch`` call; when the batch fails for a reason other than a
        timeout, the chats are retried one by one so one bad chat cannot sink the others."""
        try:
            return generate_batch_with_deadline(self.llm, chats, timeout, **options)
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

    def _batch_llm(self, results: list[VQALLMResult], options: dict[str, Any], clock: _Clock,
                   plans: list[list[list[dict[str, Any]]]] | None = None) -> None:
        """The LLM stage of a chunk: one ``generate_batch`` per few-shot run index (just one without few-shot)."""
        ready = []
        for index, result in enumerate(results):
            chats = self._chats(result, clock, options, plans[index] if plans is not None else None)
            if chats is not None:
                ready.append((result, chats))
        if not ready:
            return
        timeout = options.pop("timeout")
        outputs: list[list[str | LLMFailure]] = [[] for _ in ready]
        with clock("llm"):
            for run in range(max(len(chats) for _, chats in ready)):
                todo = [i for i, (_, chats) in enumerate(ready) if run < len(chats)]
                replies = self._generate_batch([ready[i][1][run] for i in todo], timeout, options)
                for i, reply in zip(todo, replies):
                    outputs[i].append(reply)
        for (result, _), got in zip(ready, outputs):
            self._finish(result, [r if isinstance(r, str) else "" for r in got],
                         [r if isinstance(r, LLMFailure) else None for r in got])

    # ------------------------------------------------------------------------------------ public API
    def caption(self, image: ImageSource) -> str:
        """The caption of ``image`` ("" without a captioner), from the per-image cache when known.

        Only the captioner runs (not the vision encoder). Raises BadImageError when the image is unreadable.
        """
        pil, key = read_image(image)
        (entry,), _ = self._image_features([pil], [key], True, _Clock({}), encode=False)
        return entry.caption or ""

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
        timings = empty_timings()
        clock = _Clock(timings)
        question, notes = clean_question(question)
        template = check_template(template)
        run_llm = bool(use_llm) and self.llm is not None
        options = self._llm_options(llm_opts) if run_llm else {}
        fewshot, ignored = self._fewshot_settings(template, run_llm, runs, n_examples, example_bank)
        top_k, clamped = clamp_top_k(top_k, self.num_labels)
        with clock("load_image"):
            pil, key = read_image(image)
        (entry,), hit = self._image_features([pil], [key], describe_image, clock)
        with clock("vqa_fusion"):
            vqa = self._answer([question], [entry.image_embeds], top_k)
        result = VQALLMResult(
            question=question, caption=entry.caption or "", candidates=vqa.candidates[0], template=template,
            top_k=top_k, timings=timings, cache_hit=hit, models=dict(self.model_ids), image_hash=key,
            notes=notes + clamped + ignored,
        )
        yield VQALLMUpdate("vqa", result)
        if run_llm:
            plans = self._plan(fewshot, vqa, [key], top_k, clock)
            yield from self._stream_llm(result, options, clock, plans[0] if plans is not None else None)
        timings["total"] = time.perf_counter() - started
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

    @staticmethod
    def _pair_up(images: Sequence[ImageSource], questions: Sequence[str],
                 batch_size: int) -> tuple[list[ImageSource], list[str]]:
        """One image per question (a single image serves them all); BadSettingError on a mismatch."""
        images, questions = list(images), list(questions)
        if len(images) == 1 and len(questions) > 1:
            images = images * len(questions)
        if len(images) != len(questions):
            raise BadSettingError(f"Got {len(images)} images for {len(questions)} questions: pass one image per "
                                  "question, or a single image for all of them.")
        if batch_size < 1:
            raise BadSettingError(f"batch_size must be >= 1, got {batch_size}.")
        return images, questions

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
        images, questions = self._pair_up(images, questions, batch_size)
        template = check_template(template)
        run_llm = bool(use_llm) and self.llm is not None
        options = self._llm_options(llm_opts) if run_llm else {}
        fewshot, ignored = self._fewshot_settings(template, run_llm, runs, n_examples, example_bank)
        top_k, clamped = clamp_top_k(top_k, self.num_labels)
        cleaned = [clean_question(q) for q in questions]
        results: list[VQALLMResult] = []
        for start in range(0, len(questions), batch_size):
            chunk = range(start, min(start + batch_size, len(questions)))
            results += self._run_chunk([images[i] for i in chunk], [cleaned[i] for i in chunk], list(chunk),
                                       top_k, clamped + ignored, template, run_llm, dict(options), describe_image,
                                       batch_size, fewshot)
        return results

    def encode_questions(self, images: Sequence[ImageSource], questions: Sequence[str], top_k: int = 5,
                         batch_size: int = 16, *, describe_image: bool = True) -> list[QuestionEncoding]:
        """VLE's view of each (``images[i]``, ``questions[i]``), without the LLM: caption, top-``top_k``
        candidates, fused representation (L2-normalised) and answer-score vector. One image may serve all
        questions; captions and image encodings come from (and go to) the per-image cache. Used to build
        few-shot example banks. Raises BadImageError, BadQuestionError or BadSettingError for bad inputs.
        """
        images, questions = self._pair_up(images, questions, batch_size)
        top_k, _ = clamp_top_k(top_k, self.num_labels)
        encodings: list[QuestionEncoding] = []
        for start in range(0, len(questions), batch_size):
            chunk = range(start, min(start + batch_size, len(questions)))
            texts = [clean_question(questions[i])[0] for i in chunk]
            loaded = [read_image(images[i], i) for i in chunk]
            keys = [key for _, key in loaded]
            entries, _ = self._image_features([pil for pil, _ in loaded], keys, describe_image, _Clock({}),
                                              batch_size)
            vqa = self._answer(texts, [e.image_embeds for e in entries], top_k)
            encodings += [QuestionEncoding(question=q, caption=e.caption or "", candidates=c, fused=f, scores=s,
                                           image_hash=k)
                          for q, e, c, f, s, k in zip(texts, entries, vqa.candidates, vqa.fused, vqa.scores, keys)]
        return encodings

    def _run_chunk(self, images: list[ImageSource], cleaned: list[tuple[str, list[str]]], indices: list[int],
                   top_k: int, clamped: list[str], template: str, run_llm: bool, options: dict[str, Any],
                   describe: bool, batch_size: int, fewshot: FewShotSettings | None = None) -> list[VQALLMResult]:
        started = time.perf_counter()
        timings = empty_timings()
        clock = _Clock(timings)
        loaded: dict[int, tuple[Image.Image, str]] = {}
        with clock("load_image"):
            for image, index in zip(images, indices):
                loaded[index] = read_image(image, index)
        pils = [loaded[i][0] for i in indices]
        keys = [loaded[i][1] for i in indices]
        seen = {k: self.cache.peek(k) for k in keys}
        want_caption = describe and self.captioner is not None
        hits = {k: e is not None and e.image_embeds is not None and (not want_caption or e.caption is not None)
                for k, e in seen.items()}
        entries, _ = self._image_features(pils, keys, describe, clock, batch_size)
        questions = [q for q, _ in cleaned]
        with clock("vqa_fusion"):
            vqa = self._answer(questions, [e.image_embeds for e in entries], top_k)
        share = 1.0 / len(indices)
        results = [
            VQALLMResult(question=q, caption=e.caption or "", candidates=c, template=template, top_k=top_k,
                         timings={}, cache_hit=hits[k], models=dict(self.model_ids), image_hash=k,
                         notes=notes + clamped)
            for (q, notes), e, c, k in zip(cleaned, entries, vqa.candidates, keys)
        ]
        if run_llm:
            self._batch_llm(results, options, clock, self._plan(fewshot, vqa, keys, top_k, clock))
        timings["total"] = time.perf_counter() - started
        for result in results:
            result.timings = {stage: seconds * share for stage, seconds in timings.items()}
        return results


__all__ = ["FEWSHOT_TEMPLATE", "SCORE_FUNCTIONS", "VQALLMPipeline"]
