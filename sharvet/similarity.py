"""Cross-layer similarity of one module type: structural (eq. 7), functional (eq. 8, CKA), joint (eq. 6).

**Functional similarity on real inputs, without activations.** Linear CKA of ``Y_i = X W_i^T`` and
``Y_j = X W_j^T`` on one centred input matrix ``X`` depends on ``X`` only through its covariance ``C``:
``CKA = ||W_j C W_i^T||_F^2 / (||W_i C W_i^T||_F ||W_j C W_j^T||_F)``. Eq. 8 evaluates both modules on
the *same* ``X_C``; we take ``X_C`` to be the real inputs of **both** layers stacked, whose covariance is
the pooled ``C_ij = (E_i[xx^T] + E_j[xx^T]) / 2 - m m^T`` with ``m = (mu_i + mu_j) / 2``. It is symmetric
in (i, j), uses only inputs these two modules really see (unlike the reference, which feeds token
embeddings to every module), and works for wide-input modules such as ``down``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .calibration import CalibrationStats
from .models import ModelAdapter


@dataclass(frozen=True)
class SimilarityConfig:
    """Which parts of eq. 6-8 are used (each can be switched off for the Table 7 ablations)."""

    use_cosine: bool = True
    use_frobenius: bool = True
    use_cka: bool = True
    gamma_cos: float = 1.0
    #: None = the median off-diagonal inverse distance, so N(.) maps the typical pair to 1 - 1/e whatever
    #: the weight scale (the reference's fixed 10 leaves this term near 0 for small models)
    gamma_dist: float | None = None

    def __post_init__(self) -> None:
        if not (self.use_cosine or self.use_frobenius or self.use_cka):
            raise ValueError("similarity needs at least one of cosine, Frobenius distance, CKA")


@dataclass
class TypeSimilarity:
    """All similarity matrices (L x L, float64, CPU) of one module type."""

    joint: torch.Tensor
    structural: torch.Tensor | None
    functional: torch.Tensor | None
    cosine: torch.Tensor
    inv_distance: torch.Tensor


def normalise(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """N(x) = 1 - exp(-x / gamma)."""
    return 1.0 - torch.exp(-x / gamma)


def weight_stack(adapter: ModelAdapter, type_name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.stack([adapter.weight(layer, type_name).to(device, dtype) for layer in range(adapter.num_layers)])


def cosine_and_distance(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine of flattened weights and the inverse Frobenius distance (diagonal: inf)."""
    flat = weights.reshape(weights.shape[0], -1).double()
    gram = flat @ flat.T
    norms = gram.diagonal().clamp_min(1e-30)
    cos = gram / torch.sqrt(norms[:, None] * norms[None, :])
    dist2 = (norms[:, None] + norms[None, :] - 2 * gram).clamp_min(0)
    inv = 1.0 / (torch.sqrt(dist2) + 1e-8)
    inv.fill_diagonal_(math.inf)
    return cos.cpu(), inv.cpu()


def structural_similarity(cos: torch.Tensor, inv_dist: torch.Tensor, cfg: SimilarityConfig) -> torch.Tensor | None:
    parts = []
    if cfg.use_cosine:
        parts.append(normalise(cos + 1.0, cfg.gamma_cos))
    if cfg.use_frobenius:
        off = inv_dist[~torch.eye(len(inv_dist), dtype=torch.bool)]
        gamma = cfg.gamma_dist if cfg.gamma_dist is not None else float(off.median()) if off.numel() else 1.0
        parts.append(normalise(inv_dist, gamma))
    if not parts:
        return None
    s = torch.stack(parts).mean(0)
    s.fill_diagonal_(1.0)
    return s


def pooled_covariance(stats: CalibrationStats, key: str, i: int, j: int, device, dtype) -> torch.Tensor:
    a, b = stats.get(i, key), stats.get(j, key)
    m = 0.5 * (a.mean + b.mean)
    c = 0.5 * (a.second_moment + b.second_moment) - torch.outer(m, m)
    return c.to(device, dtype)


def cka_from_covariance(w_i: torch.Tensor, w_j: torch.Tensor, cov: torch.Tensor,
                        grams: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
    """Linear CKA of ``X W_i^T`` and ``X W_j^T`` for centred ``X`` with covariance ``cov``.

    Tall weights (d_out >= d_in) work in input space through ``G = W^T W`` (``grams``, if precomputed);
    wide ones in output space. Both are exact.
    """
    if w_i.shape[0] >= w_i.shape[1]:
        g_i, g_j = grams if grams is not None else (w_i.T @ w_i, w_j.T @ w_j)
        p, q = cov @ g_i, cov @ g_j
        num, den_i, den_j = (p * q.T).sum(), (p * p.T).sum(), (q * q.T).sum()
    else:
        a_i, a_j = w_i @ cov, w_j @ cov
        num = (a_j @ w_i.T).square().sum()
        den_i = (a_i @ w_i.T).square().sum()
        den_j = (a_j @ w_j.T).square().sum()
    return float(num / torch.sqrt(den_i.clamp_min(1e-30) * den_j.clamp_min(1e-30)))


def functional_similarity(
    weights: torch.Tensor, stats: CalibrationStats, input_key: str, *, progress: bool = True, desc: str = "CKA"
) -> torch.Tensor:
    n = weights.shape[0]
    out = torch.eye(n, dtype=torch.float64)
    tall = weights.shape[1] >= weights.shape[2]
    grams = weights.transpose(1, 2) @ weights if tall else None  # W^T W once per layer
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    for i, j in tqdm(pairs, desc=desc, unit="pair", disable=not progress, leave=False):
        cov = pooled_covariance(stats, input_key, i, j, weights.device, weights.dtype)
        g = (grams[i], grams[j]) if tall else None
        out[i, j] = out[j, i] = cka_from_covariance(weights[i], weights[j], cov, g)
    return out


def joint_similarity(structural: torch.Tensor | None, functional: torch.Tensor | None) -> torch.Tensor:
    """Eq. 6: S = 1 - (1 - S_s)(1 - S_f); a switched-off part counts as 0."""
    s_s = structural if structural is not None else torch.zeros_like(functional)
    s_f = functional if functional is not None else torch.zeros_like(structural)
    s = 1.0 - (1.0 - s_s) * (1.0 - s_f)
    s.fill_diagonal_(1.0)
    return s


def type_similarity(
    adapter: ModelAdapter,
    type_name: str,
    stats: CalibrationStats | None,
    cfg: SimilarityConfig,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> TypeSimilarity:
    device = torch.device(device)
    # float64 is cheap on GPUs; on CPU float32 halves the cost and CKA needs no more precision
    dtype = torch.float64 if device.type == "cuda" else torch.float32
    weights = weight_stack(adapter, type_name, device, dtype)
    cos, inv = cosine_and_distance(weights)
    s_s = structural_similarity(cos, inv, cfg)
    s_f = None
    if cfg.use_cka:
        if stats is None:
            raise ValueError("CKA needs calibration statistics")
        key = adapter.module_type(type_name).input_key
        s_f = functional_similarity(weights, stats, key, progress=progress, desc=f"CKA {type_name}")
    return TypeSimilarity(joint_similarity(s_s, s_f), s_s, s_f, cos, inv)


def model_similarity(
    adapter: ModelAdapter,
    types: list[str],
    stats: CalibrationStats | None,
    cfg: SimilarityConfig,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict[str, TypeSimilarity]:
    return {
        t: type_similarity(adapter, t, stats, cfg, device=device, progress=progress)
        for t in tqdm(types, desc="similarity", unit="type", disable=not progress)
    }
