"""Where the time goes: a torch.profiler run summarised as operations (or kernels) by their own time.

Used by the benchmarks that look for the next thing to speed up (refinement steps, decode steps); a summary is a
plain dict, so it goes into a benchmark's JSON as it is.
"""
from __future__ import annotations

from typing import Any

from torch.profiler import ProfilerActivity, profile


def profiler(device_type: str) -> profile:
    """A profiler recording the CPU and, on a GPU, its kernels."""
    return profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else []))


def top_operations(prof: profile, device_type: str, n: int = 40) -> dict[str, Any]:
    """The ``n`` operations with the most own time (device time on a GPU), with each one's share and calls.

    ``total_ms`` sums every operation's own time; on a GPU it is the busy time of the device (kernels and copies),
    which, set against the wall time, says how much the GPU idles (launch and host overhead)."""
    events = prof.key_averages()
    own = "self_device_time_total" if device_type == "cuda" else "self_cpu_time_total"
    us = {e.key: getattr(e, own, 0) for e in events}  # microseconds of each operation's own time
    total = sum(us.values()) or 1
    top = sorted(events, key=lambda e: us[e.key], reverse=True)[:n]
    kernels = sum(e.count for e in events if us[e.key] > 0)
    return {"time": own, "total_ms": round(total / 1000, 3), "calls_with_time": kernels,
            "top": [{"name": e.key, "ms": round(us[e.key] / 1000, 3), "share": round(us[e.key] / total, 4),
                     "calls": e.count} for e in top]}


def lines(summary: dict[str, Any], n: int = 25) -> list[str]:
    """The summary's first ``n`` rows as fixed-width text."""
    return [f"{r['ms']:>10.2f} ms {r['share']:7.2%} {r['calls']:>7} {r['name'][:90]}" for r in summary["top"][:n]]
