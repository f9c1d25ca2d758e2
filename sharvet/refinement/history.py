"""Loss history: one JSON line per optimizer step, and plots in the style of paper Figure 3."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from ..plots import pyplot, save_figure

HISTORY = "history.jsonl"
PLOT = "loss.png"
#: loss terms in plotting order (the total last, dashed)
TERMS = ("lm", "kd", "feature", "l2", "loss")


class HistoryWriter:
    """Appends step records; on resume it first drops records past the checkpoint (they will be redone)."""

    def __init__(self, path: Path, *, keep_until: int | None) -> None:
        self.path = path
        kept = [r for r in read_history(path) if r["step"] <= keep_until] if keep_until is not None else []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.records: list[dict[str, Any]] = kept

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_history(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def _axes() -> tuple[Any, Any]:
    fig, ax = pyplot().subplots(figsize=(6.4, 4.0))
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.grid(True, which="both", alpha=0.3)
    return fig, ax


def _series(records: Iterable[dict[str, Any]], term: str) -> tuple[list[int], list[float]]:
    """Points of one term; non-positive values (L2 is exactly 0 at the start) cannot sit on a log axis."""
    pts = [(r["step"], r[term]) for r in records if term in r and r[term] > 0]
    return [s for s, _ in pts], [v for _, v in pts]


def plot_history(records: list[dict[str, Any]], out_png: str | Path, *, title: str = "") -> Path:
    """Every logged term (unweighted) against the optimizer step, log scale."""
    fig, ax = _axes()
    for term in TERMS:
        steps, values = _series(records, term)
        if steps:
            style = {"color": "black", "linestyle": "--", "linewidth": 1.6} if term == "loss" else {"linewidth": 1.2}
            ax.plot(steps, values, label=term, **style)
    ax.set_ylabel("loss (unweighted terms)")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, out_png)


def plot_comparison(runs: dict[str, str | Path], out_png: str | Path, *, term: str = "lm") -> Path:
    """Figure 3: one term (default the LM loss) of several runs, e.g. ``{"SharVeT": dir1, "LoRA": dir2}``.

    Each run is its output folder or its ``history.jsonl``.
    """
    fig, ax = _axes()
    for label, where in runs.items():
        path = Path(where) / HISTORY if Path(where).is_dir() else Path(where)
        steps, values = _series(read_history(path), term)
        ax.plot(steps, values, label=label)
    ax.set_ylabel(f"{term} loss")
    ax.legend()
    return save_figure(fig, out_png)
