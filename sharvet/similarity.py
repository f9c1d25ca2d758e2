"""Cross-layer similarity of one module type: structural (eq. 7), functional (eq. 8, CKA), joint (eq. 6).

**Functional similarity on real inputs, without activations.** Linear CKA of ``Y_i = X W_i^T`` and
``Y_j = X W_j^T`` on one centred input matrix ``X`` depends on ``X`` only through its covariance ``C``:
``CKA = ||W_j C W_i^T||_F^2 / (||W_i C W_i^T||_F ||W_j C W_j^T||_F)``. Eq. 8 evaluates both modules on
the *same* ``X_C``; we take ``X_C`` to be the real inputs of **both** layers stacked, whose covariance is
the pooled ``C_ij = (E_i[xx^T] + E_j[xx^T]) / 2 - m m^T`` with ``m = (mu_i + mu_j) / 2``. It is symmetric
in (i, j), uses only inputs these two modules really see (unlike the reference, which feeds token
embeddings to every module), and works for wide-input modules such as ``down``.

**Scale.** CKA pairs run on the compute device in float32 (``precision``), a batch of pairs per product, over
blocks of layers that fit ``DEVICE_BUDGET``: a block's weights and covariances are brought to the device,
every pair between two resident blocks is scored, and the next block replaces one of them, so neither all
layers' weights nor all their statistics are ever on the device at once (LLaMA-3-8B's 32 ``mlp_in``
covariances alone are 2 GiB in float32, ``down_in`` 26 GiB). Covariances are centred per layer in float64
before the cast, and the pooled one is rebuilt as ``(C_i + C_j) / 2 + d d^T / 4`` with ``d = mu_i - mu_j``
(the same matrix, without float32 cancellation against large means). Module types that read one input
(q, k, v) share its covariances.

**Tensor cores** (``cka_matmul``). At LLaMA-3-70B the CKA products are nearly all of similarity's work (``down``:
two 8192 x 28672 x 28672 products per pair), and float32 without tensor cores runs them at a fraction of
the GPU's speed. Plain TF32 (inputs rounded to 10 mantissa bits) is not accurate enough: on SmolLM2's
statistics it moves CKA by up to 5e-4 and changes groupings (``docs/similarity_cost.md``). So on CUDA each
float32 operand is split into a TF32-exact high part and the rest, and a product is the float32 sum of three
TF32 products (``split_matmul``: only the low x low part, below 2^-20 of the product, is dropped), about as
accurate as one float32 product (tested under emulated TF32 rounding). Operands exact in TF32 (bf16 weights)
skip their low part. TF32 is switched on for the pass of pairs only (``cuda_matmul_precision``). It is opt-in
(``cka_matmul="split-tf32"``): on an H200 (2026-11-30, LLaMA-3-70B shapes) its products of a pair ran 2.94x faster
than float32's with CKA within 3e-6 of float64 (float32: 2e-7); its model-level CUDA test passed there and a
70B-shaped compression ran with it (2026-12-01), but no same-session float32 control has timed the whole planning
stage yet, so every device multiplies in float32 by default.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .calibration import CalibrationStats
from .models import ModelAdapter
from .streaming import free_bytes

#: device bytes the resident blocks and one batch of pairs may take (bounds similarity's peak at any size;
#: at most a quarter of the free memory)
DEVICE_BUDGET = 6 * 2**30
#: on a CPU, bytes of work tensors one batch of CKA pairs may take (half of it, as on any device): larger batches
#: only add fresh allocations and cache misses (SmolLM2-135M's CKA pass on the 2-core machine: 20.5 s in 4 GiB
#: batches, 14.6 s in 256 MiB ones, the same matrices; eighteenth session)
CPU_PAIR_BATCH = 256 * 2**20
#: how float32 CKA products multiply: one float32 matmul, or three TF32 tensor-core matmuls (``split_matmul``)
CKA_MATMULS = ("ieee", "split-tf32")
#: float32 bits below TF32's 10-bit mantissa
TF32_DROPPED_BITS = 13


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
    #: how the float32 CKA products multiply on CUDA (``CKA_MATMULS``; the module docstring says why "ieee")
    cka_matmul: str = "ieee"

    def __post_init__(self) -> None:
        if not (self.use_cosine or self.use_frobenius or self.use_cka):
            raise ValueError("similarity needs at least one of cosine, Frobenius distance, CKA")
        check_cka_matmul(self.cka_matmul)


def check_cka_matmul(name: str) -> None:
    if name not in CKA_MATMULS:
        raise ValueError(f"cka_matmul is one of {CKA_MATMULS}, not {name!r}")


def device_budget(device: torch.device) -> int:
    """Bytes the resident blocks and one batch of pairs may take on ``device``: ``DEVICE_BUDGET``, at most a
    quarter of its free memory."""
    return min(DEVICE_BUDGET, free_bytes(device) // 4)


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


# ---------------------------------------------------------------------- TF32 tensor cores at float32 accuracy
@contextmanager
def cuda_matmul_precision(device: torch.device, precision: str) -> Iterator[None]:
    """Float32 matmuls on CUDA in ``precision`` ("tf32": tensor cores, "ieee": float32) inside the block only;
    the previous setting is restored after, also on errors, so nothing else in the process sees it (nor does a
    process-wide TF32 setting reach the block). Off CUDA it changes nothing."""
    if precision not in ("tf32", "ieee"):
        raise ValueError(f"CUDA matmul precision is 'tf32' or 'ieee', not {precision!r}")
    if device.type != "cuda":
        yield
        return
    flags = torch.backends.cuda.matmul
    try:  # torch >= 2.9; its legacy switch (allow_tf32) must not be mixed with it
        name, value, previous = "fp32_precision", precision, flags.fp32_precision
    except AttributeError:  # older torch: only the legacy switch
        name, value, previous = "allow_tf32", precision == "tf32", flags.allow_tf32
    setattr(flags, name, value)
    try:
        yield
    finally:
        setattr(flags, name, previous)


def split_tf32(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Float32 ``x`` as ``hi + lo``: ``hi`` keeps TF32's bits (exact in TF32), ``lo`` the rest, exactly
    (None where it is all zero, as for bf16 weights)."""
    hi = (x.view(torch.int32) & -(1 << TF32_DROPPED_BITS)).view(torch.float32)
    lo = x - hi
    return hi, lo if bool(lo.any()) else None


def split_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for float32 ``a, b`` as ``a_hi b_hi + a_hi b_lo + a_lo b_hi`` (``split_tf32``): with TF32
    matmuls, ``hi`` parts multiply exactly and ``lo`` parts lose 2^-11 of themselves, so the result is float32-
    accurate; only ``a_lo b_lo`` (below 2^-20 of the product) is left out."""
    (a_hi, a_lo), (b_hi, b_lo) = split_tf32(a), split_tf32(b)
    out = a_hi @ b_hi
    if b_lo is not None:
        out += a_hi @ b_lo
    if a_lo is not None:
        out += a_lo @ b_hi
    return out


# ---------------------------------------------------------------------- pairs over resident blocks of layers
def layer_blocks(n: int, layer_bytes: int, budget: int) -> list[list[int]]:
    """Consecutive blocks of layers, two of which fit in half of ``budget`` (the rest is for a batch of pairs)."""
    size = max(1, min(n, budget // max(4 * layer_bytes, 1)))
    return [list(range(start, min(start + size, n))) for start in range(0, n, size)]


def block_pairs(n: int, layer_bytes: int, budget: int, load: Callable[[int], dict[str, torch.Tensor]]
                ) -> Iterator[tuple[list[tuple[int, int]], dict[int, dict[str, torch.Tensor]]]]:
    """Every pair ``i < j`` once, with the per-layer tensors of both layers resident (from ``load``).

    Block ``a`` stays while blocks ``a, a+1, ...`` pass by it, so each layer is loaded about
    ``blocks / 2 + 1`` times and at most two blocks are resident.
    """
    blocks = layer_blocks(n, layer_bytes, budget)
    for a, block_a in enumerate(blocks):
        resident_a = {layer: load(layer) for layer in block_a}
        for block_b in blocks[a:]:
            resident = resident_a if block_b is block_a else {**resident_a, **{l: load(l) for l in block_b}}
            pairs = [(i, j) for i in block_a for j in block_b if i < j]
            if pairs:
                yield pairs, resident
            del resident
        del resident_a


def batches(pairs: list[tuple[int, int]], pair_bytes: int, budget: int) -> Iterator[tuple[list[int], list[int]]]:
    """The pairs in batches whose work tensors take at most half of ``budget``, as index lists ``(I, J)``."""
    size = max(1, budget // max(2 * pair_bytes, 1))
    for start in range(0, len(pairs), size):
        chunk = pairs[start:start + size]
        yield [i for i, _ in chunk], [j for _, j in chunk]


def _stack(resident: dict[int, dict[str, torch.Tensor]], layers: list[int], name: str) -> torch.Tensor:
    return torch.stack([resident[layer][name] for layer in layers])


# ---------------------------------------------------------------------- structural (eq. 7)
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


def cosine_and_distance(adapter: ModelAdapter, type_name: str, device: torch.device,
                        budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine of flattened weights and the inverse Frobenius distance (diagonal: inf), float64 on the CPU.

    Both come from inner products accumulated in float64 (whatever the similarity's ``precision``), one product per
    pair of resident blocks (:func:`_cross_products`), ``dist^2 = |w_i|^2 + |w_j|^2 - 2 w_i . w_j``. Why: copying
    both weights of every pair into float32 batches took SmolLM2-135M's structural pass 28 s on a 2-core CPU (1.3 s
    now), and float64's 1e-16 keeps the cancellation harmless unless two layers agree to within ~1e-6 of their norm
    (where the inverse distance is huge either way).
    """
    n = adapter.num_layers
    d_in, d_out = adapter.shape(type_name)
    cos, inv = torch.eye(n, dtype=torch.float64), torch.full((n, n), math.inf, dtype=torch.float64)

    def load(layer: int) -> dict[str, torch.Tensor]:
        ws = [adapter.weight(layer, type_name).to(device).flatten()]  # resident in its own dtype (bf16: half)
        return {"w": ws[0], "sq": _cross_products(ws, ws, budget)[0, 0]}

    stored = d_in * d_out * adapter.weight(0, type_name).element_size()
    for pairs, resident in block_pairs(n, stored, budget, load):
        rows, cols = sorted({i for i, _ in pairs}), sorted({j for _, j in pairs})
        if set(rows) & set(cols):  # a block with itself: one Gram of its layers, each slice converted once
            rows = cols = sorted(set(rows) | set(cols))
        a = [resident[i]["w"] for i in rows]
        dots = _cross_products(a, a if cols is rows else [resident[j]["w"] for j in cols], budget)
        row, col = {layer: k for k, layer in enumerate(rows)}, {layer: k for k, layer in enumerate(cols)}
        for i, j in pairs:
            dot, sq_i, sq_j = dots[row[i], col[j]], resident[i]["sq"], resident[j]["sq"]
            c = float(dot / torch.sqrt(sq_i * sq_j).clamp_min(1e-30))
            d = 1.0 / (float(torch.sqrt((sq_i + sq_j - 2 * dot).clamp_min(0.0))) + 1e-8)
            cos[i, j], cos[j, i], inv[i, j], inv[j, i] = c, c, d, d
    return cos, inv


def _cross_products(a: list[torch.Tensor], b: list[torch.Tensor], budget: int) -> torch.Tensor:
    """``A B^T`` of flat vectors in float64 (CPU), a slice of columns at a time: the slices of both lists in float64
    take at most half of ``budget``. ``b is a`` (a Gram): each slice is stacked and converted once."""
    size = a[0].numel()
    step = max(1, budget // (2 * 8 * (len(a) + len(b))))
    out = torch.zeros(len(a), len(b), dtype=torch.float64, device=a[0].device)
    for start in range(0, size, step):
        sa = torch.stack([w[start:start + step] for w in a]).double()
        sb = sa if b is a else torch.stack([w[start:start + step] for w in b]).double()
        out += sa @ sb.T
    return out.cpu()


# ---------------------------------------------------------------------- functional (eq. 8)
def pooled_covariance(stats: CalibrationStats, key: str, i: int, j: int, device, dtype) -> torch.Tensor:
    """The pooled covariance of layers ``i`` and ``j``'s inputs (the definition; the batched path rebuilds it)."""
    a, b = stats.get(i, key), stats.get(j, key)
    m = 0.5 * (a.mean + b.mean)
    c = 0.5 * (a.second_moment + b.second_moment) - torch.outer(m, m)
    return c.to(device, dtype)


def cka_from_covariance(w_i: torch.Tensor, w_j: torch.Tensor, cov: torch.Tensor,
                        grams: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
    """Linear CKA of ``X W_i^T`` and ``X W_j^T`` for centred ``X`` with covariance ``cov`` (one pair).

    Tall weights (d_out >= d_in) work in input space through ``G = W^T W`` (``grams``, if precomputed);
    wide ones in output space. Both are exact.
    """
    if grams is None and w_i.shape[0] >= w_i.shape[1]:
        grams = (w_i.T @ w_i, w_j.T @ w_j)
    num, den_i, den_j = _cka_terms(w_i[None], w_j[None], cov[None],
                                   None if grams is None else (grams[0][None], grams[1][None]))
    return float(num[0] / torch.sqrt(den_i[0].clamp_min(1e-30) * den_j[0].clamp_min(1e-30)))


def _cka_terms(w_i: torch.Tensor | None, w_j: torch.Tensor | None, cov: torch.Tensor,
               grams: tuple[torch.Tensor, torch.Tensor] | None,
               mm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.matmul) -> tuple[torch.Tensor, ...]:
    """Numerator and the two denominator terms of CKA for a batch of pairs (leading dimension), products by ``mm``.

    With ``grams`` (tall weights): ``tr(C G_i C G_j)`` etc. in input space; else in output space.
    """
    if grams is not None:
        p, q = mm(cov, grams[0]), mm(cov, grams[1])
        pt, qt = p.transpose(1, 2), q.transpose(1, 2)
        return (p * qt).sum((1, 2)), (p * pt).sum((1, 2)), (q * qt).sum((1, 2))
    a_i, a_j = mm(w_i, cov), mm(w_j, cov)
    return (mm(a_j, w_i.transpose(1, 2)).square().sum((1, 2)), mm(a_i, w_i.transpose(1, 2)).square().sum((1, 2)),
            mm(a_j, w_j.transpose(1, 2)).square().sum((1, 2)))


def functional_similarities(adapter: ModelAdapter, types: list[str], stats: CalibrationStats, input_key: str,
                            device: torch.device, dtype: torch.dtype, *, budget: int,
                            progress: bool = True, cka_matmul: str = "ieee") -> dict[str, torch.Tensor]:
    """CKA matrices (float64, CPU) of every type in ``types``, all reading ``input_key``, from one pass of pairs.

    ``cka_matmul`` (``CKA_MATMULS``) is how float32 products multiply (see the module docstring).
    """
    check_cka_matmul(cka_matmul)
    split = cka_matmul == "split-tf32" and dtype == torch.float32
    with cuda_matmul_precision(device, "tf32" if split else "ieee"):
        return _functional_similarities(adapter, types, stats, input_key, device, dtype, budget, progress,
                                        split_matmul if split else torch.matmul)


def _functional_similarities(adapter: ModelAdapter, types: list[str], stats: CalibrationStats, input_key: str,
                             device: torch.device, dtype: torch.dtype, budget: int, progress: bool,
                             mm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    n = adapter.num_layers
    shapes = {t: adapter.shape(t) for t in types}
    tall = {t: d_out >= d_in for t, (d_in, d_out) in shapes.items()}
    d = shapes[types[0]][0]
    size = torch.finfo(dtype).bits // 8

    def load(layer: int) -> dict[str, torch.Tensor]:
        s = stats.get(layer, input_key)
        mean = s.mean.to(device)
        cov = s.xtx.to(device, torch.float64, copy=True).div_(max(s.count, 1)).addr_(mean, mean, alpha=-1)
        out = {"cov": cov.to(dtype), "mean": mean.to(dtype)}  # centred in float64, then cast
        del cov
        for t in types:
            w = adapter.weight(layer, t).to(device, dtype)
            out[t] = mm(w.T, w) if tall[t] else w  # tall: input-space Gram W^T W
        return out

    per_layer = size * (d * d + sum(d * d if tall[t] else d_out * d for t, (_, d_out) in shapes.items()))
    # a pair's work: C, and per type two products as large as C (tall) or two (d_out, d) and the inputs; split
    # products add both operands' two parts
    work = 6 if mm is split_matmul else 4
    per_pair = size * (work * d * d + work * max(d * d if tall[t] else shapes[t][1] * d for t in types))
    pair_budget = budget if torch.device(device).type != "cpu" else min(budget, CPU_PAIR_BATCH)
    out = {t: torch.eye(n, dtype=torch.float64) for t in types}
    bar = tqdm(total=n * (n - 1) // 2, desc=f"CKA {input_key}", unit="pair", disable=not progress, leave=False)
    for pairs, resident in block_pairs(n, per_layer, budget, load):
        for I, J in batches(pairs, per_pair, pair_budget):
            delta = _stack(resident, I, "mean") - _stack(resident, J, "mean")
            cov = 0.5 * (_stack(resident, I, "cov") + _stack(resident, J, "cov")) \
                + 0.25 * delta[:, :, None] * delta[:, None, :]
            for t in types:
                a, b = _stack(resident, I, t), _stack(resident, J, t)
                num, den_i, den_j = _cka_terms(a, b, cov, (a, b) if tall[t] else None, mm)
                cka = (num.double() / torch.sqrt(den_i.double().clamp_min(1e-30) * den_j.double().clamp_min(1e-30)))
                cka = cka.cpu()
                out[t][I, J] = out[t][J, I] = cka
            bar.update(len(I))
            del cov
    bar.close()
    return out


# ---------------------------------------------------------------------- joint (eq. 6)
def joint_similarity(structural: torch.Tensor | None, functional: torch.Tensor | None) -> torch.Tensor:
    """Eq. 6: S = 1 - (1 - S_s)(1 - S_f); a switched-off part counts as 0."""
    s_s = structural if structural is not None else torch.zeros_like(functional)
    s_f = functional if functional is not None else torch.zeros_like(structural)
    s = 1.0 - (1.0 - s_s) * (1.0 - s_f)
    s.fill_diagonal_(1.0)
    return s


def model_similarity(
    adapter: ModelAdapter,
    types: list[str],
    stats: CalibrationStats | None,
    cfg: SimilarityConfig,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
    precision: torch.dtype = torch.float32,
    cka_matmul: str | None = None,
) -> dict[str, TypeSimilarity]:
    """Similarity matrices of every type in ``types``; CKA of the types reading one input in one pass.

    ``precision`` is the dtype of the CKA pair products (the structural part accumulates in float64; float32 agrees
    with float64 to ~1e-6 on SmolLM2-like statistics: ``tests/test_scale_similarity.py``); ``cka_matmul`` how
    float32 CKA products multiply (``functional_similarities``; None: ``cfg.cka_matmul``).
    """
    cka_matmul = cka_matmul or cfg.cka_matmul
    device = torch.device(device)
    budget = device_budget(device)
    if cfg.use_cka and stats is None:
        raise ValueError("CKA needs calibration statistics")
    functional: dict[str, torch.Tensor] = {}
    if cfg.use_cka:
        by_input: dict[str, list[str]] = {}
        for t in types:
            by_input.setdefault(adapter.module_type(t).input_key, []).append(t)
        for key, members in by_input.items():
            functional.update(functional_similarities(adapter, members, stats, key, device, precision,
                                                      budget=budget, progress=progress, cka_matmul=cka_matmul))
    out = {}
    for t in tqdm(types, desc="similarity", unit="type", disable=not progress):
        cos, inv = cosine_and_distance(adapter, t, device, budget)
        s_s = structural_similarity(cos, inv, cfg)
        s_f = functional.get(t)
        out[t] = TypeSimilarity(joint_similarity(s_s, s_f), s_s, s_f, cos, inv)
    return out
