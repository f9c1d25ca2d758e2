"""Benchmark (issue 17): where a decode step's (or a prefill's) time goes, dense against compressed, kernel by kernel.

Builds a published shape with random weights (dense, then the SharVeT planner's groups and ranks at ``--ratio``,
in the inference form), compiles the decode step as ``sharvet bench`` does, and runs ``--steps`` steps under
torch.profiler after warm-up. Prints and writes, per model: seconds per step, device busy time per step (the
rest is the GPU waiting), kernels per step, and the kernels with the most device time. Decode at batch 1 is the
row furthest from its bytes-read bound; this says whether the missing time is in the matmuls (bandwidth not
reached), in many small kernels (launch and tail latency), or between kernels.

    python benchmarks/decode_profile.py --shape llama3-8b --ratio 0.5 --out /tmp/decode_profile.json
    python benchmarks/decode_profile.py --shape llama3-8b --ratio 0.5 --prefill 2048 --out /tmp/prefill_profile.json
    python benchmarks/decode_profile.py --shape tiny --device cpu --out /tmp/p.json     # a CPU check in seconds

``--prefill N`` profiles a batch's N-token forward instead (eager as ``sharvet bench`` times it, or compiled with
``--compile-prefill``), with the host's issue time beside the device's: an eager forward of many small kernels may
be bound by the host, and the profile says which kernels a compressed prefill adds (``x * lambda``, the second
matmuls) and what they cost.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharvet.inference.form import FUSE_MODES, prepare  # noqa: E402
from sharvet.inference.modes import COMPILE_MODES  # noqa: E402
from sharvet.inference.measure import (BenchSettings, StepRunner, model_run, peak_gib, release,  # noqa: E402
                                      reset_peak)
from sharvet.inference.shapes import compressed_random, plan_for, random_model, shape_config  # noqa: E402
from sharvet.inference.records import gib_beyond, round_gib  # noqa: E402
from sharvet.inference.traffic import weight_bytes_per_token  # noqa: E402
from sharvet.profiling import lines, profiler, top_operations  # noqa: E402


@torch.no_grad()  # as sharvet bench measures: compiling with autograd on traces a backward the kernels lack
def profile_decode(model: torch.nn.Module, settings: BenchSettings, device: torch.device, batch: int) -> dict:
    """The timed steps of one decode run (as ``sharvet bench`` times them: after the warm-up steps that compile and
    record the CUDA graph) under the profiler; per-step figures. One run per model: a second run's new static
    cache would not replay the recorded graph as the first does."""
    runner = StepRunner(model, settings, device)
    prof = profiler(device.type)
    per_step = runner.decode(batch, watch=prof).seconds_per_step
    summary = top_operations(prof, device.type, n=30)
    steps = settings.decode_steps
    return {"step_ms_profiled": round(per_step * 1000, 4), "busy_ms_per_step": round(summary["total_ms"] / steps, 4),
            "events_per_step": round(summary["calls_with_time"] / steps, 1), "bytes_per_token":
            weight_bytes_per_token(model), "profile": summary}


@torch.no_grad()
def profile_prefill(model: torch.nn.Module, settings: BenchSettings, device: torch.device, batch: int,
                    length: int) -> dict:
    """The ``repeats`` timed prefills (``StepRunner.prefill``) under the profiler after one untimed round (which
    compiles when asked), neither the untimed first forward nor a compiled prefill's eager cache fill among them;
    per-forward figures."""
    runner = StepRunner(model, settings, device)
    runner.prefill(batch, length)
    prof = profiler(device.type)
    seconds, host = runner.prefill(batch, length, watch=prof)
    summary = top_operations(prof, device.type, n=30)
    calls = settings.repeats
    return {"forward_ms_profiled": round(seconds * 1000, 3), "host_ms": round(host * 1000, 3),
            "busy_ms_per_forward": round(summary["total_ms"] / calls, 3),
            "events_per_forward": round(summary["calls_with_time"] / calls, 1),
            "bytes_per_token": weight_bytes_per_token(model), "profile": summary}


def _profile(model: torch.nn.Module, settings: BenchSettings, device: torch.device, a: argparse.Namespace) -> dict:
    """The profile, with the model's memory beside it as ``sharvet bench`` counts it (GiB beyond the stored
    weights: allocated before the first forward, and at the peak of the profiled run; None off a GPU)."""
    run = model_run(model, "", device)
    reset_peak(device)
    if a.prefill:
        out = profile_prefill(model, settings, device, a.batch, a.prefill)
    else:
        out = profile_decode(model, settings, device, a.batch)
    return {**out, "stored_gib": round(run.stored_gib, 6), "resident_gib": round_gib(run.resident_gib),
            "workspace_gib": gib_beyond(peak_gib(device), run.stored_gib)}


def _headline(name: str, r: dict) -> str:
    gib = r["bytes_per_token"] / 2**30
    if "forward_ms_profiled" in r:
        return (f"== {name}: {r['forward_ms_profiled']} ms a forward (profiled; the host issued it in "
                f"{r['host_ms']} ms), device busy {r['busy_ms_per_forward']} ms, {r['events_per_forward']} kernels "
                f"(on the CPU: operators) a forward, {gib:.2f} GiB of weights"
                + (f"; GiB beyond them: {r['resident_gib']} before, {r['workspace_gib']} at the peak"
                   if r["resident_gib"] is not None else ""))
    memory = f"; GiB beyond the weights: {r['resident_gib']} before, {r['workspace_gib']} at the peak"
    return (f"== {name}: {r['step_ms_profiled']} ms a step (profiled), device busy {r['busy_ms_per_step']} ms, "
            f"{r['events_per_step']} kernels (on the CPU: operators) a step, {gib:.2f} GiB of weights a token"
            + (memory if r["resident_gib"] is not None else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="llama3-8b")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--fuse", default="best", choices=FUSE_MODES)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=16, help="decode steps profiled")
    p.add_argument("--compile-mode", default=COMPILE_MODES[0], choices=(*COMPILE_MODES, "default"),
                   help="default: compiled without CUDA graphs (every kernel launched from the host)")
    p.add_argument("--coordinate-descent", action="store_true", help="as sharvet bench's")
    p.add_argument("--prefill", type=int, default=0, metavar="N",
                   help="profile an N-token forward of --batch sequences instead of decode steps")
    p.add_argument("--compile-prefill", action="store_true", help="as sharvet bench's (a GPU only)")
    p.add_argument("--inductor-pdl", action=argparse.BooleanOptionalAction, default=None, help="as sharvet bench's")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    device = torch.device(a.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    settings = BenchSettings(batches=(a.batch,), decode_steps=a.steps, compile_mode=a.compile_mode,
                             coordinate_descent=a.coordinate_descent, throughput=None,
                             compile_prefill=a.compile_prefill, inductor_pdl=a.inductor_pdl)
    config = shape_config(a.shape)
    dense = random_model(config, dtype, device, settings.seed)
    plan = plan_for(dense, a.ratio, device, "sharvet")
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "argv": sys.argv, "torch": torch.__version__,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "models": {}}
    result["models"]["dense"] = _profile(dense, settings, device, a)
    del dense
    release(device)
    model = prepare(compressed_random(config, plan, dtype, device, settings.seed), fuse=a.fuse)
    result["models"][f"r{a.ratio}"] = {**_profile(model, settings, device, a), "form": model.sharvet_inference.line()}
    for name, r in result["models"].items():
        print(_headline(name, r))
        print("\n".join(lines(r["profile"], 20)))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
