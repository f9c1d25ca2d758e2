"""StableLM (2): the LLaMA layout with LayerNorms (weight and bias), partial rotary embeddings, and optionally a
parallel residual (``use_parallel_residual``: attention and MLP both read ``input_layernorm``'s output). Then one
norm feeds q, k, v, gate and up, and a lambda could fold into it only if all five shared it: none is folded."""
from __future__ import annotations

from .llama import LlamaAdapter


class StableLmAdapter(LlamaAdapter):
    family = "stablelm"
    model_types = ("stablelm",)

    @property
    def input_norms(self) -> dict[str, str]:  # type: ignore[override] - the layout depends on the config
        if getattr(self.model.config, "use_parallel_residual", False):
            return {}
        return LlamaAdapter.input_norms
