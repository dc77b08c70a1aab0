"""Loading the models a :class:`~vqa_llm.profiles.Profile` names, each once, with progress logged.

Every failure (missing folder or file, corrupt weights, a Hub id with no network and no cache) becomes a
:class:`~vqa_llm.errors.ModelUnavailableError` naming the path and the way out.
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from captioner import BlipCaptioner, CaptionerError
from llm import ChatLLM, LLMError, OpenAIChatLLM, TransformersChatLLM, smollm2_gguf
from vle import VLEError, VLEForVQA, quantize_int8
from vle.processing_vle import VLEProcessor

from .errors import BadSettingError, ModelUnavailableError
from .profiles import BUNDLED_LLM, Profile

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
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


def resolve_device(device: str | None) -> str:
    """``None``/``"auto"`` → ``"cuda"`` when available, else ``"cpu"``; anything else as given."""
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def _looks_local(id_or_path: str) -> bool:
    path = Path(id_or_path).expanduser()
    return path.is_absolute() or str(id_or_path).startswith((".", "~")) or path.exists()


def check_model_dir(id_or_path: str, what: str) -> None:
    """For a local path: raise ModelUnavailableError unless it is a folder with config.json and weights."""
    if not _looks_local(id_or_path):
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
                   precision: str = "fp32") -> tuple[VLEForVQA, VLEProcessor]:
    """Load a VLE VQA model (eval mode, on ``device``) and its processor; ``precision="int8"`` quantises its
    Linear layers (CPU only, :func:`vle.quantize_int8`)."""
    if precision not in ("fp32", "int8"):
        raise BadSettingError(f"Unknown VQA precision {precision!r}: use fp32 (exact) or int8 (faster on CPU).")
    if precision == "int8" and not str(device).startswith("cpu"):
        raise BadSettingError(f"VQA precision int8 runs on the CPU only, not on {device}: use --vqa-precision "
                              "fp32 there, or --device cpu.")
    check_model_dir(id_or_path, "VQA model")
    with _Step("VQA model", id_or_path):
        try:
            processor = VLEProcessor.from_pretrained(id_or_path, local_files_only=local_files_only)
            model = VLEForVQA.from_pretrained(id_or_path, local_files_only=local_files_only)
        except Exception as exc:  # transformers/safetensors raise many types for missing or corrupt files
            raise ModelUnavailableError(
                f"{describe_load_failure('VQA model', id_or_path, exc)} Check that the folder holds a complete "
                f"VLE VQA checkpoint (config.json, weights, spm.model, preprocessor_config.json). {_OFFLINE_HINT}"
            ) from exc
    model = model.to(device).eval()
    if precision == "int8":
        try:
            model = quantize_int8(model)
        except VLEError as exc:
            raise BadSettingError(f"{exc} Or use --vqa-precision fp32.") from exc
        logger.info("VQA model quantised to int8 (dynamic, Linear layers)")
    return model, processor


def load_captioner(id_or_path: str, device: str, local_files_only: bool = False) -> BlipCaptioner:
    """Load a BLIP captioner on ``device``."""
    check_model_dir(id_or_path, "captioning model")
    with _Step("captioner", id_or_path):
        try:
            return BlipCaptioner.from_pretrained(id_or_path, device=device, local_files_only=local_files_only)
        except (CaptionerError, OSError, ValueError) as exc:
            raise ModelUnavailableError(f"{exc} {_OFFLINE_HINT}") from exc
        except Exception as exc:  # e.g. a refused pickle: BlipCaptioner only wraps the errors it expects
            raise ModelUnavailableError(f"{describe_load_failure('captioning model', id_or_path, exc)} "
                                        f"{_OFFLINE_HINT}") from exc


def load_chat_llm(profile: Profile, device: str) -> ChatLLM:
    """The profile's LLM: an OpenAI-compatible endpoint, or a local transformers model (GGUF included)."""
    if profile.openai_base_url:
        model = profile.openai_model or profile.llm
        if not model:
            raise ModelUnavailableError("An OpenAI-compatible endpoint needs a model name: pass --openai-model "
                                        "(or set VQA_LLM_OPENAI_MODEL).")
        logger.info("Using the LLM %s at %s", model, profile.openai_base_url)
        return OpenAIChatLLM(profile.openai_base_url, model)
    if not profile.llm:
        raise ModelUnavailableError("The profile names no LLM: pass --llm (or set VQA_LLM_LLM), or use --no-llm.")
    llm_id, gguf_file = profile.llm, profile.llm_gguf_file
    if llm_id.lower() not in (BUNDLED_LLM, "bundled") and not gguf_file:
        check_weight_files(llm_id, "LLM")
    try:
        if llm_id.lower() in (BUNDLED_LLM, "bundled"):
            llm_id, gguf_file = smollm2_gguf()
        with _Step("LLM", f"{llm_id}" + (f" ({gguf_file})" if gguf_file else "")):
            return TransformersChatLLM.from_pretrained(
                llm_id, gguf_file=gguf_file, device=device, quantization=profile.quantization,
                trust_remote_code=profile.trust_remote_code, local_files_only=profile.local_files_only,
            )
    except (LLMError, OSError, ValueError) as exc:
        raise ModelUnavailableError(f"{exc} Or answer without the LLM: --no-llm.") from exc
    except Exception as exc:  # e.g. a refused pickle: the backend only wraps the errors it expects
        raise ModelUnavailableError(f"{describe_load_failure('LLM', llm_id, exc)} Or answer without the LLM: "
                                    "--no-llm.") from exc


def load_components(profile: Profile, use_llm: bool = True, use_captioner: bool = True) -> Components:
    """Load every model the profile names (the LLM only when ``use_llm`` and ``profile.use_llm``)."""
    device = resolve_device(profile.device)
    kwargs: dict[str, Any] = {"device": device, "local_files_only": profile.local_files_only}
    vqa_model, processor = load_vqa_model(profile.vqa_model, **kwargs, precision=profile.vqa_precision)
    captioner = load_captioner(profile.captioner, **kwargs) if use_captioner else None
    llm = load_chat_llm(profile, device) if use_llm and profile.use_llm else None
    ids = profile.model_ids()
    model_ids = {
        "vqa": ids["vqa"],
        "captioner": ids["captioner"] if captioner is not None else None,
        "llm": (llm.model_id if llm is not None and not profile.openai_base_url else ids["llm"]) if llm else None,
    }
    return Components(vqa_model, processor, captioner, llm, model_ids)
