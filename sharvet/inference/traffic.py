"""Bytes of weights a decode step reads: the bound a memory-bound decode can reach.

At batch 1 a decode step reads every weight once and does little else, so ``dense bytes / compressed bytes`` is
the best speedup compression can give there (the ``bound`` column of :mod:`sharvet.inference.bench`). Each weight
element is also one multiply-add per token, so the same ratio bounds the weight matmuls of a compute-bound prefill.
"""
from __future__ import annotations

from torch import nn

from ..accounting import unique_parameters
from ..models import adapter_for


def _bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))


def weight_bytes_per_token(model: nn.Module) -> int:
    """Weight bytes one decode step reads.

    Every module of every decoder layer once: a basis shared by a group counts in each layer that uses it (the L2
    cache does not keep it from one member layer to the next), a stacked first stage once per layer; then the
    final norm and the LM head. The input embedding reads one row per token and is not counted (a tied LM head
    is, as the LM head). KV-cache reads and activations are not weights and are left out.
    """
    layers = adapter_for(model).layers
    total = sum(_bytes(m) for layer in layers for m in layer.modules())
    skip = {id(m) for m in layers.modules()} | {id(model.get_input_embeddings())}
    return total + sum(_bytes(m) for m in model.modules() if id(m) not in skip)


def stored_bytes(model: nn.Module) -> int:
    """Bytes of the distinct parameters (a shared tensor once): what the weights take in memory."""
    return sum(p.numel() * p.element_size() for p in unique_parameters(model))
