"""Benchmark: similarity in float32 (the default) against float64 on SmolLM2-135M's real statistics.

SmolLM2-135M (float32 weights from the bundled GGUF), calibration statistics from ``--samples`` x ``--seq-len``
tokens of WikiText-2, every module type. Reports the largest absolute difference of the CKA, cosine and joint
matrices between the two precisions, whether the default grouping (spectral, k = L // 2) is the same, and the
time of each on this machine's CPU.

    python benchmarks/scale_similarity.py --data-dir ../shared/data --json results/scale/similarity_cpu.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import torch

from sharvet.api import CalibrationSpec, calibration_ids
from sharvet.calibration import collect_stats
from sharvet.grouping import GroupingRequest, make_groups
from sharvet.loading import load_original
from sharvet.models import adapter_for
from sharvet.similarity import SimilarityConfig, model_similarity


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--types", default=None, help="comma list of module types (default: all)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    loaded = load_original(None)
    adapter = adapter_for(loaded.model)
    ids = calibration_ids(loaded, CalibrationSpec(samples=a.samples, seq_len=a.seq_len, data_dir=a.data_dir), seed=0)
    stats = collect_stats(adapter, ids, batch_size=2, progress=False)
    types = a.types.split(",") if a.types else adapter.type_names
    sims, seconds = {}, {}
    for dtype in (torch.float32, torch.float64):
        start = time.perf_counter()
        sims[dtype] = model_similarity(adapter, types, stats, SimilarityConfig(), progress=False,
                                       precision=dtype)
        seconds[str(dtype)] = round(time.perf_counter() - start, 2)
    n = adapter.num_layers
    rows = {}
    for t in types:
        s32, s64 = sims[torch.float32][t], sims[torch.float64][t]
        groups = [make_groups("spectral", GroupingRequest(n, n // 2, s.joint, 0)) for s in (s32, s64)]
        rows[t] = {"cka_max_abs_diff": float((s32.functional - s64.functional).abs().max()),
                   "cosine_max_abs_diff": float((s32.cosine - s64.cosine).abs().max()),
                   "joint_max_abs_diff": float((s32.joint - s64.joint).abs().max()),
                   "same_groups": groups[0] == groups[1]}
        print(t, rows[t])
    print("seconds", seconds)
    if a.json:
        Path(a.json).write_text(json.dumps({
            "model": loaded.model_id, "calib_tokens": a.samples * a.seq_len, "types": rows, "seconds": seconds,
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "date": datetime.date.today().isoformat(),
            "command": f"python benchmarks/scale_similarity.py --samples {a.samples} --seq-len {a.seq_len}"
                       + (f" --types {a.types}" if a.types else "")}, indent=1)
            + "\n")


if __name__ == "__main__":
    main()
