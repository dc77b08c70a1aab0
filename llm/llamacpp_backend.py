"""Local chat LLM through llama.cpp (``llama-cpp-python``): a GGUF file run as it is, quantised, on the CPU.

A model this project runs on a CPU (SmolLM2-135M, a 1.5B Qwen) spends most of a token's time in Python and
fp32 matrix products under transformers; llama.cpp reads the GGUF file's quantised weights directly and decodes
several times faster (``bench/llm_speed.py``, docs/speed.md). Behaviour matches
:class:`~llm.transformers_backend.TransformersChatLLM`:

* the prompt is the GGUF file's own chat template rendered the way transformers renders it (same Jinja
  settings), tokenised without extra BOS, so both runtimes see the same token ids;
* generation stops at the same end-of-turn tokens; the reply is decoded without special tokens;
* ``stream`` yields text as tokens arrive (never a split UTF-8 character), ``"".join(stream(m)) == generate(m)``
  under greedy decoding; a consumer that closes the stream stops generation at the next token;
* ``timeout`` is checked after every token and raises :class:`~llm.errors.LLMTimeoutError`; too-long prompts
  raise :class:`~llm.errors.PromptTooLongError` before anything runs;
* with ``max_batch_size`` > 1, generations run through a :class:`~llm.llamacpp_batching.ContinuousBatcher`:
  ``generate_batch`` decodes its chats together, and ``stream``/``generate`` calls from several threads (the
  app's visitors) share the decode steps, each reply still streamed to its own caller; a prompt too long for a
  batch slot takes the one-sequence path. ``max_batch_size=1`` answers one chat at a time (a lock), each with
  its own deadline (``batch_size`` is accepted and has no effect).

A LoRA adapter (the bundled refiner) is folded into a copy of the weights written once (:mod:`llm.lora_merge`),
or, without a writable cache, applied by llama.cpp at run time from a GGUF copy of it (:mod:`llm.lora_gguf`).
The key/value cache of the previous prompt is reused for the part a new prompt shares with it (llama.cpp's
prefix match), so a fixed system prompt is read once.
"""

from __future__ import annotations

import codecs
import logging
import random
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from .adapters import adapter_templates
from .base import ChatLLM, GenerationOptions, check_messages
from .errors import LLMError, LLMTimeoutError, PromptTooLongError
from .llamacpp_batching import ContinuousBatcher
from .lora_gguf import cached_adapter_gguf, shape_from_metadata
from .lora_merge import cached_merged_gguf

logger = logging.getLogger(__name__)

#: end-of-turn tokens of common chat models (the same list as the transformers backend)
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")
#: the context window used when the model's own is longer (key/value memory grows with it)
DEFAULT_MAX_CONTEXT = 8192
#: tokens per sequence of the batched context (prompt + reply); longer prompts take the one-sequence path
DEFAULT_SLOT_CONTEXT = 1024
INSTALL_HINT = ("llama-cpp-python is not installed; bash scripts/setup.sh builds it (or pip install "
                "llama-cpp-python), else use --llm-runtime transformers.")


def import_llama_cpp():
    """The ``llama_cpp`` module; LLMError with the install hint when it is missing or its library fails to load."""
    try:
        import llama_cpp
    except (ImportError, OSError) as exc:
        raise LLMError(f"{INSTALL_HINT} ({type(exc).__name__}: {exc})") from exc
    return llama_cpp


def render_chat(template: str, messages: list[dict], bos_token: str = "", eos_token: str = "") -> str:
    """``messages`` through the Jinja chat ``template`` with a generation prompt, rendered with the settings
    transformers uses (sandboxed, ``trim_blocks``, ``lstrip_blocks``, loop controls, ``raise_exception``)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise LLMError(f"The chat template refused the messages: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, bos_token=bos_token,
                                            eos_token=eos_token)


class LlamaCppChatLLM(ChatLLM):
    """A chat model run by llama.cpp from a GGUF file. Build it with :meth:`from_gguf`."""

    def __init__(self, llama, model_id: str, max_prompt_tokens: int | None = None, max_batch_size: int = 1,
                 slot_context: int = DEFAULT_SLOT_CONTEXT):
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise LLMError(f"max_batch_size must be a whole number >= 1, got {max_batch_size!r}.")
        self.llama = llama
        self.model_id = model_id
        self.max_prompt_tokens = max_prompt_tokens
        self.max_context = int(llama.n_ctx())
        self.chat_template = llama.metadata.get("tokenizer.chat_template")
        if not self.chat_template:
            raise LLMError(f"{model_id} has no chat template; use an instruction-tuned (chat) model.")
        self.bos_token = self._special_text(llama.token_bos())
        self.eos_token = self._special_text(llama.token_eos())
        self.eos_token_ids = self._eos_ids()
        self._lock = threading.Lock()
        self.max_batch_size = max_batch_size
        self.batcher = (ContinuousBatcher(llama, max_batch_size, min(slot_context, self.max_context),
                                          self.eos_token_ids) if max_batch_size > 1 else None)

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_gguf(
        cls,
        path: str | Path,
        adapter: str | Path | None = None,
        n_threads: int | None = None,
        max_context: int | None = None,
        max_prompt_tokens: int | None = None,
        seed: int = 0,
        max_batch_size: int = 1,
        slot_context: int = DEFAULT_SLOT_CONTEXT,
        merge_adapter: bool = True,
        model_id: str | None = None,
    ) -> "LlamaCppChatLLM":
        """Load the GGUF file ``path`` (with an optional peft LoRA ``adapter`` folder on top: folded into a cached
        copy of the weights with ``merge_adapter`` and a writable cache, see :mod:`llm.lora_merge`, else applied
        at run time). ``n_threads``:
        torch's thread count unless given (so ``OMP_NUM_THREADS`` limits both runtimes alike); ``max_context``:
        the model's context, capped at :data:`DEFAULT_MAX_CONTEXT` unless given; ``max_batch_size``: sequences
        decoded together (1: one at a time), each in at most ``slot_context`` tokens; ``model_id``: the name it
        reports (default: the path; a Hub GGUF gives ``REPO/FILE``). Raises LLMError (or
        :class:`~llm.lora_gguf.UnsupportedAdapterError` for an adapter llama.cpp cannot apply)."""
        llama_cpp = import_llama_cpp()
        path = Path(path).expanduser()
        if not path.is_file():
            raise LLMError(f"No GGUF file at {path}.")
        lora_path, temporary = None, False
        try:  # the metadata alone first (vocabulary only, fast): the adapter and the context depend on it
            shape = shape_from_metadata(llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False).metadata)
        except (ValueError, RuntimeError, OSError) as exc:
            raise LLMError(f"llama.cpp could not read {path}: {exc}") from exc
        model_file = path
        if adapter is not None:
            merged = cached_merged_gguf(path, adapter, shape) if merge_adapter else None
            if merged is not None:
                model_file = merged
            else:
                lora_path, temporary = cached_adapter_gguf(adapter, shape)
        if n_threads is None:
            import torch

            n_threads = torch.get_num_threads()
        n_ctx = max_context or min(shape.context or DEFAULT_MAX_CONTEXT, DEFAULT_MAX_CONTEXT)
        try:
            llama = llama_cpp.Llama(
                model_path=str(model_file), n_ctx=n_ctx, n_batch=512, n_threads=n_threads, n_threads_batch=n_threads,
                seed=seed, lora_path=str(lora_path) if lora_path else None, verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise LLMError(f"llama.cpp could not load {path}" + (f" with the adapter {adapter}" if adapter else "")
                           + f": {exc}") from exc
        finally:
            if temporary:
                shutil.rmtree(Path(lora_path).parent, ignore_errors=True)
        # named as transformers names it
        model_id = (model_id or str(path)) + (f" + {Path(adapter).name}" if adapter is not None else "")
        llm = cls(llama, model_id, max_prompt_tokens=max_prompt_tokens, max_batch_size=max_batch_size,
                  slot_context=slot_context)
        llm.template_dir = adapter_templates(adapter) if adapter is not None else None
        return llm

    def _special_text(self, token: int) -> str:
        if token is None or token < 0:
            return ""
        return self.llama.detokenize([token], special=True).decode("utf-8", errors="replace")

    def _eos_ids(self) -> list[int]:
        ids = {self.llama.token_eos()}
        for text in END_OF_TURN_TOKENS:
            found = self.llama.tokenize(text.encode(), add_bos=False, special=True)
            if len(found) == 1 and self._special_text(found[0]) == text:
                ids.add(found[0])
        return sorted(i for i in ids if isinstance(i, int) and i >= 0)

    # ------------------------------------------------------------------------------------- prompting
    def prompt_text(self, messages: Sequence[dict]) -> str:
        """The exact text the model sees for ``messages`` (chat template + generation prompt)."""
        return render_chat(self.chat_template, check_messages(messages), self.bos_token, self.eos_token)

    def prompt_ids(self, messages: Sequence[dict]) -> list[int]:
        """The prompt's token ids (special tokens parsed, no BOS added: the template writes what it needs)."""
        return self.llama.tokenize(self.prompt_text(messages).encode("utf-8"), add_bos=False, special=True)

    def count_tokens(self, messages: Sequence[dict]) -> int:
        """Number of prompt tokens ``messages`` take."""
        return len(self.prompt_ids(messages))

    def prompt_limit(self, max_new_tokens: int) -> int | None:
        """Most prompt tokens allowed: ``max_prompt_tokens``, else the context minus ``max_new_tokens``."""
        if self.max_prompt_tokens is not None:
            return self.max_prompt_tokens
        return self.max_context - max_new_tokens

    def _encode(self, messages: Sequence[dict], opts: GenerationOptions, where: str = "") -> list[int]:
        ids = self.prompt_ids(messages)
        limit = self.prompt_limit(opts.max_new_tokens)
        if len(ids) > limit:
            source = ("max_prompt_tokens" if self.max_prompt_tokens is not None
                      else f"context {self.max_context} minus max_new_tokens {opts.max_new_tokens}")
            raise PromptTooLongError(
                f"The prompt{where} is {len(ids)} tokens long; {self.model_id} accepts at most {limit} ({source}). "
                "Shorten the question or caption, pass fewer candidates or few-shot examples, or lower "
                "max_new_tokens.",
                n_tokens=len(ids), limit=max(limit, 0),
            )
        return ids

    def _timeout_error(self, opts: GenerationOptions) -> LLMTimeoutError:
        return LLMTimeoutError(f"{self.model_id} did not finish within timeout={opts.timeout} s; raise the timeout, "
                               "lower max_new_tokens, or use a smaller model.")

    # ------------------------------------------------------------------------------------ generation
    def _sampling(self, opts: GenerationOptions) -> dict:
        """llama.cpp sampler settings equivalent to transformers' (no top-k, min-p or repetition penalty)."""
        if opts.greedy:
            return {"temp": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0}
        self.llama.set_seed(random.getrandbits(31))  # a new draw per call, as with transformers
        return {"temp": float(opts.temperature), "top_k": 0, "top_p": float(opts.top_p or 1.0), "min_p": 0.0,
                "repeat_penalty": 1.0}

    def _batched(self, ids: list[int], opts: GenerationOptions) -> bool:
        return self.batcher is not None and self.batcher.fits(len(ids), opts.max_new_tokens)

    def _tokens(self, ids: list[int], opts: GenerationOptions) -> Iterator[int]:
        """The reply's token ids (end-of-turn excluded); LLMTimeoutError once ``opts.timeout`` has passed."""
        if self._batched(ids, opts):
            return self.batcher.submit(ids, opts, self._timeout_error(opts)).tokens()
        return self._one_by_one(ids, opts)

    def _one_by_one(self, ids: list[int], opts: GenerationOptions) -> Iterator[int]:
        """:meth:`_tokens` on the one-sequence context, one generation at a time."""
        end = time.monotonic() + opts.timeout if opts.timeout else None
        with self._lock:
            if end is not None and time.monotonic() > end:
                raise self._timeout_error(opts)
            produced = 0
            for token in self.llama.generate(ids, reset=True, **self._sampling(opts)):
                if token in self.eos_token_ids:
                    return
                yield token
                produced += 1
                if produced >= opts.max_new_tokens:
                    return
                if end is not None and time.monotonic() > end:
                    raise self._timeout_error(opts)

    def _text(self, tokens: Iterator[int]) -> Iterator[str]:
        """Decoded text pieces of ``tokens``: bytes held back until they complete a UTF-8 character."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for token in tokens:
            text = decoder.decode(self.llama.detokenize([token], special=False))
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def _generate(self, messages: Sequence[dict], opts: GenerationOptions) -> str:
        return "".join(self._text(self._tokens(self._encode(messages, opts), opts)))

    def _generate_batch(self, batch: Sequence[Sequence[dict]], opts: GenerationOptions,
                        batch_size: int | None = None) -> list[str]:
        """Replies to several chats (decoded together with a batcher, else one after the other); every prompt is
        checked before the first runs."""
        encoded = [self._encode(m, opts, f" (chat #{i} of the batch)" if len(batch) > 1 else "")
                   for i, m in enumerate(batch)]
        started = [self._tokens(ids, opts) if self._batched(ids, opts) else None for ids in encoded]  # all queued
        return ["".join(self._text(tokens if tokens is not None else self._tokens(ids, opts)))
                for ids, tokens in zip(encoded, started)]

    def _stream(self, messages: Sequence[dict], opts: GenerationOptions) -> Iterator[str]:
        """Reply chunks as they are decoded. A too-long prompt raises here, before any streaming."""
        return self._text(self._tokens(self._encode(messages, opts), opts))
