"""Refinement across GPUs with FSDP: frozen weights sharded per decoder layer, the trained vectors replicated.

With the paper's vectors only lambda and sigma train (a few hundred thousand values), while the frozen weights are
what fills a GPU, so
FSDP (torch's ``FullyShardedDataParallel``, ``use_orig_params``) shards the frozen weights one decoder layer per
unit, and keeps out of its units (``ignored_states``, replicated like DDP would):

* the trained tensors (with ``--refine-mode factors`` every layer's V too: replicated, so that mode needs V and
  its optimizer state whole on every GPU), whose gradients :func:`average_gradients` all-reduces (FSDP does
  not see them), so the
  loss, clipping, the L2 term and checkpoints read whole tensors exactly as on one process;
* every tensor held by more than one module: a group's basis is used by several decoder layers, and no
  per-layer unit could own it (its shard would be freed after the first layer's forward).

The teacher, frozen, is sharded the same way (it shares nothing but tied embeddings, which sit in the root
unit). :func:`gather` puts the whole student back together on the main process after training.
"""
from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch import nn


def layer_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The decoder-layer classes, from transformers' ``_no_split_modules`` (the units big-model loading keeps
    whole)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    found = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not found:
        raise ValueError(f"{type(model).__name__} names no decoder-layer class (_no_split_modules): cannot shard it")
    return found


def shared_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters registered in more than one module (shared bases, tied embeddings)."""
    holders: dict[int, tuple[nn.Parameter, int]] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None:
                holders[id(p)] = (p, holders.get(id(p), (p, 0))[1] + 1)
    return [p for p, count in holders.values() if count > 1]


def shard(model: nn.Module, keep: list[nn.Parameter], device: torch.device) -> nn.Module:
    """``model`` wrapped in FSDP, one unit per decoder layer; ``keep`` and shared parameters stay whole."""
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    ignored = {id(p): p for p in [*keep, *shared_parameters(model)]}
    policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=layer_classes(model))
    return FullyShardedDataParallel(model, auto_wrap_policy=policy, use_orig_params=True,
                                    ignored_states=list(ignored.values()),
                                    device_id=device if device.type != "cpu" else torch.device("cpu"),
                                    sharding_strategy=ShardingStrategy.FULL_SHARD, limit_all_gathers=True)


def average_gradients(params: list[nn.Parameter]) -> None:
    """All-reduce (mean) the gradients FSDP does not handle: those of the replicated trained tensors."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def gather(wrapped: nn.Module, main: bool) -> nn.Module | None:
    """The student as a plain module again, whole, on the main process (None elsewhere). Collective: every
    process must call it. FSDP's wrappers are taken out of the module tree and every parameter gets its full
    value (read under ``summon_full_params``) in its own storage."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    full: dict[int, torch.Tensor] = {}
    with FullyShardedDataParallel.summon_full_params(wrapped, writeback=False, rank0_only=True):
        if main:
            for p in wrapped.parameters():
                full[id(p)] = p.detach().clone()
    if not main:
        return None
    model = wrapped.module

    def unwrap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, FullyShardedDataParallel):
                child = child.module
                setattr(module, name, child)
            unwrap(child)

    unwrap(model)
    for p in model.parameters():
        p.data = full[id(p)]
    return model
