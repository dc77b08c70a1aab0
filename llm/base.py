"""The small chat interface every LLM backend implements, and the checks shared by all of them.

Messages are OpenAI-style ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``.
Generation options (keyword-only everywhere): ``max_new_tokens`` (default 64), ``temperature``
(``None``/``0`` = greedy, the reproducible default), ``top_p`` and ``timeout`` (seconds; exceeding it
raises :class:`~llm.errors.LLMTimeoutError`).
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LLMError

ROLES = ("system", "user", "assistant")
DEFAULT_MAX_NEW_TOKENS = 64


@dataclass(frozen=True)
class GenerationOptions:
    """Validated generation options; ``greedy`` is True unless a positive temperature is given."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float | None = None
    top_p: float | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        # NaN compares false with everything, so each check says what is allowed rather than what is not
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise LLMError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}.")
        if self.temperature is not None and not (_is_number(self.temperature) and 0 <= self.temperature < math.inf):
            raise LLMError(f"temperature must be a number >= 0 (0 or None = greedy), got {self.temperature!r}.")
        if self.top_p is not None and not (_is_number(self.top_p) and 0 < self.top_p <= 1):
            raise LLMError(f"top_p must be in (0, 1], got {self.top_p!r}.")
        if self.timeout is not None and not (_is_number(self.timeout) and self.timeout > 0):
            raise LLMError(f"timeout must be a positive number of seconds, got {self.timeout!r}.")

    @property
    def greedy(self) -> bool:
        return not self.temperature


def _is_number(value: Any) -> bool:
    """Whether ``value`` is a real number (not a bool, not NaN)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)


def check_messages(messages: Sequence[dict]) -> list[dict]:
    """Validate a chat (non-empty list of role/content dicts) and return it as a list of plain dicts."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise LLMError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts.")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES or not isinstance(msg.get("content"), str):
            raise LLMError(f"message #{i} is {msg!r}; each message needs a role in {ROLES} and a string content.")
        out.append({"role": msg["role"], "content": msg["content"]})
    return out


class ChatLLM(ABC):
    """A chat model: ``generate`` (whole reply), ``stream`` (reply in text chunks), ``generate_batch``.

    Attributes: ``model_id`` (what was loaded), ``max_context`` (context length in tokens, or
    ``None`` when unknown), ``template_dir`` (the prompt templates of a fine-tuned model, or ``None``) and
    ``max_batch_size`` (chats worked on at once).
    Under greedy decoding ``"".join(stream(m)) == generate(m)``.

    The public methods validate the options once into :class:`GenerationOptions` and hand them to the
    hooks a backend implements: ``_generate``, ``_stream`` and optionally ``_generate_batch`` (which
    answers the chats one by one unless overridden).
    """

    model_id: str = ""
    max_context: int | None = None
    #: prompt templates this model was fine-tuned on (see :mod:`llm.adapters`); ``None``: the project's own
    template_dir: Path | None = None
    #: chats the backend works on at once (decoded together, or in flight to a server); calls from more threads
    #: than this wait their turn inside the backend
    max_batch_size: int = 1

    def generate(
        self,
        messages: Sequence[dict],
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float | None = None,
        top_p: float | None = None,
        timeout: float | None = None,
    ) -> str:
        """The assistant's reply to ``messages``."""
        return self._generate(messages, GenerationOptions(max_new_tokens, temperature, top_p, timeout))

    def stream(
        self,
        messages: Sequence[dict],
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float | None = None,
        top_p: float | None = None,
        timeout: float | None = None,
    ) -> Iterator[str]:
        """The assistant's reply to ``messages`` as text chunks, yielded as soon as they are decoded.

        Bad options (and whatever the backend checks in ``_stream`` before streaming, such as a too-long
        prompt) raise here, when called, not on the first ``next()``."""
        return self._stream(messages, GenerationOptions(max_new_tokens, temperature, top_p, timeout))

    def generate_batch(
        self,
        batch: Sequence[Sequence[dict]],
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float | None = None,
        top_p: float | None = None,
        timeout: float | None = None,
        **backend_options: Any,
    ) -> list[str]:
        """Replies to several chats, in order. ``backend_options`` go to the backend's ``_generate_batch``
        (e.g. ``batch_size`` for :class:`~llm.transformers_backend.TransformersChatLLM`)."""
        opts = GenerationOptions(max_new_tokens, temperature, top_p, timeout)
        return self._generate_batch(batch, opts, **backend_options)

    def count_tokens(self, messages: Sequence[dict]) -> int | None:
        """Number of prompt tokens ``messages`` take, or ``None`` when this backend cannot count them (a
        server's tokenizer is not known here)."""
        return None

    def prompt_limit(self, max_new_tokens: int) -> int | None:
        """Most prompt tokens a reply of ``max_new_tokens`` leaves room for, or ``None`` when unknown."""
        return None

    # ------------------------------------------------------------------------- backend hooks
    @abstractmethod
    def _generate(self, messages: Sequence[dict], opts: GenerationOptions) -> str:
        """The reply to ``messages`` under the validated ``opts``."""

    @abstractmethod
    def _stream(self, messages: Sequence[dict], opts: GenerationOptions) -> Iterator[str]:
        """The reply chunks. Checks that should raise when :meth:`stream` is called belong before the
        iterator is returned (i.e. this is a plain method returning a generator, not a generator itself)."""

    def _generate_batch(self, batch: Sequence[Sequence[dict]], opts: GenerationOptions) -> list[str]:
        """Replies to several chats; this default answers them one by one."""
        return [self._generate(m, opts) for m in batch]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r})"
