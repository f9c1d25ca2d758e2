"""Benchmark: how much precision the similarity's pair products can give up, on SmolLM2-135M's real statistics.

SmolLM2-135M (float32 weights from the bundled GGUF), calibration statistics from ``--samples`` x ``--seq-len``
tokens of WikiText-2, every module type. Each variant is compared with the reference (``--reference``, float64 by
default): float32 (the CPU's products); plain TF32 (what a GPU's tensor cores do to float32 products: inputs
rounded to 10 mantissa bits, float32 accumulation; emulated here by rounding the float32 inputs of every matmul, to
nearest or towards zero); split TF32 (``cka_matmul="split-tf32"``, CUDA's default: three TF32 products per float32
product, under the same emulation); and, as a yardstick, float32 on a second calibration draw of the same size
(``seed=1``: the sampling noise the statistics carry anyway). Reports the largest absolute difference of the CKA, cosine and joint matrices,
whether the default grouping (spectral, k = L // 2) and the grouping at every k are the same, and the time of each.

    python benchmarks/scale_similarity.py --data-dir ../shared/data --json results/scale/similarity_cpu.json
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import time
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from sharvet.api import CalibrationSpec, calibration_ids
from sharvet.calibration import collect_stats
from sharvet.grouping import GroupingRequest, make_groups
from sharvet.loading import load_original
from sharvet.models import adapter_for
from sharvet.similarity import TF32_DROPPED_BITS, SimilarityConfig, TypeSimilarity, model_similarity

MATMULS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__,
           torch.mm, torch.Tensor.mm, torch.bmm, torch.Tensor.bmm}


def to_tf32(x: torch.Tensor, rounding: str = "nearest") -> torch.Tensor:
    """``x`` (float32) rounded to TF32's 10-bit mantissa: to nearest (ties to even) or towards zero ("truncate")."""
    bits = x.contiguous().view(torch.int32)
    if rounding == "nearest":
        bits = bits + ((1 << (TF32_DROPPED_BITS - 1)) - 1 + ((bits >> TF32_DROPPED_BITS) & 1))
    elif rounding != "truncate":
        raise ValueError(f"rounding is 'nearest' or 'truncate', not {rounding!r}")
    return (bits & -(1 << TF32_DROPPED_BITS)).view(torch.float32)


class EmulatedTF32(TorchFunctionMode):
    """Within it, every float32 matmul multiplies TF32-rounded inputs (in float32), as tensor cores do."""

    def __init__(self, rounding: str = "nearest") -> None:
        super().__init__()
        self.rounding = rounding

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in MATMULS:
            args = tuple(to_tf32(a, self.rounding) if isinstance(a, torch.Tensor) and a.dtype == torch.float32
                         else a for a in args)
        return func(*args, **(kwargs or {}))


def compare(got: dict[str, TypeSimilarity], ref: dict[str, TypeSimilarity], n: int) -> dict[str, dict]:
    """Largest differences from ``ref`` per type, and whether the spectral groups agree (k = n // 2, every k)."""
    rows = {}
    for t, s in got.items():
        r = ref[t]
        groups = {k: [make_groups("spectral", GroupingRequest(n, k, x.joint, 0)) for x in (s, r)]
                  for k in range(1, n + 1)}
        rows[t] = {"cka_max_abs_diff": float((s.functional - r.functional).abs().max()),
                   "cosine_max_abs_diff": float((s.cosine - r.cosine).abs().max()),
                   "joint_max_abs_diff": float((s.joint - r.joint).abs().max()),
                   "same_groups": groups[n // 2][0] == groups[n // 2][1],
                   "same_groups_every_k": all(a == b for a, b in groups.values())}
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--types", default=None, help="comma list of module types (default: all)")
    p.add_argument("--reference", default="float64", choices=["float64", "float32"])
    p.add_argument("--json", default=None)
    a = p.parse_args()
    loaded = load_original(None)
    adapter = adapter_for(loaded.model)
    spec = CalibrationSpec(samples=a.samples, seq_len=a.seq_len, data_dir=a.data_dir)
    stats = collect_stats(adapter, calibration_ids(loaded, spec, seed=0), batch_size=2, progress=False)
    types = a.types.split(",") if a.types else adapter.type_names

    def run(stats_, precision=torch.float32, rounding=None, cka_matmul=None):
        start = time.perf_counter()
        with EmulatedTF32(rounding) if rounding else contextlib.nullcontext():
            out = model_similarity(adapter, types, stats_, SimilarityConfig(), progress=False, precision=precision,
                                   cka_matmul=cka_matmul)
        return out, round(time.perf_counter() - start, 2)

    ref, ref_seconds = run(stats, getattr(torch, a.reference))
    variants = {"tf32_nearest": lambda: run(stats, rounding="nearest"),
                "tf32_truncate": lambda: run(stats, rounding="truncate"),
                "split_tf32_nearest": lambda: run(stats, rounding="nearest", cka_matmul="split-tf32"),
                "split_tf32_truncate": lambda: run(stats, rounding="truncate", cka_matmul="split-tf32"),
                "float32_second_draw": lambda: run(collect_stats(adapter, calibration_ids(loaded, spec, seed=1),
                                                                 batch_size=2, progress=False))}
    if a.reference != "float32":
        variants = {"float32": lambda: run(stats), **variants}
    rows, seconds = {}, {a.reference: ref_seconds}
    for name, variant in variants.items():
        got, seconds[name] = variant()
        rows[name] = compare(got, ref, adapter.num_layers)
        worst = {k: max(r[k] for r in rows[name].values()) for k in ("cka_max_abs_diff", "joint_max_abs_diff")}
        print(name, worst, "same groups:", all(r["same_groups_every_k"] for r in rows[name].values()), flush=True)
    print("seconds", seconds)
    if a.json:
        Path(a.json).write_text(json.dumps({
            "model": loaded.model_id, "calib_tokens": a.samples * a.seq_len, "reference": a.reference,
            "variants": rows, "seconds": seconds,
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "date": datetime.date.today().isoformat(),
            "command": f"python benchmarks/scale_similarity.py --samples {a.samples} --seq-len {a.seq_len}"
                       f" --reference {a.reference}" + (f" --types {a.types}" if a.types else "")}, indent=1)
            + "\n")


if __name__ == "__main__":
    main()
