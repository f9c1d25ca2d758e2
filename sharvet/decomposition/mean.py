"""The one matrix a SEQ / CYCLE set stores for all its member layers.

Takase & Kiyono train shared layers from scratch; compressing a *trained* model needs an initial value
close to every member. In weight space the least-squares choice, ``argmin_W sum_l ||W - W_l||_F^2``, is
the plain mean. On the calibration inputs the error that matters is ``sum_l ||X_l (W - W_l)^T||^2``,
minimised by the activation-weighted mean ``W = (sum_l W_l C_l)(sum_l C_l)^-1`` with ``C_l = X_l^T X_l``
-- what whitened SVD is to plain SVD. A group of one returns its weight unchanged. Biases (GPT-2) are
shared too, as the mean of the members' (whole layers are shared in Takase & Kiyono).
"""
from __future__ import annotations

import torch


def shared_matrix(weights: list[torch.Tensor], xtx: list[torch.Tensor] | None = None, *,
                  ridge: float = 1e-6) -> torch.Tensor:
    """The shared ``(d_out, d_in)`` weight: plain mean, or activation-weighted mean when ``xtx`` is given.

    ``ridge`` (relative to the mean diagonal of ``sum C_l``) keeps the solve defined when some input
    direction is never excited.
    """
    if len(weights) == 1:
        return weights[0].clone()
    dtype = weights[0].dtype
    w64 = [w.double() for w in weights]
    if xtx is None:
        return (sum(w64) / len(w64)).to(dtype)
    c64 = [c.to(w64[0].device, torch.float64) for c in xtx]
    total = sum(c64)
    total = total + ridge * float(total.diagonal().mean().abs().clamp_min(1e-30)) * torch.eye(
        len(total), dtype=total.dtype, device=total.device)
    rhs = sum(w @ c for w, c in zip(w64, c64))  # (d_out, d_in)
    # W total = rhs  <=>  total^T W^T = rhs^T (total is symmetric)
    return torch.linalg.solve(total, rhs.T).T.contiguous().to(dtype)
