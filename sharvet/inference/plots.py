"""The speed figure: compressed against dense per ratio and phase, beside the bytes bound and the target.

People compare a speedup with what the bytes allow more easily in a picture than in a table of records; the
figure is drawn from ``sharvet bench`` records (``results/inference/summary.json``), one panel per phase.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from ..plots import pyplot, save_figure

#: the decode target of issue 17: this share of the bytes bound
DECODE_SHARE = 0.85
PHASES = (("decode", "decode, batch 1"), ("prefill", "prefill, batch 1"), ("throughput", "one forward, 512 x 32"))
#: issue 17's fixed targets (ratio -> speedup): prefill of 2,048 tokens at 0.5, and Basis Sharing's published figure
TARGETS = {"prefill": {0.5: 1.3}, "throughput": {0.5: 1.57}}


def chosen(records: list[dict[str, Any]], *, shape: str, contains: str = "") -> list[dict[str, Any]]:
    """The records of one shape (batch 1, or the throughput setting) whose note or command contains ``contains``."""
    return [r for r in records if r["shape"] == shape and (r["batch"] == 1 or r["phase"] == "throughput")
            and contains in f"{r.get('note', '')} {r.get('command', '')}"]


def speed_figure(records: list[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """One panel per phase: each record's speedup at its ratio (several runs of a setting side by side), the bytes
    bound as a line, and the targets (decode: 0.85 x bound; prefill and 512 x 32: fixed speedups at 0.5)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(PHASES), figsize=(4.2 * len(PHASES), 3.6), sharey=True)
    for ax, (phase, label) in zip(axes, PHASES):
        rows = sorted((r for r in records if r["phase"] == phase), key=lambda r: r["ratio"])
        bounds = dict(sorted({r["ratio"]: r["bound"] for r in rows}.items()))
        ax.plot(list(bounds), list(bounds.values()), "k--", label="bytes bound")
        if phase == "decode" and bounds:
            ax.plot(list(bounds), [DECODE_SHARE * b for b in bounds.values()], ":", color="grey",
                    label=f"target ({DECODE_SHARE} x bound)")
        for ratio, target in TARGETS.get(phase, {}).items():
            ax.scatter([ratio], [target], marker="_", s=400, color="grey", label="target")
        by_ratio: dict[float, list[float]] = defaultdict(list)
        for r in rows:
            by_ratio[r["ratio"]].append(r["speedup"])
        for ratio, values in by_ratio.items():
            ax.scatter([ratio] * len(values), values, color="C0", zorder=3)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(label)
        ax.set_xlabel("ratio (parameters kept)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("speedup over dense")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(title or "compressed against dense")
    return save_figure(fig, path)
