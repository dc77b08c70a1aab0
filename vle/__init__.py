"""VLE (Vision-Language Encoder) for today's transformers.

``import vle`` registers the model family with transformers' Auto classes, so that
``AutoModel.from_pretrained("hfl/vle-base")`` and friends work on the published checkpoints.
"""

from transformers import AutoConfig, AutoModel, AutoModelForVisualQuestionAnswering, AutoProcessor

from .configuration_vle import VLEConfig
from .errors import ImageLoadError, VLEError, VLEInputError
from .image_io import image_sha256, load_image
from .modeling_vle import (
    VLEForITM,
    VLEForMLM,
    VLEForPBC,
    VLEForPreTraining,
    VLEForVCRQ2A,
    VLEForVCRQA2R,
    VLEForVQA,
    VLEHeadOutput,
    VLEModel,
    VLEModelOutput,
    VLEPreTrainedModel,
)
from .pipeline_vle import (
    VLEForITMPipeline,
    VLEForPBCPipeline,
    VLEForVCRQ2APipeline,
    VLEForVCRQA2RPipeline,
    VLEForVQAPipeline,
)
from .processing_vle import VLEProcessor
from .quantization import quantize_int8

AutoConfig.register("vle", VLEConfig, exist_ok=True)
AutoModel.register(VLEConfig, VLEModel, exist_ok=True)
AutoModelForVisualQuestionAnswering.register(VLEConfig, VLEForVQA, exist_ok=True)
AutoProcessor.register(VLEConfig, VLEProcessor, exist_ok=True)

__all__ = [
    "VLEConfig",
    "VLEModel",
    "VLEModelOutput",
    "VLEHeadOutput",
    "VLEPreTrainedModel",
    "VLEForVQA",
    "VLEForITM",
    "VLEForPBC",
    "VLEForMLM",
    "VLEForPreTraining",
    "VLEForVCRQ2A",
    "VLEForVCRQA2R",
    "VLEProcessor",
    "quantize_int8",
    "VLEForVQAPipeline",
    "VLEForITMPipeline",
    "VLEForPBCPipeline",
    "VLEForVCRQ2APipeline",
    "VLEForVCRQA2RPipeline",
    "VLEError",
    "VLEInputError",
    "ImageLoadError",
    "load_image",
    "image_sha256",
]
