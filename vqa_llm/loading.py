"""Loading the models a :class:`~vqa_llm.profiles.Profile` names, each once, with progress logged.

Every failure (missing folder or file, corrupt weights, a Hub id with no network and no cache) becomes a
:class:`~vqa_llm.errors.ModelUnavailableError` naming the path and the way out.

The dtype rule lives here, once, for every model the app loads (the component packages take a ``torch.dtype``):
fp32 on the CPU; on CUDA bf16 where the GPU runs it natively (compute capability 8.0 and up), else fp16, and
TF32 for the matmuls that stay in fp32.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from captioner import BlipCaptioner, CaptionerError
from llm import ChatLLM, LLMError, OpenAIChatLLM, smollm2_gguf
from llm.runtime import choose_runtime, load_local_llm
from vle import VLEError, VLEForVQA, quantize_int8
from vle.processing_vle import VLEProcessor

from .cpu_gguf import cpu_gguf_runs
from .devices import resolve_device
from .errors import BadSettingError, ModelUnavailableError
from .fast_vle import fast_int8
from .hub_access import gguf_cached
from .profiles import BUNDLED_LLM, Profile
from .sources import looks_local

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
_OFFLINE_HINT = (
    "For a Hub id, connect to the internet once (or set HF_HUB_OFFLINE=0); to run without network use "
    "--profile bundled."
)


@dataclass
class Components:
    """The loaded models of one profile (``captioner``/``llm`` are ``None`` when not requested)."""

    vqa_model: VLEForVQA
    processor: VLEProcessor
    captioner: BlipCaptioner | None
    llm: ChatLLM | None
    model_ids: dict[str, str | None]


DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
#: the first compute capability with bf16 in hardware (Ampere); torch.cuda.is_bf16_supported() also counts
#: emulation, which runs a T4 or V100 slowly and without tensor cores
NATIVE_BF16_CAPABILITY = (8, 0)


def _cuda_index(device: str) -> int:
    index = torch.device(device).index
    return torch.cuda.current_device() if index is None else index


def resolve_dtype(dtype: torch.dtype | str | None, device: str) -> torch.dtype:
    """``None``/``"auto"`` → bf16 on a CUDA device with native bf16, fp16 on older GPUs, fp32 elsewhere; names
    (``float32``/``fp32``, ``bfloat16``/``bf16``, ``float16``/``fp16``/``half``) → torch dtypes."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or str(dtype).lower() == "auto":
        if not str(device).startswith("cuda"):
            return torch.float32
        native = tuple(torch.cuda.get_device_capability(_cuda_index(device))) >= NATIVE_BF16_CAPABILITY
        return torch.bfloat16 if native else torch.float16
    try:
        return DTYPE_NAMES[str(dtype).lower()]
    except KeyError:
        raise BadSettingError(f"Unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16' or 'float16'.") from None


def resolve_llm_dtype(dtype: torch.dtype | str | None, device: str) -> torch.dtype:
    """:func:`resolve_dtype` for an LLM, except that ``auto`` never gives fp16: instruct LLMs overflow in fp16
    (Qwen2.5 gives NaN logits and replies of "!!!!", which the parser would silently replace by VLE's answer),
    so on a GPU without native bf16 (a T4) ``auto`` means fp32, and fp32 compute under 4-bit. A dtype asked by
    name is kept."""
    resolved = resolve_dtype(dtype, device)
    automatic = dtype is None or (isinstance(dtype, str) and dtype.lower() == "auto")
    return torch.float32 if automatic and resolved == torch.float16 else resolved


def enable_tf32(device: str) -> None:
    """On CUDA, let fp32 matmuls and convolutions use TF32 tensor cores (process-wide; nothing on CPU)."""
    if str(device).startswith("cuda"):
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def check_model_dir(id_or_path: str, what: str) -> None:
    """For a local path: raise ModelUnavailableError unless it is a folder with config.json and weights."""
    if not looks_local(id_or_path):
        return
    path = Path(id_or_path).expanduser()
    if not path.is_dir():
        raise ModelUnavailableError(
            f"No {what} folder at {path}: check the path, or build/download the model there "
            "(bundled models live in assets/models/)."
        )
    if not (path / "config.json").is_file():
        raise ModelUnavailableError(f"The {what} folder {path} has no config.json: it is not a saved model; "
                                    "save it again with save_pretrained.")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ModelUnavailableError(f"The {what} folder {path} has no weights ({' or '.join(WEIGHT_FILES[:2])}): "
                                    "copy the weights file into it.")
    check_weight_files(path, what)


def weight_files(path: str | Path) -> list[Path]:
    """The weight files in a local model folder (``model.safetensors``, ``pytorch_model.bin``, their shards)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return []
    return sorted({*path.glob("*.safetensors"), *path.glob("pytorch_model*.bin")})


def check_weight_files(path: str | Path, what: str) -> None:
    """Raise ModelUnavailableError naming a ``.safetensors`` file in ``path`` whose header is damaged.

    Only the header is read (no tensor data), so this is cheap. It catches the usual corruption (a truncated
    download, a file overwritten by something else) before transformers reports it without naming the file.
    """
    # Fix (robustness tests): a damaged safetensors file used to surface as a bare SafetensorError (captioner,
    # LLM: a traceback instead of exit status 2) or as a message naming only the folder (VQA model).
    for file in weight_files(path):
        if file.suffix != ".safetensors":
            continue
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise ModelUnavailableError(
                f"The {what} weights file {file} is damaged or incomplete ({exc}): copy or download it again."
            ) from exc


def describe_load_failure(what: str, id_or_path: str, exc: BaseException) -> str:
    """The start of a ModelUnavailableError message for a model that failed to load, naming its weight files.

    A ``pytorch_model.bin`` pickle holding anything but tensors is refused by ``torch.load(weights_only=True)``;
    say so plainly instead of torch's advice to retry with ``weights_only=False``.
    """
    files = weight_files(id_or_path)
    text = str(exc).lower()
    if isinstance(exc, pickle.UnpicklingError) or "weights only load failed" in text:
        bins = ", ".join(str(f) for f in files if f.suffix == ".bin") or str(id_or_path)
        if "global" in text:  # torch names the refused callable/class: "Unsupported GLOBAL ..."
            return (f"Refused to load the {what} weights file {bins}: it holds pickled Python objects other "
                    "than tensors, which could run code, so nothing in it was executed. Use a checkpoint you "
                    "trust, preferably as model.safetensors.")
        return f"The {what} weights file {bins} is damaged or not a PyTorch checkpoint ({type(exc).__name__})."
    named = f" (weights: {', '.join(str(f) for f in files)})" if files else ""
    return f"Could not load the {what} from {id_or_path}{named}: {exc}."


class _Step:
    """Context manager logging 'Loading ...' and how long it took."""

    def __init__(self, what: str, ident: str):
        self.what, self.ident = what, ident

    def __enter__(self) -> "_Step":
        self.start = time.perf_counter()
        logger.info("Loading %s %s ...", self.what, self.ident)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            logger.info("Loaded %s in %.1f s", self.what, time.perf_counter() - self.start)


def load_vqa_model(id_or_path: str, device: str, local_files_only: bool = False,
                   precision: str = "auto", dtype: torch.dtype | str | None = None) -> tuple[VLEForVQA, VLEProcessor]:
    """Load a VLE VQA model (eval mode, on ``device``) and its processor; ``precision="int8"`` runs it in this
    CPU's int8 mode (:mod:`vqa_llm.fast_vle`: OpenVINO static int8 or :func:`vle.quantize_int8`), ``"fp32"``
    keeps it exact on every device. Otherwise the weights' float type is :func:`resolve_dtype`'s ``dtype``: half
    precision on CUDA unless ``dtype="float32"``, fp32 on the CPU."""
    check_precision(precision, device)
    check_model_dir(id_or_path, "VQA model")
    torch_dtype = resolve_dtype(torch.float32 if precision == "fp32" else dtype, device)
    with _Step("VQA model", id_or_path):
        try:
            processor = VLEProcessor.from_pretrained(id_or_path, local_files_only=local_files_only)
            model = VLEForVQA.from_pretrained(id_or_path, local_files_only=local_files_only, dtype=torch_dtype)
        except Exception as exc:  # transformers/safetensors raise many types for missing or corrupt files
            raise ModelUnavailableError(
                f"{describe_load_failure('VQA model', id_or_path, exc)} Check that the folder holds a complete "
                f"VLE VQA checkpoint (config.json, weights, spm.model, preprocessor_config.json). {_OFFLINE_HINT}"
            ) from exc
    model = model.to(device).eval()
    if precision == "int8":  # this CPU's int8 mode: OpenVINO static int8 or PyTorch dynamic int8
        return fast_int8(model, processor, lambda m: apply_precision(m, precision)), processor
    return model, processor


def check_precision(precision: str, device: str) -> None:
    """BadSettingError for an unknown VLE precision, or int8 off the CPU."""
    if precision not in ("auto", "fp32", "int8"):
        raise BadSettingError(f"Unknown VQA precision {precision!r}: use auto (half precision on CUDA), fp32 "
                              "(exact) or int8 (faster on CPU).")
    if precision == "int8" and not str(device).startswith("cpu"):
        raise BadSettingError(f"VQA precision int8 runs on the CPU only, not on {device}: use --vqa-precision "
                              "fp32 there, or --device cpu.")


def apply_precision(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """``model`` with its Linear layers quantised to int8 when ``precision`` is ``int8`` (:func:`vle.quantize_int8`),
    else unchanged; BadSettingError when it cannot be quantised."""
    if precision != "int8":
        return model
    try:
        model = quantize_int8(model)
    except VLEError as exc:
        raise BadSettingError(f"{exc} Or use --vqa-precision fp32.") from exc
    logger.info("%s quantised to int8 (dynamic, Linear layers)", type(model).__name__)
    return model


def load_captioner(id_or_path: str, device: str, local_files_only: bool = False,
                   dtype: torch.dtype | str | None = None, precision: str = "auto") -> BlipCaptioner:
    """Load a BLIP captioner on ``device`` (dtype as :func:`resolve_dtype` says); ``precision="int8"`` (the VQA
    stage's int8 mode, CPU only) quantises its Linear layers to dynamic int8 (:func:`vle.quantize_int8`, which
    takes any model): 2.7× faster captions at base size, the bundled BLIP's captions unchanged in 770 of 772
    test images and as accurate (docs/speed.md)."""
    check_precision(precision, device)
    check_model_dir(id_or_path, "captioning model")
    with _Step("captioner", id_or_path):
        try:
            captioner = BlipCaptioner.from_pretrained(id_or_path, device=device, local_files_only=local_files_only,
                                                      dtype=resolve_dtype(dtype, device))
        except (CaptionerError, OSError, ValueError) as exc:
            raise ModelUnavailableError(f"{exc} {_OFFLINE_HINT}") from exc
        except Exception as exc:  # e.g. a refused pickle: BlipCaptioner only wraps the errors it expects
            raise ModelUnavailableError(f"{describe_load_failure('captioning model', id_or_path, exc)} "
                                        f"{_OFFLINE_HINT}") from exc
    if precision == "int8":
        apply_precision(captioner.model, precision)
    return captioner


def load_chat_llm(profile: Profile, device: str, dtype: torch.dtype | str | None = None) -> ChatLLM:
    """The profile's LLM: an OpenAI-compatible endpoint, or a local model on ``device`` run by the profile's
    ``llm_runtime`` (transformers, or llama.cpp on the CPU for a GGUF file or the Hub LLM's ``llm_cpu_gguf``:
    :mod:`llm.runtime`); dtype, and 4-bit compute dtype, as :func:`resolve_llm_dtype` says (never fp16 unless
    asked)."""
    if profile.openai_base_url:
        model = profile.openai_model or profile.llm
        if not model:
            raise ModelUnavailableError("An OpenAI-compatible endpoint needs a model name: pass --openai-model "
                                        "(or set VQA_LLM_OPENAI_MODEL).")
        logger.info("Using the LLM %s at %s (%d requests in flight at most)", model, profile.openai_base_url,
                    profile.llm_concurrency)
        return OpenAIChatLLM(profile.openai_base_url, model, max_workers=profile.llm_concurrency)
    if not profile.llm:
        raise ModelUnavailableError("The profile names no LLM: pass --llm (or set VQA_LLM_LLM), or use --no-llm.")
    llm_id, gguf_file = profile.llm, profile.llm_gguf_file
    if llm_id.lower() not in (BUNDLED_LLM, "bundled") and not gguf_file:
        check_weight_files(llm_id, "LLM")
    try:
        if llm_id.lower() in (BUNDLED_LLM, "bundled"):
            llm_id, gguf_file = smollm2_gguf()
        with _Step("LLM", f"{llm_id}" + (f" ({gguf_file})" if gguf_file else "")):
            return load_local_llm(
                llm_id, gguf_file, profile.llm_runtime, device=device, quantization=profile.quantization,
                dtype=resolve_llm_dtype(dtype, device),
                trust_remote_code=profile.trust_remote_code, local_files_only=profile.local_files_only,
                adapter=profile.llm_adapter, max_batch_size=profile.max_batch_size, cpu_gguf=profile.llm_cpu_gguf,
            )
    except (LLMError, OSError, ValueError) as exc:
        raise ModelUnavailableError(f"{exc} Or answer without the LLM: --no-llm.") from exc
    except Exception as exc:  # e.g. a refused pickle: the backend only wraps the errors it expects
        raise ModelUnavailableError(f"{describe_load_failure('LLM', llm_id, exc)} Or answer without the LLM: "
                                    "--no-llm.") from exc


def chosen_llm_runtime(profile: Profile) -> str | None:
    """The runtime :func:`load_chat_llm` picks for the profile's local LLM (``None``: no local LLM): under
    ``auto`` with downloads off (``local_files_only``), transformers when the CPU GGUF it would run is not
    cached. A failed llama.cpp load under ``auto`` (a GGUF download or load that fails) still falls back to
    transformers at load time."""
    if not profile.use_llm or profile.openai_base_url or not profile.llm:
        return None
    if (cpu_gguf_runs(profile) and profile.llm_runtime == "auto" and profile.local_files_only
            and not gguf_cached(profile.llm_cpu_gguf, os.environ)):
        return "transformers"
    llm_id, gguf_file = profile.llm, profile.llm_gguf_file
    try:
        if llm_id.lower() in (BUNDLED_LLM, "bundled"):
            llm_id, gguf_file = smollm2_gguf()
        return choose_runtime(profile.llm_runtime, llm_id, gguf_file, resolve_device(profile.device),
                              profile.quantization, profile.llm_cpu_gguf)[0]
    except LLMError:
        return None


def load_components(profile: Profile, use_llm: bool = True, use_captioner: bool = True,
                    vqa_dtype: torch.dtype | str | None = None) -> Components:
    """Load every model the profile names (the LLM only when ``use_llm`` and ``profile.use_llm``), each in the
    device's default dtype (:func:`resolve_dtype`; ``vqa_dtype="float32"`` keeps VLE exact on CUDA), TF32 on."""
    device = resolve_device(profile.device)
    enable_tf32(device)
    kwargs: dict[str, Any] = {"device": device, "local_files_only": profile.local_files_only}
    vqa_model, processor = load_vqa_model(profile.vqa_model, **kwargs, precision=profile.vqa_precision,
                                          dtype=vqa_dtype)
    captioner = load_captioner(profile.captioner, **kwargs, precision=profile.vqa_precision) if use_captioner else None
    llm = load_chat_llm(profile, device) if use_llm and profile.use_llm else None
    ids = profile.model_ids()
    model_ids = {
        "vqa": ids["vqa"],
        "captioner": ids["captioner"] if captioner is not None else None,
        "llm": (llm.model_id if llm is not None and not profile.openai_base_url else ids["llm"]) if llm else None,
    }
    return Components(vqa_model, processor, captioner, llm, model_ids)
