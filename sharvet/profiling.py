"""Where the time goes: a torch.profiler run summarised as operations (or kernels) by their own time.

Used by the benchmarks that look for the next thing to speed up (refinement steps, decode steps); a summary is a
plain dict, so it goes into a benchmark's JSON as it is.
"""
from __future__ import annotations

from typing import Any

from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile


def profiler(device_type: str) -> profile:
    """A profiler recording the CPU and, on a GPU, its kernels."""
    return profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else []))


def top_operations(prof: profile, device_type: str, n: int = 40) -> dict[str, Any]:
    """The ``n`` operations with the most own time, with each one's share and calls.

    On a GPU these are the device's own events (kernels, copies): the operators that launch them carry the same
    time again, and so do annotations such as ``Optimizer.step``, so both are left out and
    ``total_ms`` is the device's busy time, which set against the wall time says how long the GPU waited (launch
    and host overhead). On the CPU: operators by their own CPU time."""
    events = list(prof.key_averages())
    if device_type == "cuda":  # as torch's own profiler table sums device time
        events = [e for e in events if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
    own = "self_device_time_total" if device_type == "cuda" else "self_cpu_time_total"
    us = {e.key: getattr(e, own, 0) for e in events}  # microseconds of each operation's own time
    total = sum(us.values()) or 1
    top = sorted(events, key=lambda e: us[e.key], reverse=True)[:n]
    return {"time": own, "total_ms": round(total / 1000, 3), "calls_with_time": sum(e.count for e in events
                                                                                      if us[e.key] > 0),
            "top": [{"name": e.key, "ms": round(us[e.key] / 1000, 3), "share": round(us[e.key] / total, 4),
                     "calls": e.count} for e in top]}


def lines(summary: dict[str, Any], n: int = 25) -> list[str]:
    """The summary's first ``n`` rows as fixed-width text."""
    return [f"{r['ms']:>10.2f} ms {r['share']:7.2%} {r['calls']:>7} {r['name'][:90]}" for r in summary["top"][:n]]
