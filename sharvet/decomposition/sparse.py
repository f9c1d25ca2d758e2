"""FiPS (fine-grained parameter sharing): a shared basis and sparse per-module projections.

Every member matrix of a group is oriented so that its model-width side comes last (``W`` for modules
reading the model width, ``W^T`` for modules writing it), the matrices are stacked, and a truncated SVD
``M = (u s) vh`` gives the shared basis ``vh`` and dense projections ``u s``. Each member keeps its
``nnz`` largest projection entries (magnitude pruning; the mask stays fixed afterwards). Basis and kept
values are then refined jointly with Adam to minimise the relative error of each MLP *block*'s output
on calibration inputs (block-wise reconstruction), the objective FiPS uses.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models import ModelAdapter


@dataclass
class SparseFactors:
    basis: torch.Tensor  # (r, width), shared by the group
    values: list[torch.Tensor]  # per member: kept entries of its (rows, r) projection
    index: list[torch.Tensor]  # per member: their flat positions (int64)


def sparse_init(mats: list[torch.Tensor], rank: int, nnz: list[int]) -> SparseFactors:
    """SVD of the stacked ``(rows_j, width)`` matrices, then keep ``nnz[j]`` entries per member."""
    width = mats[0].shape[1]
    if not 1 <= rank <= width:
        raise ValueError(f"FiPS basis size {rank} must be in 1..{width} (the shared width)")
    dtype = mats[0].dtype
    u, s, vh = torch.linalg.svd(torch.cat([m.double() for m in mats]), full_matrices=False)
    proj = u[:, :rank] * s[:rank]
    values, index, start = [], [], 0
    for m, keep in zip(mats, nnz):
        block = proj[start:start + m.shape[0]].reshape(-1)
        start += m.shape[0]
        idx = torch.topk(block.abs(), keep, sorted=False).indices.sort().values
        values.append(block[idx].to(dtype))
        index.append(idx)
    return SparseFactors(vh[:rank].contiguous().to(dtype), values, index)


@dataclass(frozen=True)
class FipsConfig:
    """FiPS settings: basis size and the block-wise refinement (0 steps: keep the pruned SVD)."""

    #: basis vectors per group; None = the model width (a square basis, sparse projections)
    rank: int | None = None
    steps: int = 100
    lr: float = 1e-4
    batch_tokens: int = 1024
    #: calibration tokens per layer whose MLP inputs are kept for the refinement
    tokens: int = 4096


@torch.no_grad()
def capture_mlp_inputs(adapter: ModelAdapter, ids: torch.Tensor, tokens: int, *, batch_size: int = 4,
                       device: torch.device | str = "cpu", progress: bool = True) -> list[torch.Tensor]:
    """The inputs of every layer's MLP block on the first ``tokens`` calibration tokens (float32)."""
    seq_len = ids.shape[1]
    ids = ids[: max(1, -(-tokens // seq_len))]
    seen: list[list[torch.Tensor]] = [[] for _ in range(adapter.num_layers)]

    def hook(layer: int):
        def pre(_module: nn.Module, args: tuple) -> None:
            seen[layer].append(args[0].detach().reshape(-1, args[0].shape[-1]).float())
        return pre

    handles = [adapter.mlp(i).register_forward_pre_hook(hook(i)) for i in range(adapter.num_layers)]
    try:
        for batch in tqdm(ids.split(batch_size), desc="FiPS block inputs", unit="batch", disable=not progress):
            adapter.base_model(input_ids=batch.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(x)[:tokens] for x in seen]


def reconstruct(blocks: list[nn.Module], inputs: list[torch.Tensor], targets: list[torch.Tensor],
                params: list[nn.Parameter], cfg: FipsConfig, *, seed: int = 0) -> tuple[float, float]:
    """Adam on ``params`` minimising the mean relative squared error of the blocks' outputs.

    Returns the error on all kept tokens before and after.
    """
    scale = [float(y.pow(2).mean().clamp_min(1e-12)) for y in targets]

    def error(rows: torch.Tensor | None) -> torch.Tensor:
        terms = []
        for block, x, y, s in zip(blocks, inputs, targets, scale):
            xb, yb = (x, y) if rows is None else (x[rows], y[rows])
            terms.append((block(xb) - yb).pow(2).mean() / s)
        return torch.stack(terms).mean()

    with torch.no_grad():
        before = float(error(None))
    if cfg.steps == 0:
        return before, before
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    try:
        with torch.enable_grad():
            for _ in range(cfg.steps):
                rows = torch.randint(len(inputs[0]), (min(cfg.batch_tokens, len(inputs[0])),), generator=gen)
                loss = error(rows.to(inputs[0].device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
    with torch.no_grad():
        after = float(error(None))
    return before, after
