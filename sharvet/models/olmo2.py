"""OLMo 2 (and EXAONE 4): the LLaMA layout with its norms moved after each block (``post_attention_layernorm`` and
``post_feedforward_layernorm`` normalise the attention's and the MLP's outputs), so no norm's output is what the
linear modules read and no lambda folds into a norm."""
from __future__ import annotations

from .llama import LlamaAdapter


class Olmo2Adapter(LlamaAdapter):
    family = "olmo2"
    model_types = ("olmo2", "exaone4")
    input_norms: dict[str, str] = {}
