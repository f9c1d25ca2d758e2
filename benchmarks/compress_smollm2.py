"""Benchmark: SmolLM2-135M on WikiText-2 test (context 1024) without any training.

Rows: the original model, then for each ratio SharVeT grouping + adaptive ranks vs consecutive groups
+ uniform ranks (Basis Sharing style), each with plain and whitened SVD. Columns: perplexity, realised
ratios, compression wall time and peak resident memory above the loaded model. Calibration (one
teacher pass) is shared by all rows and timed once.

    python benchmarks/compress_smollm2.py --data-dir ../shared/data --json results/compress_cpu.json --no-eval
    python benchmarks/compress_smollm2.py --data-dir ../shared/data --device cuda --json results/compress_gpu.json
    python benchmarks/compress_smollm2.py --data-dir ../shared/data --ratios 0.8 --variants sharvet \
        --decompositions whitened --no-eval   # the issue-2 time/memory target: one real compression

Resident memory is reported per phase as the process high-water mark (``VmHWM``) and the current RSS, so
the loader, the calibration pass and the decomposition can each be blamed for the peak.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import threading
import time
from pathlib import Path

import torch

from sharvet.api import CalibrationSpec, calibrate
from sharvet.config import CompressionConfig
from sharvet.data import resolve_data_dir
from sharvet.evaluation.perplexity import evaluation_tokens, perplexity
from sharvet.loading import load_original
from sharvet.pipeline import compress

VARIANTS = {
    "sharvet": dict(grouping="spectral", allocation="adaptive"),
    "consecutive+uniform": dict(grouping="consecutive", allocation="uniform"),
}


class PeakRSS:
    """Peak resident set size of this process while the block runs (sampled every 20 ms), in MiB."""

    def __enter__(self) -> "PeakRSS":
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    @property
    def above_base(self) -> float:
        return self.peak - self.base


def process_memory() -> dict[str, int]:
    """Current RSS and the process-lifetime peak (kernel high-water mark), in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {"rss_mib": int(fields["VmRSS"].split()[0]) // 1024, "peak_rss_mib": int(fields["VmHWM"].split()[0]) // 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="default: bundled SmolLM2-135M-Instruct GGUF")
    p.add_argument("--ratios", default="0.8,0.7,0.5")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--decompositions", default="plain,whitened")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--calib-batch-size", type=int, default=CalibrationSpec.batch_size,
                   help="sequences per teacher forward during calibration")
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--no-eval", action="store_true", help="only time the compressions")
    p.add_argument("--cache-dir", default=None, help="statistics cache (default: none, always calibrate)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    variants = {name: VARIANTS[name] for name in a.variants.split(",")}
    runs = [(float(ratio), name, decomposition) for ratio in a.ratios.split(",") for name in variants
            for decomposition in a.decompositions.split(",")]
    rows, out = [], {"device": a.device, "host": platform.node(), "cpu_threads": torch.get_num_threads(),
                     "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    start = t0 = time.perf_counter()
    loaded = load_original(a.model, device=a.device)
    out["load_s"] = round(time.perf_counter() - t0, 1)
    out["after_load"] = process_memory()
    spec = CalibrationSpec(samples=a.calib_samples, seq_len=1024, batch_size=a.calib_batch_size, data_dir=a.data_dir,
                           cache_dir=a.cache_dir)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        stats = calibrate(loaded, spec, seed=0, device=a.device, progress=False)
        out["calibration_s"] = round(time.perf_counter() - t0, 1)
    out["calibration_peak_rss_mib"] = round(mem.above_base)
    out["after_calibration"] = process_memory()
    print({k: out[k] for k in ("load_s", "after_load", "calibration_s", "after_calibration")}, flush=True)
    ids = None if a.no_eval else evaluation_tokens("wikitext2", loaded.tokenizer, resolve_data_dir(a.data_dir))

    def ppl(model) -> float | None:
        if ids is None:
            return None
        return round(perplexity(model, ids, context=a.context, device=a.device, batch_size=8, progress=False).ppl, 3)

    rows.append({"ratio": 1.0, "method": "original", "ppl": ppl(loaded.model)})
    print(rows[-1], flush=True)
    for i, (ratio, name, decomposition) in enumerate(runs):
        # the last row compresses the loaded model itself: no copy, so its memory is that of a real run
        model = loaded.model if i == len(runs) - 1 else copy.deepcopy(loaded.model)
        cfg = CompressionConfig(ratio=ratio, decomposition=decomposition, **variants[name])
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            result = compress(model, stats, cfg, device=a.device, progress=False)
            wall = time.perf_counter() - t0
        rows.append({
            "ratio": ratio, "method": name, "decomposition": decomposition, "ppl": ppl(model),
            "linear_ratio": round(result.report.linear_ratio, 4),
            "model_ratio": round(result.report.model_ratio, 4),
            "compress_s": round(wall, 1), "peak_rss_above_model_mib": round(mem.above_base),
            **process_memory(),
        })
        print(rows[-1], flush=True)
        del model
    out["rows"] = rows
    out["total_s"] = round(time.perf_counter() - start, 1)  # with --no-eval and one row: a whole compression
    print({"total_s": out["total_s"], **process_memory()}, flush=True)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=2))
    print("| ratio | method | SVD | WikiText-2 ppl | linear ratio | model ratio | compress s | peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['ratio']} | {r['method']} | {r.get('decomposition', '-')} | {r['ppl']} | "
              f"{r.get('linear_ratio', 1.0)} | {r.get('model_ratio', 1.0)} | {r.get('compress_s', '-')} | "
              f"{r.get('peak_rss_above_model_mib', '-')} |")


if __name__ == "__main__":
    main()
