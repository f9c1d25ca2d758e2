"""GPT-2: Conv1D modules (weights stored ``(d_in, d_out)``) and a fused ``c_attn``.

The fused q/k/v projection is treated as **one** module type, ``qkv``: splitting it would need a custom
attention forward, while sharing the fused matrix keeps the model a stock ``GPT2LMHeadModel``.
"""
from __future__ import annotations

import torch

from .base import ModelAdapter, ModuleType, module_tensor


class GPT2Adapter(ModelAdapter):
    family = "gpt2"
    model_types = ("gpt2",)
    layers_path = "transformer.h"
    base_model_path = "transformer"
    module_types = (
        ModuleType("qkv", "attn.c_attn", "attn_in"),
        ModuleType("o", "attn.c_proj", "o_in"),
        ModuleType("up", "mlp.c_fc", "mlp_in"),
        ModuleType("down", "mlp.c_proj", "down_in"),
    )
    default_shared = ("qkv", "up")
    mlp_types = ("up", "down")
    input_norms = {"attn_in": "ln_1", "mlp_in": "ln_2"}

    def weight(self, layer: int, type_name: str) -> torch.Tensor:
        module = self.get_module(layer, type_name)
        w = module_tensor(module, "weight")
        # transformers' Conv1D keeps (d_in, d_out); a replaced module is Linear-convention already
        return w.t() if type(module).__name__ == "Conv1D" else w
