"""Continuous batching for llama.cpp: many chats decoded together, each still streamed on its own.

A small model on a CPU leaves most of the cores' arithmetic unused when it decodes one sequence at a time: a
decode step reads every weight to produce one token. :class:`ContinuousBatcher` keeps up to ``slots``
sequences in one llama.cpp context (one key/value stream per slot) and runs them through one ``llama_decode``
call per step: the next token of every sequence that is generating, plus the prompt tokens of sequences that
have just arrived (up to the context's batch size). A request that arrives while others are generating joins
at the next step; it does not wait for them to finish.

Each slot keeps the tokens of its last prompt in its cache, and a new prompt reuses the part it shares with
them (a fixed system prompt is read once per slot, as the one-sequence path does with llama.cpp's prefix
match). Greedy decoding picks the arg-max of the logits, as llama.cpp's own greedy sampler does, so the
replies equal the one-sequence path's up to the floating-point differences of batched kernels. Sampling
(temperature, top-p) is done here, per request, with its own random generator.

One thread (started on the first request) owns the context; requests talk to it through queues. A request
ends when it produces an end-of-turn token, reaches ``max_new_tokens``, passes its deadline (the consumer gets
:class:`~llm.errors.LLMTimeoutError`) or is cancelled (its consumer stopped reading); its slot is free at the
next step.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .base import GenerationOptions
from .errors import LLMError, LLMTimeoutError

logger = logging.getLogger(__name__)

_TOKEN, _END, _ERROR = "token", "end", "error"


@dataclass(eq=False)
class BatchRequest:
    """One chat's generation inside the batcher: its prompt ids, options, deadline and reply queue."""

    ids: list[int]
    opts: GenerationOptions
    timeout_error: LLMTimeoutError
    outbox: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    rng: np.random.Generator | None = None
    deadline: float | None = None  # set when the request gets a slot: queueing does not eat its time

    def tokens(self) -> Iterator[int]:
        """The reply's token ids as the batcher produces them; raises what the batcher reports. Closing the
        iterator early cancels the request."""
        try:
            while True:
                kind, payload = self.outbox.get()
                if kind == _END:
                    return
                if kind == _ERROR:
                    raise payload
                yield payload
        finally:
            self.cancelled.set()


@dataclass(eq=False)
class _Slot:
    """One key/value stream of the context: the tokens now in its cache and the request it serves."""

    seq_id: int
    cached: list[int] = field(default_factory=list)
    request: BatchRequest | None = None
    to_read: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    next_token: int | None = None  # sampled, to be fed at the next step
    produced: int = 0


def _shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class ContinuousBatcher:
    """Up to ``slots`` sequences of the model of ``llama`` (a ``llama_cpp.Llama``, whose LoRA adapter and
    thread settings are reused) decoded together, each slot holding at most ``slot_context`` tokens."""

    def __init__(self, llama, slots: int, slot_context: int, eos_ids: Sequence[int]):
        import llama_cpp
        from llama_cpp import _internals

        if slots < 1 or slot_context < 2:
            raise LLMError(f"The batcher needs at least one slot of at least 2 tokens, got {slots} x {slot_context}.")
        self._llama_cpp = llama_cpp
        self.slots = [_Slot(i) for i in range(slots)]
        self.slot_context = slot_context
        self.eos_ids = frozenset(eos_ids)
        self.n_vocab = int(llama.n_vocab())
        params = llama_cpp.llama_context_params.from_buffer_copy(llama.context_params)
        params.n_seq_max = slots
        params.kv_unified = False  # one stream per slot: attention reads only its own sequence's cells
        params.n_ctx = slots * slot_context
        self.n_batch = int(params.n_batch)
        try:
            self._context = _internals.LlamaContext(model=llama._model, params=params, verbose=False)
        except ValueError as exc:
            raise LLMError(f"llama.cpp could not make a context for {slots} sequences of {slot_context} tokens "
                           f"({exc}); lower the batch size.") from exc
        adapter = getattr(llama, "_lora_adapter", None)  # llama-cpp-python keeps the loaded adapter here
        if adapter is not None:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
            scales = (ctypes.c_float * 1)(float(getattr(llama, "lora_scale", 1.0)))
            if llama_cpp.llama_set_adapters_lora(self._context.ctx, adapters, 1, scales):
                raise LLMError("llama.cpp could not apply the LoRA adapter to the batched context.")
        self._batch = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1, verbose=False)
        self._pending: deque[BatchRequest] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    # ----------------------------------------------------------------------------------------- requests
    def fits(self, n_prompt: int, max_new_tokens: int) -> bool:
        """Whether a prompt of ``n_prompt`` tokens and its reply fit in one slot."""
        return n_prompt + max_new_tokens <= self.slot_context

    def submit(self, ids: list[int], opts: GenerationOptions, timeout_error: LLMTimeoutError) -> BatchRequest:
        """Queue a generation; read its tokens with ``request.tokens()``."""
        if not ids:
            raise LLMError("Empty prompt.")
        if not self.fits(len(ids), opts.max_new_tokens):
            raise LLMError(f"A prompt of {len(ids)} tokens with {opts.max_new_tokens} new tokens does not fit a "
                           f"batch slot of {self.slot_context} tokens.")
        rng = None if opts.greedy else np.random.default_rng(random.getrandbits(63))
        request = BatchRequest(list(ids), opts, timeout_error, rng=rng)
        with self._wake:
            if self._closed:
                raise LLMError("The LLM batcher is closed.")
            self._pending.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="llamacpp-batcher", daemon=True)
                self._thread.start()
            self._wake.notify()
        return request

    def close(self) -> None:
        """Stop the batching thread after the current step; requests still queued get an error."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # ------------------------------------------------------------------------------------------- the loop
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._pending and not any(s.request for s in self.slots):
                    self._wake.wait()
                if self._closed:
                    break
                self._admit()
            try:
                self._step()
            except Exception as exc:  # a failed decode fails the requests in it, never the thread
                logger.exception("Batched llama.cpp decoding failed")
                for slot in self.slots:
                    if slot.request is not None:
                        self._finish(slot, LLMError(f"llama.cpp decoding failed: {exc}"))
                    slot.cached = []
                self._context.kv_cache_clear()
        error = LLMError("The LLM batcher was closed.")
        for slot in self.slots:
            if slot.request is not None:
                self._finish(slot, error)
        while self._pending:
            self._pending.popleft().outbox.put((_ERROR, error))

    def _admit(self) -> None:
        """Give queued requests the free slots, each the one whose cache shares most with its prompt."""
        while self._pending:
            free = [s for s in self.slots if s.request is None]
            if not free:
                return
            request = self._pending.popleft()
            if request.cancelled.is_set():
                continue
            slot = max(free, key=lambda s: _shared_prefix(s.cached, request.ids))
            keep = min(_shared_prefix(slot.cached, request.ids), len(request.ids) - 1)  # the last is read again
            self._context.kv_cache_seq_rm(slot.seq_id, keep, -1)
            slot.cached = request.ids[:keep]
            slot.to_read = request.ids[keep:]
            slot.request, slot.next_token, slot.produced = request, None, 0
            request.deadline = time.monotonic() + request.opts.timeout if request.opts.timeout else None

    def _step(self) -> None:
        """One ``llama_decode``: each generating slot's next token, then prompt tokens while there is room."""
        now = time.monotonic()
        for slot in self.slots:
            request = slot.request
            if request is None:
                continue
            if request.cancelled.is_set():
                self._finish(slot)
            elif request.deadline is not None and now > request.deadline:
                self._finish(slot, request.timeout_error)
        batch = self._batch.batch
        rows: list[tuple[_Slot, int]] = []  # slots whose logits this step produces, and the row of them
        n = 0

        def add(slot: _Slot, token: int, logits: bool) -> None:
            nonlocal n
            batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, len(slot.cached), 1
            batch.seq_id[n][0], batch.logits[n] = slot.seq_id, logits
            slot.cached.append(token)
            if logits:
                rows.append((slot, n))
            n += 1

        for slot in self.slots:
            if slot.request is not None and slot.next_token is not None:
                add(slot, slot.next_token, True)
                slot.next_token = None
        for slot in self.slots:
            if slot.request is None or not slot.to_read or n >= self.n_batch:
                continue
            take = min(len(slot.to_read), self.n_batch - n)
            chunk, slot.to_read = slot.to_read[:take], slot.to_read[take:]
            for i, token in enumerate(chunk):
                add(slot, token, not slot.to_read and i == take - 1)
        if n == 0:
            return
        batch.n_tokens = n
        self._context.decode(self._batch)
        for slot, row in rows:
            logits = np.ctypeslib.as_array(self._context.get_logits_ith(row), shape=(self.n_vocab,))
            self._emit(slot, self._sample(logits, slot.request))

    def _sample(self, logits: np.ndarray, request: BatchRequest) -> int:
        """Arg-max under greedy decoding; else temperature and nucleus (top-p) sampling."""
        if request.rng is None:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / float(request.opts.temperature)
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        top_p = request.opts.top_p or 1.0
        if top_p < 1.0:
            order = np.argsort(-probs)
            keep = order[: int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1]
            kept = probs[keep] / probs[keep].sum()
            return int(keep[request.rng.choice(len(keep), p=kept)])
        return int(request.rng.choice(self.n_vocab, p=probs))

    def _emit(self, slot: _Slot, token: int) -> None:
        request = slot.request
        if token in self.eos_ids:
            self._finish(slot)
            return
        request.outbox.put((_TOKEN, token))
        slot.produced += 1
        if slot.produced >= request.opts.max_new_tokens or len(slot.cached) >= self.slot_context:
            self._finish(slot)
        else:
            slot.next_token = token

    def _finish(self, slot: _Slot, error: Exception | None = None) -> None:
        request = slot.request
        if request is not None:
            request.outbox.put((_ERROR, error) if error is not None else (_END, None))
        slot.request, slot.to_read, slot.next_token = None, [], None
