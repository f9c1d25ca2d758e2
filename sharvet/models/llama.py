"""LLaMA family: LLaMA 2/3, TinyLlama, SmolLM2, Mistral, Qwen2, Qwen3, and the families built on its layout (Granite,
Helium, OLMo, Seed-OSS, SmolLM3); GQA: k/v narrower than q."""
from __future__ import annotations

from .base import ModelAdapter, ModuleType


class LlamaAdapter(ModelAdapter):
    family = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3", "granite", "helium", "olmo", "seed_oss",
                   "smollm3")
    layers_path = "model.layers"
    base_model_path = "model"
    module_types = (
        ModuleType("q", "self_attn.q_proj", "attn_in"),
        ModuleType("k", "self_attn.k_proj", "attn_in"),
        ModuleType("v", "self_attn.v_proj", "attn_in"),
        ModuleType("o", "self_attn.o_proj", "o_in"),
        ModuleType("gate", "mlp.gate_proj", "mlp_in"),
        ModuleType("up", "mlp.up_proj", "mlp_in"),
        ModuleType("down", "mlp.down_proj", "down_in"),
    )
    default_shared = ("q", "k", "v", "gate", "up")
    mlp_types = ("gate", "up", "down")
    input_norms = {"attn_in": "input_layernorm", "mlp_in": "post_attention_layernorm"}
    input_scale_sources = {"down": "up"}
    gated_mlp = ("gate", "up", "down")
