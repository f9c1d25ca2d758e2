"""Benchmark: what the precision of the calibration pass does to the statistics and the compressed model.

SmolLM2-135M (float32 weights, dequantised from the bundled GGUF). The calibration statistics are collected
four ways: forwards in float32 or bfloat16, ``X^T X`` summed in float64 or float32 (each batch's product is
taken in float32 either way). Every variant's statistics compress the same float32 weights (ratio 0.8,
SharVeT defaults; CKA only with ``--cka``, it takes most of a CPU run), so only the statistics differ.
Columns: the largest relative Frobenius error of any layer's ``X^T X`` against float32 forwards + float64
sums, and the compressed model's WikiText-2 perplexity (first ``--eval-tokens`` test tokens, context 1024).

    python benchmarks/scale_precision.py --data-dir ../shared/data --json results/scale/precision_cpu.json
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import time
from pathlib import Path

import torch

from sharvet.api import CalibrationSpec, calibration_ids
from sharvet.calibration import collect_stats
from sharvet.data import resolve_data_dir
from sharvet.evaluation.perplexity import evaluation_tokens, perplexity
from sharvet.loading import load_original
from sharvet.models import adapter_for
from sharvet.pipeline import CompressionConfig, compress
from sharvet.similarity import SimilarityConfig

VARIANTS = {  # name: (forward dtype, accumulation dtype)
    "fp32 forward, fp64 sums": (torch.float32, torch.float64),
    "fp32 forward, fp32 sums": (torch.float32, torch.float32),
    "bf16 forward, fp64 sums": (torch.bfloat16, torch.float64),
    "bf16 forward, fp32 sums": (torch.bfloat16, torch.float32),
}


def relative_error(stats, reference, adapter) -> float:
    return max(float(torch.linalg.matrix_norm(stats.get(i, k).xtx.double() - reference.get(i, k).xtx)
                     / torch.linalg.matrix_norm(reference.get(i, k).xtx))
               for i in range(adapter.num_layers) for k in adapter.input_keys())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--ratio", type=float, default=0.8)
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--cka", action="store_true", help="functional similarity too (slow on CPU)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    data_dir = resolve_data_dir(a.data_dir)
    loaded = load_original(None)
    ids = calibration_ids(loaded, CalibrationSpec(samples=a.samples, seq_len=a.seq_len, data_dir=str(data_dir)),
                          seed=0)
    held_out = evaluation_tokens("wikitext2", loaded.tokenizer, data_dir)[:a.eval_tokens]
    rows, reference = [], None
    for name, (forward, accumulate) in VARIANTS.items():
        teacher = copy.deepcopy(loaded.model).to(forward)
        start = time.perf_counter()
        stats = collect_stats(adapter_for(teacher), ids, progress=False, accumulate=accumulate)
        seconds = time.perf_counter() - start
        del teacher
        reference = reference or stats
        model = copy.deepcopy(loaded.model)
        cfg = CompressionConfig(ratio=a.ratio, similarity=SimilarityConfig(use_cka=a.cka))
        compress(model, stats, cfg, progress=False)
        ppl = perplexity(model, held_out, context=1024, progress=False).ppl
        rows.append({"variant": name, "xtx_rel_error": relative_error(stats, reference, adapter_for(model)),
                     "ppl": ppl, "calibration_s": round(seconds, 1)})
        print(f"{name:26s} max rel. error of X^T X {rows[-1]['xtx_rel_error']:.2e}  ppl {ppl:.3f}  "
              f"calibration {seconds:.0f} s", flush=True)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({
            "model": "SmolLM2-135M-Instruct (bundled GGUF, float32)", "ratio": a.ratio, "cka": a.cka,
            "calibration": f"{a.samples} x {a.seq_len} tokens of wikitext2 (its calibration split)",
            "eval_tokens": len(held_out),
            "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "date": datetime.date.today().isoformat(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
