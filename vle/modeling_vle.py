"""PyTorch VLE: a DeBERTa-v3 text encoder and a CLIP ViT image encoder joined by co-attention fusion layers.

Each stream is projected to the fusion width, gets a token-type embedding (text = 0, image = 1, VCR object
tags >= 2), then ``num_hidden_layers`` fusion layers run on both streams side by side: self-attention,
cross-attention to the other stream, feed-forward (BERT-style post-LayerNorm). A tanh pooler on each stream's
first token gives two vectors that are concatenated (``pooler_output``). Task heads: VQA, ITM, PBC, MLM,
VCR Q2A and QA2R.

Module and parameter names follow the published ``hfl/vle-*`` state dicts exactly (``vle.cross_modal_text_layers
.0.crossattention.self.query.weight``, ``vqa_classifier.3.bias``, ...), although we would name some differently
today (``attention.self``, the numbered ``nn.Sequential`` heads), so that those checkpoints load unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoConfig, AutoModel, CLIPVisionModel, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.models.deberta_v2.modeling_deberta_v2 import (
    DisentangledSelfAttention,
    LegacyDebertaV2LMPredictionHead,
    LegacyDebertaV2OnlyMLMHead,
)
from transformers.utils import ModelOutput, logging

from .configuration_vle import VLEConfig

logger = logging.get_logger(__name__)

IMAGE_TOKEN_TYPE = 1

#: where each pretraining head lives in a checkpoint; hfl/vle-base holds them all, so each head class ignores
#: the others' weights when it loads from such a checkpoint (they are not missing parts of that class)
PRETRAINING_HEAD_KEYS = {"itm": r"^itm_score\.", "pbc": r"^pbc_classifier\.", "mlm": r"^mlm_score\."}


def _sibling_heads(own: str) -> list[str]:
    return [r"position_ids", *(pattern for name, pattern in PRETRAINING_HEAD_KEYS.items() if name != own)]


@dataclass
class VLEModelOutput(ModelOutput):
    """Output of [`VLEModel`].

    Args:
        pooler_output: ``[batch, 2 * hidden]``, text pooler output followed by the image pooler output.
        text_embeds: ``[batch, text_len, hidden]``, text stream after the last fusion layer.
        image_embeds: ``[batch, 1 + patches (+ boxes), hidden]``, image stream after the last fusion layer.
    """

    pooler_output: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None


@dataclass
class VLEHeadOutput(ModelOutput):
    """Output of the VLE task heads: ``logits`` (and ``loss`` when asked), plus the fused representation.

    Logit shapes: VQA ``[batch, num_labels]``, ITM ``[batch, 2]``, PBC ``[batch, patches, 2]``, MLM
    ``[batch, text_len, vocab]``, VCR ``[batch, 4]``. For VCR the fused fields are those of the last choice.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None


# Names the original code used for the same output classes.
VLEForVQAOutput = VLEForITMOutput = VLEForPBCOutput = VLEForMLMOutput = VLEHeadOutput
VLEForVCRQ2AOutput = VLEForVCRQA2ROutput = VLEHeadOutput


def additive_attention_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``[batch, keys]`` 1/0 mask -> ``[batch, 1, 1, keys]`` additive mask (0 or dtype min); None if nothing is
    masked."""
    if mask is None or bool(mask.all()):
        return None
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


def interpolate_position_embedding(weight: torch.Tensor, new_grid: int) -> torch.Tensor:
    """Resize CLIP position embeddings ``[1 + g*g, dim]`` to ``[1 + new_grid**2, dim]``.

    Bicubic interpolation of the patch grid with the CLS row kept, as the VLE VQA fine-tuning did when it
    raised the image size (the released VQA checkpoints carry the result).
    """
    grid = math.isqrt(weight.shape[0] - 1)
    patches = weight[1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(new_grid * new_grid, -1).to(weight.dtype)
    return torch.cat([weight[:1], patches], dim=0)


class VLEFusionSelfAttention(nn.Module):
    """Multi-head attention of one fusion sub-layer (self- or cross-attention, by what is passed as context)."""

    def __init__(self, config: VLEConfig):
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(
                f"hidden_size {config.hidden_size} is not a multiple of "
                f"num_attention_heads {config.num_attention_heads}"
            )
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, hidden_states: torch.Tensor, context: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        query = self._heads(self.query(hidden_states))
        key = self._heads(self.key(context))
        value = self._heads(self.value(context))
        dropout = self.dropout_prob if self.training else 0.0
        if self.config.fusion_attn_implementation == "sdpa":
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout)
        else:
            scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.head_dim)
            if attention_mask is not None:
                scores = scores + attention_mask
            probs = F.dropout(scores.softmax(dim=-1), p=dropout, training=self.training)
            out = torch.matmul(probs, value)
        return out.transpose(1, 2).reshape(hidden_states.shape)


class VLEFusionOutput(nn.Module):
    """Projection back to the fusion width, dropout, residual and post-LayerNorm (after attention or the FFN)."""

    def __init__(self, config: VLEConfig, input_size: int):
        super().__init__()
        self.dense = nn.Linear(input_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class VLEFusionAttention(nn.Module):
    def __init__(self, config: VLEConfig):
        super().__init__()
        self.self = VLEFusionSelfAttention(config)
        self.output = VLEFusionOutput(config, config.hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.output(self.self(hidden_states, context, context_mask), hidden_states)


class VLEFusionIntermediate(nn.Module):
    def __init__(self, config: VLEConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class VLEFusionLayer(nn.Module):
    """One co-attention layer of one stream: self-attention, cross-attention to the other stream, feed-forward."""

    def __init__(self, config: VLEConfig):
        super().__init__()
        self.attention = VLEFusionAttention(config)
        self.crossattention = VLEFusionAttention(config)
        self.intermediate = VLEFusionIntermediate(config)
        self.output = VLEFusionOutput(config, config.intermediate_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        other_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        other_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden_states = self.attention(hidden_states, hidden_states, attention_mask)
        hidden_states = self.crossattention(hidden_states, other_states, other_attention_mask)
        return self.output(self.intermediate(hidden_states), hidden_states)


class VLEPooler(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


def _zero_padding_queries(module: nn.Module, args: tuple, kwargs: dict, output: tuple) -> tuple:
    """Forward hook on DeBERTa's attention: zero the context of padding query positions.

    DeBERTa-v2 under transformers 4.2x-4.3x (what VLE was trained and released with) used ``XSoftmax``, which
    gives padding *queries* an all-zero attention row; transformers 5 gives them a uniform row instead. Real
    tokens are unaffected either way, but the padded positions of ``text_embeds`` (and MLM logits) differ. This
    restores the original numbers. It is stateless (the mask comes with the call), so it is thread-safe.
    """
    mask = args[1] if len(args) > 1 else kwargs["attention_mask"]
    if mask.dim() != 4:
        return output
    query_valid = mask.bool().any(dim=-1).transpose(1, 2)  # [batch, len, 1]
    return (output[0] * query_valid.to(output[0].dtype), *output[1:])


class VLEVisionTower(nn.Module):
    """Holds the CLIP vision model one level down, as ``vision_model.vision_model``.

    transformers 5 flattened ``CLIPVisionModel`` (no inner ``vision_model`` any more); the published
    checkpoints name its weights ``vle.vision_model.vision_model.*``, so this wrapper restores that level.
    """

    def __init__(self, vision_model: PreTrainedModel):
        super().__init__()
        self.vision_model = vision_model

    @property
    def config(self):
        return self.vision_model.config

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False):
        return self.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)


class VLEPreTrainedModel(PreTrainedModel):
    """Weight init and checkpoint-loading rules shared by all VLE classes."""

    config_class = VLEConfig
    config: VLEConfig
    base_model_prefix = "vle"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    # The original saved the encoders' ``position_ids`` buffers as persistent keys; today they are not.
    _keys_to_ignore_on_load_missing = [r"position_ids"]
    _keys_to_ignore_on_load_unexpected = [r"position_ids"]
    _no_split_modules = ["VLEFusionLayer", "CLIPEncoderLayer", "DebertaV2Layer"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LegacyDebertaV2LMPredictionHead):  # a bare parameter: left as torch.empty otherwise
            init.zeros_(module.bias)

    @classmethod
    def from_vision_text_pretrained(
        cls,
        vision_model_name_or_path: str | None = None,
        text_model_name_or_path: str | None = None,
        image_size: int | None = None,
        **kwargs: Any,
    ) -> VLEPreTrainedModel:
        """Build a new VLE (or head class) from a pretrained CLIP vision tower and a pretrained text encoder.

        ``vision_*``/``text_*`` keyword arguments go to the encoders' ``from_pretrained`` (``vision_model=`` /
        ``text_model=`` pass ready modules); the others to [`VLEConfig`]. ``image_size`` resizes the vision
        position embeddings by bicubic interpolation (as VLE's VQA fine-tuning did). The fusion layers,
        projections and heads are newly initialised and need training.
        """
        vision_kwargs = {k[len("vision_"):]: kwargs.pop(k) for k in list(kwargs) if k.startswith("vision_")}
        text_kwargs = {k[len("text_"):]: kwargs.pop(k) for k in list(kwargs) if k.startswith("text_")}
        vision_model = vision_kwargs.pop("model", None)
        if vision_model is None:
            if vision_model_name_or_path is None:
                raise ValueError("Give vision_model_name_or_path or vision_model=")
            vision_config = AutoConfig.from_pretrained(vision_model_name_or_path)
            if vision_config.model_type == "clip":
                vision_config = vision_config.vision_config
            vision_model = CLIPVisionModel.from_pretrained(
                vision_model_name_or_path, config=vision_config, **vision_kwargs
            )
        text_model = text_kwargs.pop("model", None)
        if text_model is None:
            if text_model_name_or_path is None:
                raise ValueError("Give text_model_name_or_path or text_model=")
            text_model = AutoModel.from_pretrained(text_model_name_or_path, **text_kwargs)
        if image_size is not None and image_size != vision_model.config.image_size:
            resize_vision_position_embeddings(vision_model, image_size)

        config = VLEConfig(text_config=text_model.config, vision_config=vision_model.config, **kwargs)
        model = cls(config, vision_model=vision_model, text_model=text_model)
        logger.warning("The fusion layers, projections and heads are newly initialised: train before use.")
        return model


class VLEModel(VLEPreTrainedModel):
    """The VLE encoder: text and image encoders, projections, token types, co-attention layers and poolers."""

    _keys_to_ignore_on_load_unexpected = _sibling_heads("")  # a pretraining checkpoint's heads

    def __init__(
        self,
        config: VLEConfig,
        vision_model: PreTrainedModel | None = None,
        text_model: PreTrainedModel | None = None,
    ):
        super().__init__(config)
        if vision_model is None:
            vision_model = CLIPVisionModel(config.vision_config)
        if text_model is None:
            text_model = AutoModel.from_config(config.text_config)
        # Keep one config object per encoder so that changes to the VLE config reach them.
        vision_model.config = config.vision_config
        text_model.config = config.text_config
        self.vision_model = VLEVisionTower(vision_model)
        self.text_model = text_model
        for module in text_model.modules():
            if isinstance(module, DisentangledSelfAttention):
                module.register_forward_hook(_zero_padding_queries, with_kwargs=True)

        self.text_projection_layer = nn.Linear(config.text_config.hidden_size, config.hidden_size)
        self.image_projection_layer = nn.Linear(config.vision_config.hidden_size, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.num_token_types, config.hidden_size)
        self.cross_modal_image_layers = nn.ModuleList([VLEFusionLayer(config) for _ in range(config.num_hidden_layers)])
        self.cross_modal_text_layers = nn.ModuleList([VLEFusionLayer(config) for _ in range(config.num_hidden_layers)])
        self.cross_modal_image_pooler = VLEPooler(config.hidden_size)
        self.cross_modal_text_pooler = VLEPooler(config.hidden_size)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.set_input_embeddings(value)

    def set_fusion_attn_implementation(self, implementation: str) -> None:
        """Switch the fusion layers between ``"sdpa"`` and ``"eager"`` attention."""
        VLEConfig(fusion_attn_implementation=implementation)  # validates the name
        self.config.fusion_attn_implementation = implementation

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Image-side encoding: CLIP tower, ``post_layernorm`` on every token, projection to the fusion width.

        The result (``[batch, 1 + patches, hidden]``) depends only on the image; pass it back as
        ``image_embeds=`` to skip the vision encoder for further questions about the same image. Inputs whose
        size differs from ``vision_config.image_size`` get interpolated position embeddings.
        """
        size = self.config.vision_config.image_size
        interpolate = tuple(pixel_values.shape[-2:]) != (size, size)
        vision_outputs = self.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=interpolate)
        image_embeds = self.vision_model.vision_model.post_layernorm(vision_outputs.last_hidden_state)
        return self.image_projection_layer(image_embeds)

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Text-side encoding: the text encoder's last hidden state projected to the fusion width."""
        text_outputs = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, position_ids=position_ids
        )
        return self.text_projection_layer(text_outputs.last_hidden_state)

    def _add_object_embeddings(
        self,
        image_embeds: torch.Tensor,
        text_len: int,
        patch_ids: Sequence[Sequence[Sequence[int]]],
        extend_token_type_ids: Sequence[Any] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """VCR: append, per item, the mean patch embedding under each object box; build the matching masks/types."""
        device, base_len = image_embeds.device, image_embeds.shape[1]
        items = []
        for item_embeds, item_boxes in zip(image_embeds, patch_ids):
            boxes = [
                item_embeds[torch.as_tensor(box, device=device, dtype=torch.long) + 1].mean(0, keepdim=True)
                for box in item_boxes
            ]
            items.append(torch.cat([item_embeds, *boxes]))
        image_embeds = pad_sequence(items, batch_first=True)
        lengths = torch.tensor([len(item) for item in items], device=device)
        image_mask = (torch.arange(image_embeds.shape[1], device=device)[None, :] < lengths[:, None]).long()

        image_types = torch.full(image_mask.shape, IMAGE_TOKEN_TYPE, dtype=torch.long, device=device)
        text_types = None
        if extend_token_type_ids is not None:
            added_types, text_type_lists = extend_token_type_ids
            for i, types in enumerate(added_types):
                added = torch.as_tensor(types, dtype=torch.long, device=device)
                image_types[i, base_len : base_len + len(types)] = added
            text_types = torch.zeros(image_embeds.shape[0], text_len, dtype=torch.long, device=device)
            for i, types in enumerate(text_type_lists):
                text_types[i, : len(types)] = torch.as_tensor(types, dtype=torch.long, device=device)
        return image_embeds, image_mask, (image_types, text_types)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        patch_ids: Sequence[Sequence[Sequence[int]]] | None = None,
        extend_token_type_ids: Sequence[Any] | None = None,
        return_loss: bool | None = None,
        return_dict: bool | None = None,
        image_embeds: torch.FloatTensor | None = None,
    ) -> VLEModelOutput | tuple:
        r"""
        Args:
            input_ids, attention_mask, token_type_ids, position_ids: the question/text, as the text encoder takes it.
            pixel_values: ``[batch, 3, H, W]`` images (any size that is a multiple of the patch size).
            patch_ids: VCR only; per batch item, per object box, the 0-based patch indices under the box.
            extend_token_type_ids: VCR only; ``[image_added_token_type_ids per item (one per box),
                text_token_type_ids per item (one per real token)]``.
            return_loss: accepted for the original call style (the base model has no loss).
            image_embeds: output of [`encode_image`] to use instead of ``pixel_values``.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if image_embeds is None:
            if pixel_values is None:
                raise ValueError("VLEModel needs pixel_values or precomputed image_embeds")
            image_embeds = self.encode_image(pixel_values)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text_embeds = self.encode_text(input_ids, attention_mask, token_type_ids, position_ids)

        image_mask, text_types, image_types = None, None, None
        if patch_ids is not None:
            image_embeds, image_mask, (image_types, text_types) = self._add_object_embeddings(
                image_embeds, text_embeds.shape[1], patch_ids, extend_token_type_ids
            )
        if image_types is None:
            image_types = torch.full(
                image_embeds.shape[:2], IMAGE_TOKEN_TYPE, dtype=torch.long, device=image_embeds.device
            )
        if text_types is None:
            text_types = torch.zeros_like(attention_mask, dtype=torch.long)
        text_embeds = text_embeds + self.token_type_embeddings(text_types)
        image_embeds = image_embeds + self.token_type_embeddings(image_types)

        text_mask = additive_attention_mask(attention_mask, text_embeds.dtype)
        image_mask = additive_attention_mask(image_mask, image_embeds.dtype)
        x, y = text_embeds, image_embeds
        for text_layer, image_layer in zip(self.cross_modal_text_layers, self.cross_modal_image_layers):
            x, y = text_layer(x, y, text_mask, image_mask), image_layer(y, x, image_mask, text_mask)

        pooler_output = torch.cat([self.cross_modal_text_pooler(x), self.cross_modal_image_pooler(y)], dim=-1)
        if not return_dict:
            return (pooler_output, x, y)
        return VLEModelOutput(pooler_output=pooler_output, text_embeds=x, image_embeds=y)


def resize_vision_position_embeddings(vision_model: CLIPVisionModel, image_size: int) -> None:
    """Permanently resize a CLIP vision tower's position embeddings to ``image_size`` (bicubic, CLS kept)."""
    embeddings = vision_model.embeddings
    new_grid = image_size // embeddings.patch_size
    weight = interpolate_position_embedding(embeddings.position_embedding.weight.data, new_grid)
    embeddings.position_embedding = nn.Embedding(weight.shape[0], weight.shape[1], _weight=weight.clone())
    embeddings.position_embedding.weight._is_hf_initialized = True  # keep it through a later post_init()
    embeddings.position_ids = torch.arange(weight.shape[0], device=weight.device).unsqueeze(0)
    embeddings.num_patches, embeddings.num_positions = new_grid * new_grid, weight.shape[0]
    embeddings.image_size = image_size
    vision_model.config.image_size = image_size


def _classifier_mlp(in_size: int, out_size: int, eps: float = 1e-5) -> nn.Sequential:
    """Linear -> LayerNorm -> GELU -> Linear, indexed 0/1/3 as in the published checkpoints."""
    return nn.Sequential(
        nn.Linear(in_size, in_size), nn.LayerNorm(in_size, eps=eps), nn.GELU(), nn.Linear(in_size, out_size)
    )


class _VLEHeadModel(VLEPreTrainedModel):
    """A task head on top of ``self.vle``; subclasses build ``self.<head>`` and compute logits/loss."""

    def __init__(
        self, config: VLEConfig, vision_model: PreTrainedModel | None = None, text_model: PreTrainedModel | None = None
    ):
        super().__init__(config)
        self.vle = VLEModel(config, vision_model=vision_model, text_model=text_model)

    def get_input_embeddings(self) -> nn.Module:
        return self.vle.get_input_embeddings()

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """See [`VLEModel.encode_image`]."""
        return self.vle.encode_image(pixel_values)

    def _fuse(self, **inputs: Any) -> VLEModelOutput:
        return self.vle(**inputs, return_dict=True)

    @staticmethod
    def _pack(loss, logits, fused: VLEModelOutput, return_dict: bool | None) -> VLEHeadOutput | tuple:
        if return_dict is False:
            return (loss, logits) if loss is not None else (logits,)
        return VLEHeadOutput(
            loss=loss,
            logits=logits,
            pooler_output=fused.pooler_output,
            text_embeds=fused.text_embeds,
            image_embeds=fused.image_embeds,
        )


class VLEForVQA(_VLEHeadModel):
    """VQA head: an MLP on the pooled ``2 * hidden`` vector over the answer vocabulary (``config.id2label``)."""

    def __init__(self, config: VLEConfig, vision_model=None, text_model=None):
        super().__init__(config, vision_model, text_model)
        self.num_vqa_labels = len(config.id2label)
        self.vqa_classifier = _classifier_mlp(config.hidden_size * 2, self.num_vqa_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        patch_ids=None,
        vqa_labels: Sequence[Sequence[int]] | None = None,
        vqa_scores: Sequence[Sequence[float]] | None = None,
        return_loss: bool | None = None,
        return_dict: bool | None = None,
        image_embeds: torch.FloatTensor | None = None,
        vqa_targets: torch.FloatTensor | None = None,
    ) -> VLEHeadOutput | tuple:
        r"""
        vqa_labels, vqa_scores: per item, the answer ids and their soft scores (the original's format).
        vqa_targets: the same as a dense ``[batch, num_labels]`` tensor (faster for training).
        The loss (with ``return_loss=True``) is soft-score BCE times the number of labels, as in the original.
        """
        fused = self._fuse(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, position_ids=position_ids,
            token_type_ids=token_type_ids, patch_ids=patch_ids, image_embeds=image_embeds,
        )
        logits = self.vqa_classifier(fused.pooler_output)
        loss = None
        if return_loss and (vqa_targets is not None or (vqa_labels is not None and vqa_scores is not None)):
            if vqa_targets is None:
                vqa_targets = torch.zeros_like(logits)
                for i, (labels, scores) in enumerate(zip(vqa_labels, vqa_scores)):
                    for label, score in zip(labels, scores):
                        vqa_targets[i, label] = score
            loss = F.binary_cross_entropy_with_logits(logits, vqa_targets.to(logits.dtype)) * logits.shape[1]
        return self._pack(loss, logits, fused, return_dict)


class _VLELabelledHeadModel(_VLEHeadModel):
    """A head with one label argument (``itm_labels``, ``pbc_labels`` or ``mlm_labels`` in the original API).

    Subclasses name it in ``labels_name`` and implement ``_logits(fused)`` and ``_loss(logits, labels)``.
    """

    labels_name: str

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        patch_ids=None,
        labels=None,
        return_loss: bool | None = None,
        return_dict: bool | None = None,
        image_embeds: torch.FloatTensor | None = None,
        **task_labels: Any,
    ) -> VLEHeadOutput | tuple:
        r"""
        labels: the task labels, also accepted under the original keyword (``itm_labels``, ``pbc_labels``,
            ``mlm_labels``); the loss is computed with ``return_loss=True``.
        """
        unknown = set(task_labels) - {self.labels_name}
        if unknown:
            raise TypeError(f"{type(self).__name__}.forward() got unexpected keyword arguments {sorted(unknown)}")
        labels = task_labels.get(self.labels_name, labels)
        fused = self._fuse(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, position_ids=position_ids,
            token_type_ids=token_type_ids, patch_ids=patch_ids, image_embeds=image_embeds,
        )
        logits = self._logits(fused)
        loss = self._loss(logits, labels) if return_loss and labels is not None else None
        return self._pack(loss, logits, fused, return_dict)


class ITMHead(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.fc = nn.Linear(hidden_size, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class VLEForITM(_VLELabelledHeadModel):
    """Image-text matching head: linear on the pooled vector -> 2 logits (index 1 = the text matches the image)."""

    labels_name = "itm_labels"
    _keys_to_ignore_on_load_unexpected = _sibling_heads("itm")

    def __init__(self, config: VLEConfig, vision_model=None, text_model=None):
        super().__init__(config, vision_model, text_model)
        self.itm_score = ITMHead(config.hidden_size * 2)
        self.post_init()

    def _logits(self, fused: VLEModelOutput) -> torch.Tensor:
        return self.itm_score(fused.pooler_output)

    def _loss(self, logits: torch.Tensor, labels) -> torch.Tensor:
        return F.cross_entropy(logits, torch.as_tensor(labels, device=logits.device).long())


class VLEForPBC(_VLELabelledHeadModel):
    """Patch-box classification head: an MLP on every image-patch token (CLS excluded) -> 2 logits.

    ``pbc_labels``: ``[batch, patches]`` 0/1 (``-100`` ignored).
    """

    labels_name = "pbc_labels"
    _keys_to_ignore_on_load_unexpected = _sibling_heads("pbc")

    def __init__(self, config: VLEConfig, vision_model=None, text_model=None):
        super().__init__(config, vision_model, text_model)
        self.pbc_classifier = _classifier_mlp(config.hidden_size, 2)
        self.post_init()

    def _logits(self, fused: VLEModelOutput) -> torch.Tensor:
        return self.pbc_classifier(fused.image_embeds[:, 1:, :])

    def _loss(self, logits: torch.Tensor, labels) -> torch.Tensor:
        labels = torch.as_tensor(labels, device=logits.device).long()
        return F.cross_entropy(logits.reshape(-1, 2), labels.reshape(-1), ignore_index=-100)


class VLEForMLM(_VLELabelledHeadModel):
    """Masked-language-model head: linear to the text width, then DeBERTa's LM head tied to the word embeddings.

    ``mlm_labels``: ``[batch, text_len]`` token ids to predict, ``-100`` elsewhere.
    """

    labels_name = "mlm_labels"
    _keys_to_ignore_on_load_unexpected = _sibling_heads("mlm")
    _keys_to_ignore_on_load_missing = [
        r"mlm_score.1.predictions.decoder.weight",
        r"mlm_score.1.predictions.decoder.bias",
    ]
    _tied_weights_keys = {
        "mlm_score.1.predictions.decoder.weight": "vle.text_model.embeddings.word_embeddings.weight",
        "mlm_score.1.predictions.decoder.bias": "mlm_score.1.predictions.bias",
    }

    def __init__(self, config: VLEConfig, vision_model=None, text_model=None):
        super().__init__(config, vision_model, text_model)
        self.mlm_score = nn.Sequential(
            nn.Linear(config.hidden_size, config.text_config.hidden_size),
            LegacyDebertaV2OnlyMLMHead(config.text_config),
        )
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.mlm_score[1].predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.mlm_score[1].predictions.decoder = new_embeddings

    def _logits(self, fused: VLEModelOutput) -> torch.Tensor:
        return self.mlm_score(fused.text_embeds)

    def _loss(self, logits: torch.Tensor, labels) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)



@dataclass
class VLEForPreTrainingOutput(ModelOutput):
    """Output of [`VLEForPreTraining`]: the summed ``loss`` of the labels given, and each head's logits
    (``itm_logits`` ``[batch, 2]``, ``pbc_logits`` ``[batch, patches, 2]``, ``mlm_logits`` ``[batch, text_len,
    vocab]``)."""

    loss: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    pbc_logits: torch.FloatTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None


class VLEForPreTraining(_VLEHeadModel):
    """The ITM, PBC and MLM heads on one backbone, under the names of [`VLEForITM`], [`VLEForPBC`] and
    [`VLEForMLM`]: it trains and saves a pretraining checkpoint in the layout of hfl/vle-base, from which each of
    those classes (and [`VLEModel`]) loads.

    One forward fuses the inputs once and runs all three heads; the loss sums the heads whose labels are given
    (``itm_labels``, ``pbc_labels``, ``mlm_labels``; ``-100`` ignored).
    """

    _keys_to_ignore_on_load_missing = VLEForMLM._keys_to_ignore_on_load_missing
    _tied_weights_keys = VLEForMLM._tied_weights_keys

    def __init__(self, config: VLEConfig, vision_model=None, text_model=None):
        super().__init__(config, vision_model, text_model)
        self.itm_score = ITMHead(config.hidden_size * 2)
        self.pbc_classifier = _classifier_mlp(config.hidden_size, 2)
        self.mlm_score = nn.Sequential(
            nn.Linear(config.hidden_size, config.text_config.hidden_size),
            LegacyDebertaV2OnlyMLMHead(config.text_config),
        )
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.mlm_score[1].predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.mlm_score[1].predictions.decoder = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        itm_labels: torch.LongTensor | None = None,
        pbc_labels: torch.LongTensor | None = None,
        mlm_labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        image_embeds: torch.FloatTensor | None = None,
    ) -> VLEForPreTrainingOutput | tuple:
        fused = self._fuse(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                           token_type_ids=token_type_ids, image_embeds=image_embeds)
        itm_logits = self.itm_score(fused.pooler_output)
        pbc_logits = self.pbc_classifier(fused.image_embeds[:, 1:, :])
        mlm_logits = self.mlm_score(fused.text_embeds)
        losses = []
        for logits, labels in ((itm_logits, itm_labels), (pbc_logits, pbc_labels), (mlm_logits, mlm_labels)):
            if labels is not None and (labels != -100).any():  # a batch without known labels adds no loss
                losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).long(),
                                              ignore_index=-100))
        loss = sum(losses) if losses else None
        if return_dict is False:
            return tuple(x for x in (loss, itm_logits, pbc_logits, mlm_logits) if x is not None)
        return VLEForPreTrainingOutput(loss=loss, itm_logits=itm_logits, pbc_logits=pbc_logits, mlm_logits=mlm_logits,
                                       pooler_output=fused.pooler_output)


class _VLEForVCR(_VLEHeadModel):
    """VCR multiple choice: the four (question, choice) texts are fused with the image one by one -> 4 logits."""

    head_name: str

    def __init__(self, config: VLEConfig, vision_model=None, text_model=None):
        super().__init__(config, vision_model, text_model)
        setattr(self, self.head_name, _classifier_mlp(config.hidden_size * 2, 1))
        self.post_init()

    def forward(
        self,
        input_ids: Sequence[torch.Tensor] = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: Sequence[torch.Tensor] | None = None,
        position_ids=None,
        token_type_ids: Sequence[torch.Tensor] | None = None,
        patch_ids=None,
        vcr_labels=None,
        extend_token_type_ids=None,
        return_loss: bool | None = None,
        return_dict: bool | None = None,
        image_embeds=None,
    ) -> VLEHeadOutput | tuple:
        r"""
        input_ids, attention_mask, token_type_ids, patch_ids, extend_token_type_ids: lists with one entry per choice.
        vcr_labels: the index of the right choice per item.
        """
        if image_embeds is None:
            image_embeds = self.encode_image(pixel_values)  # the same image for every choice: encode it once
        head = getattr(self, self.head_name)
        logits, fused = [], None
        for choice in range(len(input_ids)):
            fused = self._fuse(
                input_ids=input_ids[choice],
                attention_mask=None if attention_mask is None else attention_mask[choice],
                position_ids=position_ids,
                token_type_ids=None if token_type_ids is None else token_type_ids[choice],
                patch_ids=None if patch_ids is None else patch_ids[choice],
                extend_token_type_ids=None if extend_token_type_ids is None else extend_token_type_ids[choice],
                image_embeds=image_embeds,
            )
            logits.append(head(fused.pooler_output))
        logits = torch.cat(logits, dim=-1)
        loss = None
        if return_loss and vcr_labels is not None:
            loss = F.cross_entropy(logits, torch.as_tensor(vcr_labels, device=logits.device).long().view(-1))
        return self._pack(loss, logits, fused, return_dict)


class VLEForVCRQ2A(_VLEForVCR):
    """VCR question -> answer."""

    head_name = "vcr_q2a_logit"


class VLEForVCRQA2R(_VLEForVCR):
    """VCR question + answer -> rationale."""

    head_name = "vcr_qa2r_logit"


__all__ = [
    "VLEModelOutput",
    "VLEHeadOutput",
    "VLEPreTrainedModel",
    "VLEModel",
    "VLEForVQA",
    "VLEForITM",
    "VLEForPBC",
    "VLEForMLM",
    "VLEForPreTraining",
    "VLEForPreTrainingOutput",
    "VLEForVCRQ2A",
    "VLEForVCRQA2R",
    "interpolate_position_embedding",
    "resize_vision_position_embeddings",
]
