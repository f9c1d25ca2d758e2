"""Benchmark: ways to accumulate ``X^T X`` of one calibration batch (2,048 tokens) on the CPU.

The calibration pass's statistics cost as much as half the teacher forward on a 2-core CPU; this prints the
milliseconds per batch of the shipped panel scheme (``calibration.accumulate_gram``) beside a full matmul,
other panel widths, pre-transposed inputs and 4,096-token chunks, for the 576- and 1536-wide inputs of
SmolLM2-135M. (BLAS ``ssyrk`` through scipy is left out: its OpenBLAS thread pool, once started, slows torch's
own operations in the same process, so it cannot be timed fairly beside them, nor used in the pass.)

    python benchmarks/gram_kernels.py
"""
from __future__ import annotations

import time

import torch

from sharvet.calibration import accumulate_gram


def ms(fn, repeat: int = 20) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return 1000 * (time.perf_counter() - t0) / repeat


def panels(acc: torch.Tensor, x: torch.Tensor, width: int, pre: bool) -> None:
    d = x.shape[1]
    count = -(-d // width)
    step = -(-d // count)
    xt = x.T.contiguous() if pre else x.T
    for start in range(0, d, step):
        stop = min(start + step, d)
        block = xt[start:stop] @ x[:, start:]
        acc[start:stop, start:] += block
        if stop < d:
            acc[stop:, start:stop] += block[:, stop - start:].T


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| width | tokens | shipped panels | full x^T x | panels 128 | panels 512 | pre-transposed 256 |")
    print("|---|---|---|---|---|---|---|")
    for d in (576, 1536):
        for n in (2048, 4096):
            x = torch.randn(n, d)
            acc = torch.zeros(d, d, dtype=torch.float64)
            cells = [ms(lambda: accumulate_gram(acc, x)), ms(lambda: acc.add_(x.T @ x)),
                     ms(lambda: panels(acc, x, 128, False)), ms(lambda: panels(acc, x, 512, False)),
                     ms(lambda: panels(acc, x, 256, True))]
            print(f"| {d} | {n} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
