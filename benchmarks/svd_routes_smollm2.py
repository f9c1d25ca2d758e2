"""Benchmark: truncated SVD of real SmolLM2-135M whitened groups, LAPACK's SVD vs eigh of the Gram matrix.

Prints, per group, the shape, the kept condition number, both wall times and both reconstruction errors
beside the optimum (the norm of the dropped singular values). Calibration: 8 x 1024 random tokens (the
spectra, not the statistics' quality, matter here).

    python benchmarks/svd_routes_smollm2.py
"""
from __future__ import annotations

import time

import torch

from sharvet.calibration import collect_stats
from sharvet.decomposition import svd
from sharvet.loading import load_original
from sharvet.models import adapter_for

GROUPS = (("q", (3, 4)), ("gate", (10, 11)), ("up", (20, 21, 22)), ("o", (5,)), ("down", (7,)))


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, 1000 * (time.perf_counter() - t0)


def main() -> None:
    loaded = load_original(None)
    adapter = adapter_for(loaded.model)
    ids = torch.randint(0, loaded.model.config.vocab_size, (8, 1024), generator=torch.Generator().manual_seed(0))
    stats = collect_stats(adapter, ids, progress=False)
    print("| type | layers | matrix | rank | kept s1/sr | LAPACK ms | Gram ms | error LAPACK | error Gram | optimum |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, layers in GROUPS:
        key = adapter.module_type(name).input_key
        wcat = torch.cat([adapter.weight(layer, name).double().T for layer in layers], dim=1)
        chol = svd.cholesky_with_jitter(sum(stats.get(layer, key).xtx for layer in layers))
        mat = chol.T @ wcat
        rank = int(0.8 * min(mat.shape))
        values = torch.linalg.svdvals(mat)
        (u1, s1, v1), t1 = timed(svd.truncate_by_svd, mat, rank)
        gram, t2 = timed(svd.truncate_by_gram, mat, rank)
        if gram is None:
            print(f"| {name} | {layers} | {tuple(mat.shape)} | {rank} | {float(values[0] / values[rank - 1]):.0f} | "
                  f"{t1:.0f} | (too ill-conditioned: LAPACK) | | | |")
            continue
        u2, s2, v2 = gram
        errors = [float(torch.linalg.norm(mat - (u * s) @ v)) for u, s, v in ((u1, s1, v1), (u2, s2, v2))]
        print(f"| {name} | {layers} | {tuple(mat.shape)} | {rank} | {float(values[0] / values[rank - 1]):.0f} | "
              f"{t1:.0f} | {t2:.0f} | {errors[0]:.13g} | {errors[1]:.13g} | {float(values[rank:].norm()):.13g} |")


if __name__ == "__main__":
    main()
