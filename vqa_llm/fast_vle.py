"""Which int8 mode ``--vqa-precision int8`` runs the VLE VQA model in on this CPU, and building it.

Two modes, each faster than the other on some CPUs (docs/speed.md#vle-int8-fast-mode):

* ``openvino``: the model exported to OpenVINO and quantised to static int8 with NNCF (weights and activations,
  :mod:`vle.openvino_vqa`), cached on disk. Fastest where the CPU has int8 dot-product instructions (AVX-512
  VNNI, AVX-VNNI, AMX); without them it gains little over fp32.
* ``torch.ao``: PyTorch's dynamic int8 of the Linear layers (:func:`vle.quantize_int8`), no export.

``auto`` (the default) takes ``openvino`` when openvino and nncf are installed and the CPU has those
instructions, else ``torch.ao``; ``VQA_LLM_INT8_RUNTIME=openvino|torch.ao`` forces one. If the OpenVINO export
fails (a cache that cannot be written is not a failure: the export then goes to a temporary folder), ``auto``
logs why and uses ``torch.ao``.

The static int8 ranges are calibrated on 128 easy-VQA training questions (shapes: the bundled models' own
domain; for a model of photos such as the Hub profiles' they are a stand-in, see docs/speed.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
from collections.abc import Mapping

from PIL import Image

from llm.gguf_cache import cache_root
from vle import VLEError, VLEForVQA
from vle.openvino_vqa import (
    Calibration,
    OpenVINOVLEForVQA,
    calibration_inputs,
    cpu_has_int8_dot_product,
    openvino_installed,
)
from vle.processing_vle import VLEProcessor

from .errors import BadSettingError

logger = logging.getLogger(__name__)

INT8_RUNTIME_ENV = "VQA_LLM_INT8_RUNTIME"
INT8_RUNTIMES = ("auto", "openvino", "torch.ao")
#: calibration questions: 8 gave 98.67% on 1,500 test questions where fp32 and 128 gave 99.53% (docs/speed.md)
CALIBRATION_SIZE = 128
#: what a run record names as ``vqa_precision`` for each mode (``int8`` as before the OpenVINO mode existed)
INT8_RECORDS = {"torch.ao": "int8", "openvino": "int8-openvino"}


def int8_runtime(environ: Mapping[str, str] | None = None, cpuinfo: str | None = None) -> str:
    """``"openvino"`` or ``"torch.ao"``: the int8 mode for this machine (see the module docstring)."""
    environ = os.environ if environ is None else environ
    requested = (environ.get(INT8_RUNTIME_ENV) or "auto").strip().lower()
    if requested not in INT8_RUNTIMES:
        raise BadSettingError(f"Unknown {INT8_RUNTIME_ENV}={requested!r}: use {', '.join(INT8_RUNTIMES)}.")
    if requested == "openvino" and not openvino_installed():
        raise BadSettingError(f"{INT8_RUNTIME_ENV}=openvino needs openvino and nncf: pip install openvino nncf")
    if requested != "auto":
        return requested
    return "openvino" if openvino_installed() and cpu_has_int8_dot_product(cpuinfo) else "torch.ao"


def calibration_examples(count: int = CALIBRATION_SIZE, seed: int = 0) -> tuple[list[Image.Image], list[str]]:
    """``count`` questions and their images drawn (seeded) from easy-VQA's *training* split, as the calibration
    set (the test split is kept for measuring)."""
    from easy_vqa import get_train_image_paths, get_train_questions

    questions, _, image_ids = get_train_questions()
    paths = get_train_image_paths()
    picked = random.Random(seed).sample(range(len(questions)), count)
    return [Image.open(paths[image_ids[i]]).convert("RGB") for i in picked], [questions[i] for i in picked]


def calibration_key(processor: VLEProcessor, count: int = CALIBRATION_SIZE, seed: int = 0) -> str:
    """What the calibration inputs of :func:`calibration_examples` depend on, for the export cache's key: where
    they come from, how many, the seed, and the processor's image settings and vocabulary."""
    vocabulary = hashlib.sha256(json.dumps(sorted(processor.tokenizer.get_vocab().items())).encode()).hexdigest()
    return json.dumps({"source": "easy-vqa train", "count": count, "seed": seed, "vocabulary": vocabulary,
                       "tokenizer": type(processor.tokenizer).__name__,
                       "image_processor": processor.image_processor.to_dict()}, sort_keys=True, default=str)


def openvino_int8(model: VLEForVQA, processor: VLEProcessor,
                  environ: Mapping[str, str] | None = None) -> OpenVINOVLEForVQA:
    """``model`` in OpenVINO static int8, exported once into ``$VQA_LLM_CACHE/vle-openvino`` (a temporary
    folder when the cache is off or cannot be written)."""
    calibration = Calibration(calibration_key(processor),
                              lambda: calibration_inputs(model, processor, *calibration_examples()))
    root = cache_root(environ)
    if root is not None:
        try:
            return OpenVINOVLEForVQA.from_model(model, root / "vle-openvino", calibration)
        except OSError as exc:
            logger.warning("Could not write the OpenVINO export under %s (%s); exporting into a temporary folder",
                           root, exc)
    return OpenVINOVLEForVQA.from_model(model, tempfile.mkdtemp(prefix="vle-openvino-"), calibration)


def fast_int8(model: VLEForVQA, processor: VLEProcessor, quantize_torch) -> VLEForVQA | OpenVINOVLEForVQA:
    """``model`` in this machine's int8 mode; ``quantize_torch(model)`` applies the ``torch.ao`` one."""
    runtime = int8_runtime()
    if runtime == "torch.ao" and not openvino_installed() and cpu_has_int8_dot_product():
        logger.info("This CPU runs static int8 fastest through OpenVINO: pip install openvino nncf")
    if runtime == "openvino":
        try:
            fast = openvino_int8(model, processor)
            logger.info("VLE VQA model in OpenVINO static int8 (%s)", fast.folder)
            return fast
        except (VLEError, OSError, RuntimeError) as exc:
            if os.environ.get(INT8_RUNTIME_ENV, "").strip().lower() == "openvino":
                raise BadSettingError(f"The OpenVINO int8 mode failed: {exc}") from exc
            logger.warning("The OpenVINO int8 mode failed (%s); using PyTorch's dynamic int8 instead.", exc)
    return quantize_torch(model)
