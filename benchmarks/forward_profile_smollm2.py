"""Benchmark: where the calibration pass's teacher forward spends its time on this CPU.

Runs the bundled SmolLM2-135M decoder (no LM head, as the calibration pass does) on 2 x 1024 random tokens
under torch's profiler and prints tokens/s, the top operators and the matmul throughput.

    python benchmarks/forward_profile_smollm2.py
"""
from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile

from sharvet.loading import load_original


def main() -> None:
    model = load_original(None).model
    ids = torch.randint(0, model.config.vocab_size, (2, 1024), generator=torch.Generator().manual_seed(0))
    linear = sum(p.numel() for n, p in model.model.layers.named_parameters() if n.endswith("proj.weight"))
    with torch.inference_mode():
        model.model(input_ids=ids, use_cache=False)  # warm-up
        t0 = time.perf_counter()
        model.model(input_ids=ids, use_cache=False)
        wall = time.perf_counter() - t0
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model.model(input_ids=ids, use_cache=False)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    mm = next(e for e in events if e.key == "aten::mm")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, attention: {model.config._attn_implementation}")
    print(f"forward of {ids.numel()} tokens: {wall:.2f} s = {ids.numel() / wall:.0f} tokens/s")
    print(f"aten::mm: {mm.self_cpu_time_total / 1e6:.2f} s for {2 * linear * ids.numel() / 1e9:.0f} GFLOP = "
          f"{2 * linear * ids.numel() / (mm.self_cpu_time_total / 1e6) / 1e9:.0f} GFLOP/s")
    print("| operator | share of self time |")
    print("|---|---|")
    for e in events[:6]:
        print(f"| {e.key} | {100 * e.self_cpu_time_total / total:.1f} % |")


if __name__ == "__main__":
    main()
