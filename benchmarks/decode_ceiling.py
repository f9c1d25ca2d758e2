"""Benchmark reading (issue 17): how far a decode step's speedup can go when only the compressed modules' matmuls
get faster.

A decode step is its linear modules' matmuls plus work that compression leaves alone (the LM head, norms, rotary,
attention, residual adds, and the gaps between their small kernels). From a whole step (``sharvet bench`` records,
decode at batch 1, a CUDA graph a step) and the matmul chain alone (``benchmarks/grouped_gemv.py``, also replayed from
a CUDA graph), both measured on the same shape, this prints per ratio: the time outside the matmuls in each model,
the compressed matmuls' rate, the speedup the step would reach if they moved their bytes at the rate cuBLAS reaches on
dense's matmuls (the ceiling), and the rate the target (``--target`` x the bytes bound) would need.

    python benchmarks/decode_ceiling.py --steps results/inference/decode-h200-2026-12-01-s16-gated0-pair1.json \\
        --matmuls results/inference/grouped-gemv-h200-2026-12-01-s17-tiles-0.3.json \\
                  results/inference/grouped-gemv-h200-2026-12-01-s17-tiles-0.5.json
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def decode_rows(paths: list[Path]) -> dict[float, list[dict]]:
    """Batch-1 decode records by ratio."""
    out: dict[float, list[dict]] = {}
    for path in paths:
        for r in json.loads(path.read_text())["records"]:
            if r.get("phase") == "decode" and r.get("batch") == 1:
                out.setdefault(r["ratio"], []).append(r)
    return out


def matmul_rows(paths: list[Path], variant: str) -> dict[float, tuple[dict, dict, str]]:
    """(dense row, compressed row, shape) of one token's matmuls by ratio; ``variant``: the compressed row's name."""
    out = {}
    for path in paths:
        record = json.loads(path.read_text())
        rows = {r["variant"]: r for r in record["rows"] if r["tokens"] == 1}
        if "dense" not in rows or variant not in rows:
            raise SystemExit(f"{path}: no one-token rows 'dense' and {variant!r} (it has {', '.join(rows)})")
        out[record["ratio"]] = (rows["dense"], rows[variant], record["shape"])
    return out


def ceiling(steps: list[dict], dense_mm: dict, compressed_mm: dict, target: float) -> dict:
    """One ratio's reading (milliseconds, TB/s): medians of the steps given, the matmul chains as measured."""
    dense_step = statistics.median(r["dense_ms"] for r in steps)
    step = statistics.median(r["compressed_ms"] for r in steps)
    bound = steps[0]["bound"]
    dense_ms, ms = dense_mm["seconds"] * 1e3, compressed_mm["seconds"] * 1e3
    cublas_rate = dense_mm["bytes"] / dense_ms / 1e9  # TB/s
    outside = step - ms
    goal_step = dense_step / (target * bound)
    return {"dense_step": dense_step, "dense_matmuls": dense_ms, "dense_outside": dense_step - dense_ms,
            "cublas_rate": cublas_rate, "step": step, "matmuls": ms, "outside": outside,
            "rate": compressed_mm["bytes"] / ms / 1e9, "speedup": dense_step / step, "bound": bound,
            "goal": target * bound,
            "ceiling": dense_step / (outside + compressed_mm["bytes"] / cublas_rate / 1e9),
            "needed_rate": (compressed_mm["bytes"] / (goal_step - outside) / 1e9 if goal_step > outside
                            else float("inf"))}


def table(readings: dict[float, dict]) -> str:
    head = ("| ratio | dense step / matmuls / outside (ms) | compressed step / matmuls / outside (ms) | cuBLAS rate on "
            "dense / compressed matmuls' rate (TB/s) | speedup | target | ceiling at cuBLAS's rate | rate the "
            "target needs (TB/s) |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for ratio, c in sorted(readings.items()):
        lines.append(f"| {ratio} | {c['dense_step']:.2f} / {c['dense_matmuls']:.2f} / {c['dense_outside']:.2f} | "
                     f"{c['step']:.2f} / {c['matmuls']:.2f} / {c['outside']:.2f} | {c['cublas_rate']:.2f} / "
                     f"{c['rate']:.2f} | {c['speedup']:.2f}x | {c['goal']:.2f}x | {c['ceiling']:.2f}x | "
                     f"{c['needed_rate']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[float, dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=Path, nargs="+", required=True, help="sharvet bench record files (decode rows)")
    p.add_argument("--matmuls", type=Path, nargs="+", required=True, help="grouped_gemv.py record files")
    p.add_argument("--variant", default="grouped 2x1024x4/8x512x4", help="the compressed row of the matmul records")
    p.add_argument("--target", type=float, default=0.85, help="the target as a share of the bytes bound")
    a = p.parse_args(argv)
    steps, matmuls = decode_rows(a.steps), matmul_rows(a.matmuls, a.variant)
    readings = {}
    for ratio, (dense_mm, compressed_mm, shape) in matmuls.items():
        rows = [r for r in steps.get(ratio, []) if r["shape"] == shape]
        if rows:
            readings[ratio] = ceiling(rows, dense_mm, compressed_mm, a.target)
    if not readings:
        raise SystemExit("no ratio has both a decode record and a matmul record of the same shape")
    print(table(readings))
    return readings


if __name__ == "__main__":
    main()
