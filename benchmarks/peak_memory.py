"""What is alive at a prefill's (or decode's) memory peak, dense against compressed: the largest blocks and their code.

The inference records give one number per model (peak minus stored weights); when the compressed model's is larger
this says which allocations make the difference. The prefill runs as the benchmark runs it (a static cache, one
warm-up; ``--compile``: through ``torch.compile`` as ``sharvet bench --compile-prefill`` does), under the CUDA
caching allocator's history; the blocks alive at the highest point are listed with the first frames outside torch
(for a compiled graph: the line of inductor's generated code, which ``--code-dir`` keeps).

    python benchmarks/peak_memory.py --shape llama3-8b --ratio 0.5 --batch 512 --length 32 --compile --code-dir out/
    python benchmarks/peak_memory.py --shape llama3-8b --ratio 0.5 --decode --length 128 --torch-frames
"""
from __future__ import annotations

import argparse
import linecache
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIB = 1 << 20


@dataclass
class Peak:
    """The highest point of the bytes allocated during a trace, and the blocks alive there."""
    bytes: int = 0
    live: list[dict[str, Any]] = field(default_factory=list)


def peak_of(events: list[dict[str, Any]]) -> Peak:
    """Replay an allocator trace (``torch.cuda.memory._snapshot()["device_traces"][i]``).

    A block counts from ``alloc`` to ``free_completed`` (the allocator reuses it only then); traces without
    completions (one stream, older torch) end a block at ``free_requested``.
    """
    freeing = "free_completed" if any(e["action"] == "free_completed" for e in events) else "free_requested"
    live: dict[int, dict[str, Any]] = {}
    now, peak = 0, Peak()
    for e in events:
        if e["action"] == "alloc":
            live[e["addr"]] = e
            now += e["size"]
            if now > peak.bytes:
                peak = Peak(now, list(live.values()))
        elif e["action"] == freeing and e["addr"] in live:
            now -= live.pop(e["addr"])["size"]
    return peak


def where(frames: list[dict[str, Any]], depth: int = 2, torch_frames: bool = False) -> list[str]:
    """The first ``depth`` frames outside torch's own code (inductor's generated files count as outside), or with
    ``torch_frames`` the first ``depth`` of any (what inside torch allocated, e.g. while compiling)."""
    mine = [f for f in frames if torch_frames or "/torch/" not in f["filename"] or "torchinductor" in f["filename"]]
    out = []
    for f in mine[:depth]:
        text = linecache.getline(f["filename"], f["line"]).strip()
        out.append(f"{Path(f['filename']).name}:{f['line']} {f['name']}: {text[:100]}")
    return out


def report(label: str, peak: Peak, start_bytes: int, top: int, torch_frames: bool = False) -> str:
    blocks = sorted(peak.live, key=lambda e: -e["size"])
    lines = [f"{label}: {peak.bytes / MIB:.1f} MiB allocated during the run at its peak "
             f"({start_bytes / MIB:.1f} MiB before it), {len(blocks)} blocks alive; the largest:"]
    for e in blocks[:top]:
        frames = where(e.get("frames", []), 4 if torch_frames else 2, torch_frames)
        lines.append(f"  {e['size'] / MIB:9.1f} MiB  " + ("\n" + " " * 17).join(frames or ["(no frames)"]))
    return "\n".join(lines)


def generated_files(peak: Peak) -> set[str]:
    return {f["filename"] for e in peak.live for f in e.get("frames", []) if "torchinductor" in f["filename"]}


def probe(model, label: str, args: argparse.Namespace, settings) -> Peak:
    """One prefill (after its warm-up, which also compiles) under the allocator's history; with ``--decode`` the
    benchmark's whole decode measurement instead (prompt, warm-up steps that compile, capture, timed windows)."""
    import torch

    from sharvet.inference.measure import StepRunner, _ids, _static_cache, capture_stream

    device = torch.device("cuda")
    runner = StepRunner(model, settings, device)
    if runner.captures:  # its cuBLAS workspace made before the trace, for the first model as for the others
        capture_stream(device)
    ids = _ids(model, args.batch, args.length, device, settings.seed)
    cache = _static_cache(model, args.length)
    with torch.no_grad():
        if not args.decode:
            runner._prefill(ids, cache)  # allocates the cache (as the benchmark's prefill does)
            cache.reset()
            runner.prefill_step(ids, cache)  # warm-up / compile
            cache.reset()
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
        if args.decode:
            runner.decode(args.batch)
        else:
            runner.prefill_step(ids, cache)
        torch.cuda.synchronize()
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
    events = [e for trace in snapshot["device_traces"] for e in trace]
    peak = peak_of(events)
    print(report(label, peak, start, args.top, args.torch_frames), flush=True)
    if args.code_dir:
        for path in generated_files(peak):
            Path(args.code_dir).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(args.code_dir) / f"{label}-{Path(path).name}")
    return peak


def main(argv: list[str] | None = None) -> None:
    import torch

    from sharvet.inference.form import prepare
    from sharvet.inference.measure import BenchSettings, release
    from sharvet.inference.shapes import compressed_random, plan_for, random_model, shape_config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="llama3-8b")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--compile", action="store_true", help="the prefill through torch.compile (no CUDA graphs)")
    p.add_argument("--decode", action="store_true",
                   help="trace the decode measurement (prompt of --length tokens; compiled and captured as the "
                        "benchmark's default) instead of the prefill")
    p.add_argument("--torch-frames", action="store_true", help="show frames inside torch too (compile-time blocks)")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--code-dir", default=None, help="copy inductor's generated files named at the peak here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("peak_memory.py reads the CUDA allocator's history: it needs a GPU")
    device, dtype = torch.device("cuda"), torch.bfloat16
    settings = BenchSettings(batches=(args.batch,), compile_prefill=args.compile,
                             **({"decode_prompt": args.length} if args.decode else {}))
    config = shape_config(args.shape)
    dense = random_model(config, dtype, device, settings.seed)
    plan = plan_for(dense, args.ratio, device)
    dense_peak = probe(dense, "dense", args, settings)
    del dense
    release(device)
    model = compressed_random(config, plan, dtype, device, settings.seed)
    prepare(model)
    peak = probe(model, f"r{args.ratio}", args, settings)
    print(f"compressed minus dense, at the peak: {(peak.bytes - dense_peak.bytes) / MIB:+.1f} MiB")


if __name__ == "__main__":
    main()
