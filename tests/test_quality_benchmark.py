"""benchmarks/quality_smollm2.py: the refinement profile lists where the time of a run went."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import quality_smollm2 as quality  # noqa: E402


def test_profile_ranks_operations_by_their_own_time(monkeypatch):
    def work(*_args):  # stands in for a short refinement: many small additions, one large matmul
        x = torch.randn(256, 256)
        for _ in range(50):
            x = x + 1
        return x @ torch.randn(256, 2048)

    monkeypatch.setattr(quality, "_variant_setup", lambda *_args: (None, None, None))  # compression not profiled
    monkeypatch.setattr(quality, "refine", work)
    a = argparse.Namespace(device="cpu", steps=3)
    out = quality._profile(a, None, None, None, None, "16")
    names = [row["name"] for row in out["top"]]
    assert out["variant"] == "16" and out["time"] == "self_cpu_time_total" and out["total_ms"] > 0
    assert "aten::add" in names and "aten::mm" in names
    shares = [row["share"] for row in out["top"]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.0001
    assert next(row for row in out["top"] if row["name"] == "aten::add")["calls"] >= 50
