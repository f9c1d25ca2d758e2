"""Phi-3 (and Phi-4-mini): the LLaMA layout with q, k and v fused into one ``qkv_proj`` and gate and up into one
``gate_up_proj``. Each fused matrix is one module type (as GPT-2's ``c_attn``): splitting it would need a forward of
our own, while sharing the fused matrix keeps the model a stock ``Phi3ForCausalLM``. down reads
``act(gate) * up``, halves of one output, so its lambda has no rows of its own to fold into."""
from __future__ import annotations

from .base import ModelAdapter, ModuleType


class Phi3Adapter(ModelAdapter):
    family = "phi3"
    model_types = ("phi3",)
    layers_path = "model.layers"
    base_model_path = "model"
    module_types = (
        ModuleType("qkv", "self_attn.qkv_proj", "attn_in"),
        ModuleType("o", "self_attn.o_proj", "o_in"),
        ModuleType("gate_up", "mlp.gate_up_proj", "mlp_in"),
        ModuleType("down", "mlp.down_proj", "down_in"),
    )
    default_shared = ("qkv", "gate_up")
    mlp_types = ("gate_up", "down")
    input_norms = {"attn_in": "input_layernorm", "mlp_in": "post_attention_layernorm"}
