"""Modules of the inference form: one first-stage matmul for every module of a layer that reads the same input.

A decoder layer calls its q, k and v projections (or gate and up) one after the other on the same tensor. Each
:class:`StageSlice` asks its layer's :class:`FusedFirstStage` for its slice of ``x [U_1; U_2; ...]^T``; the first
call computes the whole product, the others reuse it, and the last one drops it (:class:`SliceMemo`, which the
grouped kernels' stages use too). The memo is keyed on the input tensor itself (``is``), so a call on another tensor recomputes rather than reuse a stale product. Under
``torch.compile`` the memo is traced away: the graph holds one matmul and the slices.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class SliceMemo:
    """One product of an input, split into the parts of ``count`` modules that read it one after another: computed
    on the first part asked for, kept for the others, dropped after the last. Keyed on the input tensor itself."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._input: torch.Tensor | None = None
        self._parts: Sequence[torch.Tensor] = ()
        self._left = 0

    def part(self, x: torch.Tensor, index: int,
             parts: Callable[[torch.Tensor], Sequence[torch.Tensor]]) -> torch.Tensor:
        if self._input is not x:
            self._input, self._parts, self._left = x, parts(x), self.count
        part = self._parts[index]
        self._left -= 1
        if self._left == 0:
            self._input, self._parts = None, ()
        return part


class FusedFirstStage(nn.Module):
    """``x W^T`` split into the first stages of ``len(sizes)`` modules; ``W`` stacks their (scaled) bases."""

    def __init__(self, weight: nn.Parameter, sizes: list[int]) -> None:
        super().__init__()
        if weight.shape[0] != sum(sizes):
            raise ValueError(f"fused basis has {weight.shape[0]} rows, the slices need {sum(sizes)}")
        self.weight = weight
        self.sizes = tuple(sizes)
        self._memo = SliceMemo(len(sizes))

    def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
        return self._memo.part(x, index, lambda x: F.linear(x, self.weight).split(self.sizes, dim=-1))

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, sizes={self.sizes}"


class StageSlice(nn.Module):
    """A compressed linear layer whose first stage runs fused with its neighbours': ``y = slice V^T + b``."""

    def __init__(self, stage: FusedFirstStage, index: int, v: nn.Parameter, bias: nn.Parameter | None) -> None:
        super().__init__()
        self.stage = stage
        self.index = index
        self.v = v
        self.bias = bias
        self.in_features, self.out_features = stage.weight.shape[1], v.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.stage.part(x, self.index), self.v, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, slice={self.index}"
