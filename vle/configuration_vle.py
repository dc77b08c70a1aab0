"""Configuration of the VLE vision-language encoder.

Reads the ``config.json`` files of the published ``hfl/vle-*`` checkpoints unchanged (written by the
original VLE code under transformers 4.2x/4.30) and writes configs that both this code and the
original can read: top-level ``model_type: "vle"``, the co-attention (fusion) sizes, and the nested
``text_config`` (DeBERTa-v2) and ``vision_config`` (CLIP vision) dictionaries.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, CLIPConfig, CLIPVisionConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

FUSION_ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def _text_config_from(value: PretrainedConfig | dict | None) -> PretrainedConfig:
    if value is None:
        return CONFIG_MAPPING["deberta-v2"]()
    if isinstance(value, PretrainedConfig):
        return value
    value = dict(value)
    model_type = value.pop("model_type", "deberta-v2")
    return CONFIG_MAPPING[model_type](**value)


def _vision_config_from(value: PretrainedConfig | dict | None) -> PretrainedConfig:
    if value is None:
        return CLIPVisionConfig()
    if isinstance(value, CLIPConfig):
        return value.vision_config
    if isinstance(value, PretrainedConfig):
        return value
    value = dict(value)
    model_type = value.pop("model_type", "clip_vision_model")
    if model_type == "clip":
        return CLIPConfig(**value).vision_config
    if model_type == "clip_vision_model":
        return CLIPVisionConfig(**value)
    return CONFIG_MAPPING[model_type](**value)


class VLEConfig(PretrainedConfig):
    r"""Configuration of a VLE model: a text encoder, a vision encoder and co-attention fusion layers.

    Args:
        text_config: config (or dict) of the text encoder, a DeBERTa-v2/v3 model in the published checkpoints.
        vision_config: config (or dict) of the vision encoder, a CLIP vision tower (a full ``clip`` config is
            reduced to its vision part, as the original did).
        num_token_types: size of the token-type table added to both streams (text = 0, image = 1; VCR adds one
            type per object tag, 83 in the published VCR checkpoints).
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act,
        hidden_dropout_prob, attention_probs_dropout_prob, layer_norm_eps: sizes of the BERT-style fusion layers
            (``num_hidden_layers`` co-attention layers per stream).
        initializer_range: std of the normal init of new fusion/head weights.
        classifier_dropout: kept for compatibility with the original config files (unused by the heads).
        fusion_attn_implementation: ``"sdpa"`` (default, ``torch.nn.functional.scaled_dot_product_attention``)
            or ``"eager"`` (explicit softmax(QK^T)V, kept for comparison); the encoders use transformers'
            own attention selection.
        tie_word_embeddings: tie the MLM decoder to the text word embeddings.
        vcr_object_tokens: VCR only; ``False`` drops the objects' extra image tokens and token types (an
            ablation: the choices are fused with the image alone, object mentions as plain text).
    """

    model_type = "vle"
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig}

    def __init__(
        self,
        text_config: PretrainedConfig | dict | None = None,
        vision_config: PretrainedConfig | dict | None = None,
        num_token_types: int = 2,
        hidden_size: int = 768,
        num_hidden_layers: int = 6,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        classifier_dropout: float | None = None,
        fusion_attn_implementation: str = "sdpa",
        tie_word_embeddings: bool = True,
        vcr_object_tokens: bool = True,
        **kwargs: Any,
    ):
        # Files written by the original code carry a few keys that are not configuration.
        kwargs.pop("_commit_hash", None)
        self.text_config = _text_config_from(text_config)
        self.vision_config = _vision_config_from(vision_config)
        self.num_token_types = num_token_types
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.classifier_dropout = classifier_dropout
        if fusion_attn_implementation not in FUSION_ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"fusion_attn_implementation must be one of {FUSION_ATTN_IMPLEMENTATIONS}, "
                f"got {fusion_attn_implementation!r}"
            )
        self.fusion_attn_implementation = fusion_attn_implementation
        # The MLM decoder shares the text word embeddings (transformers 4.x's default, which VLE relied on).
        self.tie_word_embeddings = tie_word_embeddings
        self.vcr_object_tokens = vcr_object_tokens
        super().__init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Serialise with nested ``text_config``/``vision_config`` dicts (the original's layout)."""
        output = super().to_dict()
        output["text_config"] = self.text_config.to_dict()
        output["vision_config"] = self.vision_config.to_dict()
        output["model_type"] = self.model_type
        return output
