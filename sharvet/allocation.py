"""Rank per group so the stored parameters of each module type are at most ``ratio`` of the original.

What is counted: every tensor a compressed layer stores -- the group's basis U once, and per layer V,
sigma (until absorbed), lambda (when the method trains it) and the bias -- against the original
weights and biases of the same modules. Embeddings, norms and the LM head are never compressed; the
whole-model ratio is reported beside this one by :mod:`sharvet.accounting`.

Adaptive allocation is eqs. 9-11: every group is guaranteed ``mu`` of its proportional share and the
remaining ``(1 - mu)`` of the type's budget is split in proportion to the inverse intra-group similarity.
*Spectrum* allocation (beyond the paper) spends the same budget where it removes the most error: every group
keeps ``mu`` of its proportional share, then one rank at a time goes to the group whose next singular value
removes the most whitened truncation error per parameter it costs (:func:`spectrum_ranks`).

Flooring ranks leaves budget unused; it is handed back one rank at a time to the groups furthest below
their target, so the realised count is at or under the budget and within one rank-step of it.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch

from .grouping import Groups, intra_group_similarity


@dataclass(frozen=True)
class LayerLayout:
    """Which per-layer tensors a compressed module stores (they all cost parameters)."""

    sigma: bool = True
    scale: bool = True
    bias: bool = False

    def group_cost(self, rank: int, size: int, d_in: int, d_out: int) -> int:
        per_layer = rank * d_out + (rank if self.sigma else 0) + (d_in if self.scale else 0)
        per_layer += d_out if self.bias else 0
        return rank * d_in + size * per_layer

    def group_step(self, size: int, d_in: int, d_out: int) -> int:
        """Parameters added by one more rank."""
        return d_in + size * (d_out + (1 if self.sigma else 0))


def original_cost(size: int, d_in: int, d_out: int, bias: bool) -> int:
    return size * (d_in * d_out + (d_out if bias else 0))


def max_rank(size: int, d_in: int, d_out: int) -> int:
    return min(d_in, size * d_out)


def inverse_similarity(groups: Groups, similarity: torch.Tensor | None, reduce: str) -> list[float]:
    """eta_g (eq. 10), normalised to sum 1; groups of one get no share (no pairs to measure)."""
    raw = []
    for g in groups:
        s = intra_group_similarity(similarity, g, reduce) if similarity is not None else None
        raw.append(0.0 if s is None else 1.0 / max(s, 1e-12))
    total = sum(raw)
    if total == 0:  # every group a singleton, or no similarity: split by size
        sizes = [len(g) for g in groups]
        return [s / sum(sizes) for s in sizes]
    return [r / total for r in raw]


def group_budgets(
    groups: Groups, ratio: float, d_in: int, d_out: int, bias: bool, *,
    adaptive: bool, mu: float, similarity: torch.Tensor | None, reduce: str = "mean",
) -> list[float]:
    """B_g of eq. 9 (uniform allocation is mu = 1)."""
    num_layers = sum(len(g) for g in groups)
    if not adaptive:
        mu = 1.0
    eta = inverse_similarity(groups, similarity, reduce)
    total = ratio * original_cost(num_layers, d_in, d_out, bias)
    return [mu * ratio * original_cost(len(g), d_in, d_out, bias) + e * (1 - mu) * total for g, e in zip(groups, eta)]


def rank_for_budget(budget: float, layout: LayerLayout, size: int, d_in: int, d_out: int) -> int:
    """Largest rank whose cost fits (eq. 4 / 11 for this layout), clipped to [0, full rank]."""
    fixed = layout.group_cost(0, size, d_in, d_out)
    r = int((budget - fixed) // layout.group_step(size, d_in, d_out))
    return max(0, min(r, max_rank(size, d_in, d_out)))


def allocate_ranks(
    groups: Groups, ratio: float, d_in: int, d_out: int, layout: LayerLayout, *,
    adaptive: bool, mu: float = 0.9, similarity: torch.Tensor | None = None, reduce: str = "mean",
) -> list[int]:
    """Ranks for every group of one module type, exactly within the type's budget."""
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if not 0 <= mu <= 1:
        raise ValueError(f"mu must be in [0, 1], got {mu}")
    budgets = group_budgets(groups, ratio, d_in, d_out, layout.bias, adaptive=adaptive, mu=mu,
                            similarity=similarity, reduce=reduce)
    ranks = [rank_for_budget(b, layout, len(g), d_in, d_out) for b, g in zip(budgets, groups)]
    limit = int(ratio * original_cost(sum(map(len, groups)), d_in, d_out, layout.bias))
    ranks = _redistribute(groups, ranks, budgets, limit, layout, d_in, d_out)
    if min(ranks) < 1:
        raise ValueError(
            f"ratio {ratio} is too small for a ({d_in} x {d_out}) module type: a group gets rank 0"
        )
    return ranks


def _redistribute(groups, ranks, budgets, limit, layout, d_in, d_out) -> list[int]:
    """Hand the flooring remainder back, one rank at a time, to the group furthest below its target."""
    ranks = list(ranks)
    cost = lambda i: layout.group_cost(ranks[i], len(groups[i]), d_in, d_out)  # noqa: E731
    used = sum(cost(i) for i in range(len(groups)))
    while True:
        candidates = [
            i for i in range(len(groups))
            if ranks[i] < max_rank(len(groups[i]), d_in, d_out)
            and used + layout.group_step(len(groups[i]), d_in, d_out) <= limit
        ]
        if not candidates:
            return ranks
        i = max(candidates, key=lambda j: (budgets[j] - cost(j)) / max(budgets[j], 1.0))
        used += layout.group_step(len(groups[i]), d_in, d_out)
        ranks[i] += 1


def spectrum_ranks(
    groups: Groups, ratio: float, d_in: int, d_out: int, layout: LayerLayout, energies: list[torch.Tensor], *,
    mu: float = 0.5,
) -> list[int]:
    """Ranks that keep the most (whitened) energy within the type's budget.

    ``energies[g]`` are group g's squared singular values, largest first and comparable across groups
    (:func:`sharvet.decomposition.group_energies`). Each group starts from ``mu`` of its proportional share
    (eq. 9's guarantee, so no group collapses); the rest goes greedily to the largest ``s^2 / cost`` of a next
    rank. Energies fall with the rank, so the greedy choice is the optimum of the relaxed problem.
    """
    if not 0 <= mu <= 1:
        raise ValueError(f"mu must be in [0, 1], got {mu}")
    if len(energies) != len(groups):
        raise ValueError(f"{len(energies)} spectra for {len(groups)} groups")
    floor = [mu * ratio * original_cost(len(g), d_in, d_out, layout.bias) for g in groups]
    ranks = [max(1, rank_for_budget(b, layout, len(g), d_in, d_out)) for b, g in zip(floor, groups)]
    limit = int(ratio * original_cost(sum(map(len, groups)), d_in, d_out, layout.bias))
    used = sum(layout.group_cost(r, len(g), d_in, d_out) for r, g in zip(ranks, groups))
    if used > limit:
        raise ValueError(f"ratio {ratio} is too small for a ({d_in} x {d_out}) module type: a group gets rank 0")

    def gain(i: int) -> float:
        e = energies[i]
        return float(e[ranks[i]]) / layout.group_step(len(groups[i]), d_in, d_out) if ranks[i] < len(e) else -1.0

    heap = [(-gain(i), i) for i in range(len(groups))]
    heapq.heapify(heap)
    while heap:
        neg, i = heapq.heappop(heap)
        step = layout.group_step(len(groups[i]), d_in, d_out)
        if neg > 0 or ranks[i] >= max_rank(len(groups[i]), d_in, d_out) or used + step > limit:
            continue  # spectrum exhausted, full rank, or this group's step no longer fits (smaller ones may)
        ranks[i] += 1
        used += step
        heapq.heappush(heap, (-gain(i), i))
    return ranks
