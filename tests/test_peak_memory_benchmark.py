"""benchmarks/peak_memory.py: replaying an allocator trace to the blocks alive at its peak."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import peak_memory as pm  # noqa: E402


def _ev(action: str, addr: int, size: int, frames=()) -> dict:
    return {"action": action, "addr": addr, "size": size, "frames": list(frames)}


def test_peak_counts_blocks_until_their_free_completes():
    events = [_ev("alloc", 1, 10), _ev("alloc", 2, 20), _ev("free_requested", 1, 10), _ev("alloc", 3, 5),
              _ev("free_completed", 1, 10), _ev("alloc", 4, 4), _ev("free_requested", 2, 20),
              _ev("free_completed", 2, 20), _ev("alloc", 5, 25)]
    peak = pm.peak_of(events)
    assert peak.bytes == 35  # 1 still counts (its free has not completed) when 3 arrives
    assert sorted(e["addr"] for e in peak.live) == [1, 2, 3]


def test_peak_falls_back_to_requested_frees_and_ignores_blocks_from_before_the_trace():
    events = [_ev("free_requested", 99, 1000), _ev("alloc", 1, 10), _ev("free_requested", 1, 10),
              _ev("alloc", 2, 8)]
    peak = pm.peak_of(events)
    assert (peak.bytes, [e["addr"] for e in peak.live]) == (10, [1])


def test_where_skips_torch_frames_and_shows_the_source_line(tmp_path):
    code = tmp_path / "made.py"
    code.write_text("x = 1\nbuf7 = empty_strided_cuda((512, 2048))\n")
    frames = [{"filename": "/site/torch/nn/functional.py", "line": 3, "name": "linear"},
              {"filename": str(code), "line": 2, "name": "call"},
              {"filename": "/tmp/torchinductor_root/ab/cab.py", "line": 9, "name": "call"}]
    shown = pm.where(frames)
    assert shown[0] == "made.py:2 call: buf7 = empty_strided_cuda((512, 2048))"
    assert shown[1].startswith("cab.py:9 call")
    text = pm.report("r0.5", pm.Peak(3 * pm.MIB, [_ev("alloc", 1, 3 * pm.MIB, frames)]), 0, 5)
    assert "3.0 MiB" in text and "buf7" in text


def test_torch_frames_are_shown_when_asked():
    frames = [{"filename": "/site/torch/_inductor/autotune.py", "line": 1, "name": "bench"},
              {"filename": "/site/torch/cuda/graphs.py", "line": 2, "name": "capture"}]
    assert pm.where(frames) == []
    shown = pm.where(frames, 4, torch_frames=True)
    assert [s.split(" ")[0] for s in shown] == ["autotune.py:1", "graphs.py:2"]
