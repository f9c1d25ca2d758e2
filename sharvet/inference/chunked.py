"""A long prefill's compressed module as one operator over chunks of tokens: its temporaries live only inside it.

Why: compiled, a compressed model's prefill allocates more than dense's beyond the weights (16.9 MiB at 2,048 tokens,
ratio 0.5, LLaMA-3-8B shapes; ``benchmarks/peak_memory.py`` traced 81 MiB during a 512 x 32 forward): inductor keeps
lambda-scaled bases and rank-sized buffers past their last use to reuse them later, and each module's rank-sized
intermediate ``h = (x * lambda) U^T`` (tokens x rank) must coexist with the output it produces. Here the module is
one custom operator that inductor does not look into: the scaled basis and ``h`` are made and freed inside, and
``h`` exists for one chunk of tokens at a time (each chunk's output written straight into the result).

Off by default, as measured: with chunks of 1,024 tokens the compressed workspace came within 0.9 MiB (2,048) and
0.1 MiB (512 x 32) of dense's, but the compiled prefill fell from 1.27-1.36x dense to 1.17x and 512 x 32 from
1.55-1.61x to 1.38x (H200, 2026-12-01, ``SHARVET_PREFILL_CHUNK=1024 python benchmarks/inference.py --shape
llama3-8b --ratios 0.5 --batches 1 --compile-prefill``): the chunks' smaller matmuls, and no fusion across the
operator. For serving where the last MiB matters more than prefill speed. ``SHARVET_PREFILL_PIECE=0`` runs such a
step as one operator without splitting it: with ``SHARVET_PREFILL_CHUNK=1024`` the excess stayed at 0.9 / 0.1 MiB and
the speed came back part of the way (1.23x and 1.54x against the same call's unchunked 1.34x and 1.60x; H200,
2026-12-01, sixteenth session), so the operator, more than its chunks' size, costs the speed. Chunks of 4,096 tokens
(512 x 32 in four; 2,048 not chunked): 1.52x at 0.1 MiB. That cost is the host's issuing the operator's kernels:
with each prefill shape replayed from a CUDA graph (``sharvet bench --prefill-graph``) ``CHUNK=1024, PIECE=0`` ran
at 1.40x / 1.45x (2,048) and 1.60x / 1.53x (512 x 32) against the default's 1.43x / 1.42x and 1.62x / 1.62x, at
0.9 / 0.1 MiB (H200, eighteenth session): where prefills are replayed from graphs, it is the setting to serve with.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ..modules import SharedBasisLinear

#: ``SHARVET_PREFILL_CHUNK``: tokens per chunk of a long step (a multiple of 64; ``0``, the default: never chunk).
#: Steps of more tokens than this run as :func:`chunked_two_stage`; shorter ones as the modules' own forward.
CHUNK = int(os.environ.get("SHARVET_PREFILL_CHUNK", "0"))
if CHUNK < 0 or CHUNK % 64:
    raise ValueError(f"SHARVET_PREFILL_CHUNK must be 0 or a positive multiple of 64, got {CHUNK}")
#: ``SHARVET_PREFILL_PIECE``: tokens per matmul inside the operator (default: :data:`CHUNK`; ``0``: the whole step
#: in one, so the operator only keeps inductor from holding its temporaries, the matmuls as large as unchunked).
PIECE = int(os.environ.get("SHARVET_PREFILL_PIECE", str(CHUNK)))
if PIECE < 0 or PIECE % 64:
    raise ValueError(f"SHARVET_PREFILL_PIECE must be 0 or a positive multiple of 64, got {PIECE}")


@torch.library.custom_op("sharvet::chunked_two_stage", mutates_args=())
def chunked_two_stage(x: torch.Tensor, basis: torch.Tensor, scale: torch.Tensor | None, v: torch.Tensor,
                      bias: torch.Tensor | None, chunk: int) -> torch.Tensor:
    """``((x * scale) basis^T) v^T + bias`` for ``x`` of shape ``(..., d_in)``, ``chunk`` tokens at a time (0: all at
    once). lambda scales the basis once (rank x d_in, smaller than a chunk's activations at these lengths)."""
    flat = x.reshape(-1, x.shape[-1])
    chunk = chunk or max(flat.shape[0], 1)
    w = basis if scale is None else basis * scale
    out = flat.new_empty(flat.shape[0], v.shape[0])
    for start in range(0, flat.shape[0], chunk):
        torch.mm(F.linear(flat[start:start + chunk], w), v.t(), out=out[start:start + chunk])
    if bias is not None:
        out += bias
    return out.reshape(*x.shape[:-1], v.shape[0])


@chunked_two_stage.register_fake
def _(x, basis, scale, v, bias, chunk):  # noqa: ANN001, ANN202 - the operator's signature
    return x.new_empty(*x.shape[:-1], v.shape[0])


def long_step(x: torch.Tensor) -> bool:
    """A step of more than :data:`CHUNK` tokens (when chunking is on)."""
    return CHUNK > 0 and x.numel() > CHUNK * x.shape[-1]


def chunked_forward(module: SharedBasisLinear, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` as :func:`chunked_two_stage`; the inference form has absorbed sigma into ``v``."""
    if module.current_sigma() is not None:
        raise ValueError("chunked_forward needs sigma absorbed into v (the inference form does it)")
    return chunked_two_stage(x, module.basis, module.scale, module.v, module.bias, PIECE)


def describe() -> str:
    """The setting as a record states it; empty when off (the default), so default records keep their key."""
    if not CHUNK:
        return ""
    if PIECE == CHUNK:
        return f"steps of more than {CHUNK} tokens chunked"
    return f"steps of more than {CHUNK} tokens as one operator, " + (f"in pieces of {PIECE}" if PIECE else "unsplit")
