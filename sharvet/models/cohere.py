"""Cohere (Command R): the LLaMA module layout with a parallel residual: attention and MLP both read
``input_layernorm``'s output, so one norm feeds q, k, v, gate and up and no lambda is folded into it."""
from __future__ import annotations

from .llama import LlamaAdapter


class CohereAdapter(LlamaAdapter):
    family = "cohere"
    model_types = ("cohere",)
    input_norms: dict[str, str] = {}
