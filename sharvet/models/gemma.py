"""Gemma family: the LLaMA layout with RMSNorms that scale by ``1 + weight`` (so a channel scaling folds into a
norm as ``(1 + w) * s - 1``), a GELU-gated MLP, and from Gemma 2 on norms around each block's output, so the MLP
reads ``pre_feedforward_layernorm`` rather than ``post_attention_layernorm``."""
from __future__ import annotations

from .llama import LlamaAdapter


class GemmaAdapter(LlamaAdapter):
    family = "gemma"
    model_types = ("gemma",)
    norm_weight_offset = 1.0


class Gemma2Adapter(GemmaAdapter):
    family = "gemma2"
    model_types = ("gemma2", "gemma3_text")
    # post_attention_layernorm normalises the attention's output before the residual add: no module reads it
    input_norms = {"attn_in": "input_layernorm", "mlp_in": "pre_feedforward_layernorm"}
