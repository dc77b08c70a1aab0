"""A CPU fast mode for VLE VQA on OpenVINO: the model exported once, quantised to static int8 with NNCF, cached.

    from vle import VLEForVQA, VLEProcessor
    from vle.openvino_vqa import OpenVINOVLEForVQA, calibration_inputs
    model = VLEForVQA.from_pretrained("hfl/vle-base-for-vqa").eval()
    fast = OpenVINOVLEForVQA.from_model(model, cache_dir="~/.cache/vqa_llm/vle-openvino",
                                        calibration=calibration_inputs(model, processor, images, questions))
    fast.encode_image(pixel_values); fast(input_ids=..., attention_mask=..., image_embeds=...).logits

Two graphs are exported with ``openvino.convert_model``, matching the two calls the VQA pipeline makes: the
image side (:meth:`VLEForVQA.encode_image`: CLIP tower, layer norm, projection) and the rest (text encoder,
co-attention layers, poolers, VQA classifier) from ``image_embeds``, so a second question about an image still
skips the vision encoder. NNCF's post-training quantisation (``model_type=TRANSFORMER``) makes both int8 —
weights *and* activations, with ranges measured on the calibration inputs — which is what the CPU's int8 dot
product instructions (AVX-512 VNNI, AMX) run fastest. Where a CPU lacks them, static int8 gains little over fp32
(docs/speed.md), so the caller picks this mode by the CPU's features (:func:`cpu_has_int8_dot_product`).

The export takes a minute or two at base size; it is saved under ``cache_dir/<key>/`` (``manifest.json`` written
last, the folder renamed into place) and loaded from there afterwards. The key hashes the weights (every tensor
of the state dict), the config, the calibration inputs and the versions of openvino and nncf, so new weights or
a new release get a new export, and a folder whose files do not match its manifest is exported again.

Inference only, CPU only, the VQA head only; outputs carry ``logits`` and ``pooler_output`` (the fused vector).
Needs ``pip install openvino nncf``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import VLEError
from .modeling_vle import VLEForVQA, VLEHeadOutput

logger = logging.getLogger(__name__)

#: bump when the exported graphs change in a way old cache folders do not have
FORMAT = 2
MANIFEST = "manifest.json"
GRAPHS = ("image_encoder", "fusion")
FUSION_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "image_embeds")
INSTALL_HINT = "the OpenVINO fast mode needs openvino and nncf: pip install openvino nncf"
#: CPU flags (as in /proc/cpuinfo) of int8 dot-product instructions that static int8 needs to pay
INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def openvino_installed() -> bool:
    """Whether openvino and nncf are importable (without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("openvino", "nncf"))


def cpu_has_int8_dot_product(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has int8 dot-product instructions (VNNI or AMX), read from ``/proc/cpuinfo``'s flags (or
    the text given); ``False`` where that file does not exist."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return any(flag in flags for flag in INT8_DOT_PRODUCT_FLAGS)


class _ImageSide(nn.Module):
    def __init__(self, model: VLEForVQA):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)


class _FusionSide(nn.Module):
    def __init__(self, model: VLEForVQA):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids, image_embeds):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                         image_embeds=image_embeds, return_dict=True)
        return out.logits, out.pooler_output


def calibration_inputs(model: VLEForVQA, processor: Any, images: Sequence[Any], questions: Sequence[str],
                       batch_size: int = 4) -> list[dict[str, torch.Tensor]]:
    """Calibration batches for :meth:`OpenVINOVLEForVQA.from_model`: ``questions[i]`` about ``images[i]``,
    ``batch_size`` pairs per batch, processed as the pipeline processes them."""
    if not images or len(images) != len(questions):
        raise VLEError("Calibration needs one question per image, at least one of each.")
    batches = []
    for start in range(0, len(images), batch_size):
        enc = processor(text=list(questions[start:start + batch_size]), images=list(images[start:start + batch_size]),
                        return_tensors="pt")
        batches.append({k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids", "pixel_values")
                        if k in enc})
    return batches


@dataclass(frozen=True)
class Calibration:
    """Calibration inputs made only when an export needs them: ``make()`` returns the batches
    (:func:`calibration_inputs`), ``key`` names them for the cache (where they come from, how many, the processor's
    settings), so that a cached export is served without building them."""

    key: str
    make: Callable[[], list[dict[str, torch.Tensor]]]


Batches = Sequence[dict[str, torch.Tensor]]


def _fusion_feed(batch: dict[str, torch.Tensor], image_embeds: torch.Tensor) -> dict[str, torch.Tensor]:
    ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    types = batch.get("token_type_ids")
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids) if mask is None else mask,
            "token_type_ids": torch.zeros_like(ids) if types is None else types, "image_embeds": image_embeds}


def _padded(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``batch`` grown to two rows with the second padded, so that tracing records the masked attention path
    (an all-ones mask would let the model skip it, and the exported graph would ignore padding)."""
    out = {}
    for key, value in batch.items():
        value = value[:1]
        if key in ("input_ids", "attention_mask", "token_type_ids"):
            value = torch.cat([value, torch.zeros_like(value)], dim=1)  # one padding position per row
            value = torch.cat([value, value])
            if key == "attention_mask":
                value[1, value.shape[1] // 2:] = 0
        else:
            value = torch.cat([value, value])
        out[key] = value
    return out


def weights_key(model: VLEForVQA, calibration: Batches | Calibration, quantize: bool = True) -> str:
    """SHA-256 of what an export depends on: every tensor of the state dict, the config, the calibration inputs
    (their tensors, or a :class:`Calibration`'s key), int8 or not, the export format and the openvino/nncf
    versions."""
    digest = hashlib.sha256()
    versions = {name: importlib.metadata.version(name) for name in ("openvino", "nncf")}
    header = {"format": FORMAT, "int8": quantize, "versions": versions, "config": model.config.to_dict()}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    if isinstance(calibration, Calibration):
        digest.update(b"calibration:" + calibration.key.encode())
        return digest.hexdigest()
    for batch in calibration:
        for name, tensor in sorted(batch.items()):
            digest.update(name.encode())
            digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def is_complete(folder: Path, key: str) -> bool:
    """Whether ``folder`` holds a finished export for ``key``: its manifest names the key and every file it lists
    is there with its recorded size."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("key") != key or manifest.get("format") != FORMAT:
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(f"{g}.xml" in files for g in GRAPHS):
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in files.items())


def export(model: VLEForVQA, calibration: Sequence[dict[str, torch.Tensor]], folder: Path, key: str,
           quantize: bool = True) -> None:
    """Convert ``model``'s two graphs, quantise them to int8 on ``calibration`` (unless ``quantize=False``), and
    save them into ``folder`` atomically (a temporary folder beside it renamed into place)."""
    import nncf
    import openvino as ov

    started = time.perf_counter()
    model = model.eval()
    with torch.inference_mode():
        embeds = [model.encode_image(batch["pixel_values"]) for batch in calibration]
    example = _padded(calibration[0])
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns about Python branches; the padded example takes the masked path (see _padded)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        example_embeds = model.encode_image(example["pixel_values"])
        image_graph = ov.convert_model(_ImageSide(model), example_input={"pixel_values": example["pixel_values"]})
        fusion_graph = ov.convert_model(_FusionSide(model), example_input=_fusion_feed(example, example_embeds))
    if quantize:
        image_data = [{"pixel_values": b["pixel_values"].numpy()} for b in calibration]
        fusion_data = [{k: v.numpy() for k, v in _fusion_feed(b, e).items()} for b, e in zip(calibration, embeds)]
        nncf.set_log_level(logging.WARNING)
        # the poolers and the answer classifier stay fp32: a sliver of the compute, and their error lands
        # directly on the logits (half the logit error at base size, docs/speed.md)
        head = nncf.IgnoredScope(patterns=[".*pooler.*", ".*vqa_classifier.*"], validate=False)
        with contextlib.redirect_stdout(io.StringIO()):  # NNCF draws progress bars on stdout
            image_graph = nncf.quantize(image_graph, nncf.Dataset(image_data), subset_size=len(image_data),
                                        model_type=nncf.ModelType.TRANSFORMER)
            fusion_graph = nncf.quantize(fusion_graph, nncf.Dataset(fusion_data), subset_size=len(fusion_data),
                                         model_type=nncf.ModelType.TRANSFORMER, ignored_scope=head)
    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        for name, graph in zip(GRAPHS, (image_graph, fusion_graph)):
            ov.save_model(graph, temp / f"{name}.xml", compress_to_fp16=False)
        files = {f.name: f.stat().st_size for f in sorted(temp.iterdir()) if f.is_file()}
        manifest = {"format": FORMAT, "key": key, "int8": quantize, "files": files}
        (temp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if folder.exists():
            _remove(folder)
        try:
            temp.rename(folder)
        except OSError:
            if not is_complete(folder, key):  # not another process's finished export: a real failure
                raise
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
    logger.info("Exported the VLE VQA model to OpenVINO%s in %.0f s: %s", " int8" if quantize else "",
                time.perf_counter() - started, folder)


def _remove(folder: Path) -> None:
    """Delete ``folder``: renamed aside first (atomic), so no reader sees it half deleted under its own name."""
    trash = folder.with_name(f".trash-{folder.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        folder.rename(trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


class OpenVINOVLEForVQA:
    """VLE VQA inference through two compiled OpenVINO graphs, called like :class:`VLEForVQA` for what the VQA
    pipeline needs: :meth:`encode_image` and ``model(input_ids, attention_mask, token_type_ids, image_embeds |
    pixel_values)`` returning ``logits`` and ``pooler_output``."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, folder: str | Path, config: Any, threads: int | None = None):
        import openvino as ov

        self.folder = Path(folder)
        self.config = config
        core = ov.Core()
        settings = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            settings["INFERENCE_NUM_THREADS"] = int(threads)
        self._image = core.compile_model(self.folder / "image_encoder.xml", "CPU", settings)
        self._fusion = core.compile_model(self.folder / "fusion.xml", "CPU", settings)

    @classmethod
    def from_model(cls, model: VLEForVQA, cache_dir: str | Path, calibration: Batches | Calibration,
                   quantize: bool = True) -> OpenVINOVLEForVQA:
        """The fast model of ``model`` (fp32, on the CPU): exported and quantised on first use, from
        ``cache_dir`` afterwards. ``calibration``: the batches, or a :class:`Calibration` that makes them only
        for an export. VLEError when openvino/nncf are missing or the model is not on the CPU; OSError when the
        cache cannot be written."""
        if not openvino_installed():
            raise VLEError(f"{INSTALL_HINT} (or use the PyTorch int8 mode).")
        if not isinstance(model, VLEForVQA):
            raise VLEError(f"The OpenVINO fast mode takes a VLEForVQA model, not {type(model).__name__}.")
        if {p.device.type for p in model.parameters()} != {"cpu"} or model.dtype != torch.float32:
            raise VLEError("The OpenVINO fast mode exports an fp32 model on the CPU; load it with dtype=float32 "
                           "on the CPU.")
        if not isinstance(calibration, Calibration) and not calibration:
            raise VLEError("The OpenVINO int8 export needs calibration inputs (see calibration_inputs).")
        key = weights_key(model, calibration, quantize)
        root = Path(cache_dir).expanduser()
        root.mkdir(parents=True, exist_ok=True)  # an unwritable cache fails here, before the slow export
        folder = root / key[:16]
        if not is_complete(folder, key):
            if folder.exists():
                logger.warning("The OpenVINO export %s is incomplete or damaged; exporting again", folder)
            logger.info("Exporting the VLE VQA model to OpenVINO once (later starts load %s) ...", folder)
            batches = calibration.make() if isinstance(calibration, Calibration) else calibration
            if not batches:
                raise VLEError("The OpenVINO int8 export needs calibration inputs (see calibration_inputs).")
            export(model, batches, folder, key, quantize=quantize)
        return cls(folder, model.config, threads=torch.get_num_threads())

    def eval(self) -> OpenVINOVLEForVQA:
        return self

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """See :meth:`VLEForVQA.encode_image`."""
        return torch.from_numpy(self._image({"pixel_values": pixel_values.float().numpy()})[0].copy())

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None, image_embeds: torch.Tensor | None = None,
                 pixel_values: torch.Tensor | None = None, **unsupported: Any) -> VLEHeadOutput:
        if unsupported:
            raise VLEError(f"The OpenVINO fast mode answers VQA questions only; it takes no {sorted(unsupported)}.")
        if image_embeds is None:
            if pixel_values is None:
                raise VLEError("Pass pixel_values or image_embeds.")
            image_embeds = self.encode_image(pixel_values)
        feed = _fusion_feed({"input_ids": input_ids, "attention_mask": attention_mask,
                             "token_type_ids": token_type_ids}, image_embeds.float())
        logits, pooled = self._fusion({k: v.numpy() for k, v in feed.items()}).values()
        return VLEHeadOutput(logits=torch.from_numpy(logits.copy()), pooler_output=torch.from_numpy(pooled.copy()))

