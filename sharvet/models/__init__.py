"""Adapter registry: pick the adapter for a model from its ``config.model_type``."""
from __future__ import annotations

from torch import nn

from .base import ModelAdapter, ModuleType
from .cohere import CohereAdapter
from .gemma import Gemma2Adapter, GemmaAdapter
from .gpt2 import GPT2Adapter
from .llama import LlamaAdapter
from .olmo2 import Olmo2Adapter
from .phi3 import Phi3Adapter
from .stablelm import StableLmAdapter

ADAPTERS: tuple[type[ModelAdapter], ...] = (LlamaAdapter, GemmaAdapter, Gemma2Adapter, Olmo2Adapter, Phi3Adapter,
                                             StableLmAdapter, CohereAdapter, GPT2Adapter)


class UnsupportedModelError(ValueError):
    """Raised for an architecture no adapter covers."""


def supported_model_types() -> list[str]:
    return sorted(t for a in ADAPTERS for t in a.model_types)


def adapter_class(model_type: str | None) -> type[ModelAdapter]:
    """The adapter for a ``config.model_type``; checked from the config alone, before any weights load."""
    for cls in ADAPTERS:
        if model_type in cls.model_types:
            return cls
    raise UnsupportedModelError(
        f"unsupported architecture {model_type!r}; sharvet supports: {', '.join(supported_model_types())}"
    )


def adapter_for(model: nn.Module) -> ModelAdapter:
    return adapter_class(getattr(getattr(model, "config", None), "model_type", None))(model)


__all__ = ["ADAPTERS", "ModelAdapter", "ModuleType", "UnsupportedModelError", "adapter_class", "adapter_for",
           "supported_model_types"]
