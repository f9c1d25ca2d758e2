"""How similar are the layers that each grouping strategy puts together? (the paper's Figure 4)

For every strategy and module type we build the groups exactly as the pipeline would (``make_groups`` on the
joint similarity S of Sec. 3.2) and collect S inside each group: every within-group pair (i < j) and the
per-group mean. SharVeT (spectral) should give high intra-group similarity with no low outliers, while
position-based strategies (SEQ = consecutive, CYCLE, REV) put dissimilar layers together.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .grouping import STRATEGIES, Groups, GroupingRequest, intra_group_similarity, make_groups
from .plots import pyplot, save_figure
from .similarity import TypeSimilarity


@dataclass(frozen=True)
class StrategyEntry:
    """One box of the figure: ``label`` is shown, ``strategy`` is a name in ``grouping.STRATEGIES``."""

    label: str
    strategy: str
    k: int


def paper_entries(k: int) -> list[StrategyEntry]:
    """The comparison of Figure 4 (SharVeT vs SEQ, CYCLE, REV), all with ``k`` groups per type."""
    return [StrategyEntry("SharVeT", "spectral", k), StrategyEntry("SEQ", "consecutive", k),
            StrategyEntry("CYCLE", "cycle", k), StrategyEntry("REV", "cycle-rev", k)]


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean / median / min / 5th percentile / count; the statistics are None when there are no values
    (e.g. k == L, where every group is a single layer)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"mean": None, "median": None, "min": None, "p5": None, "pairs": 0}
    return {"mean": float(a.mean()), "median": float(np.median(a)), "min": float(a.min()),
            "p5": float(np.percentile(a, 5)), "pairs": int(a.size)}


@dataclass
class TypeGrouping:
    """Groups of one strategy for one module type and the similarity found inside them.

    ``pairs`` holds S for every within-group pair i < j (symmetrised, (S_ij + S_ji) / 2), so a group of n
    layers adds n(n-1)/2 values and a group of one adds none. ``group_means`` is aligned with ``groups``
    (None for a group of one), computed with ``grouping.intra_group_similarity`` as rank allocation does.
    """

    groups: Groups
    pairs: list[float]
    group_means: list[float | None]

    def to_dict(self) -> dict[str, Any]:
        return {"groups": self.groups, "pairs": self.pairs, "group_means": self.group_means,
                "summary": summarize(self.pairs)}


@dataclass
class GroupingReport:
    """Per strategy label, per module type: a ``TypeGrouping``."""

    entries: list[StrategyEntry]
    seed: int
    results: dict[str, dict[str, TypeGrouping]] = field(default_factory=dict)

    def pooled_pairs(self, label: str) -> list[float]:
        """All pair values of one strategy over all module types (what one box of the figure shows)."""
        return [v for tg in self.results[label].values() for v in tg.pairs]

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "strategies": [
            {"label": e.label, "strategy": e.strategy, "k": e.k, "pooled": summarize(self.pooled_pairs(e.label)),
             "types": {t: tg.to_dict() for t, tg in self.results[e.label].items()}}
            for e in self.entries]}

    def to_markdown(self) -> str:
        """One row per strategy: pooled mean / median / min / p5 and the mean of each module type."""
        types = list(next(iter(self.results.values()), {}))
        fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        head = ["strategy", "k", "mean", "median", "min", "p5", "pairs"] + [f"{t} mean" for t in types]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for e in self.entries:
            s = summarize(self.pooled_pairs(e.label))
            cells = [e.label, str(e.k)] + [fmt(s[c]) for c in ("mean", "median", "min", "p5")] + [str(s["pairs"])]
            cells += [fmt(summarize(self.results[e.label][t].pairs)["mean"]) for t in types]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _type_grouping(sim: TypeSimilarity, entry: StrategyEntry, seed: int) -> TypeGrouping:
    s = sim.joint.double().cpu()
    groups = make_groups(entry.strategy, GroupingRequest(s.shape[0], entry.k, s, seed))
    sym = ((s + s.T) / 2).numpy()
    pairs = [float(sym[g[a], g[b]]) for g in groups for a in range(len(g)) for b in range(a + 1, len(g))]
    return TypeGrouping(groups, pairs, [intra_group_similarity(s, g) for g in groups])


def grouping_report(sims: dict[str, TypeSimilarity], entries: Sequence[StrategyEntry], seed: int = 0) -> GroupingReport:
    """Group every module type with every strategy and collect the intra-group joint similarity.

    Everything is validated before any clustering runs, so a typo fails fast with a clear ValueError.
    """
    if not sims:
        raise ValueError("no similarity matrices given (need at least one module type)")
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise ValueError(f"strategy labels must be unique, got {labels}")
    for e in entries:
        if e.strategy not in STRATEGIES:
            raise ValueError(f"{e.label}: unknown grouping {e.strategy!r}; choose from {', '.join(sorted(STRATEGIES))}")
        for t, sim in sims.items():
            n = sim.joint.shape[0]
            if not 1 <= e.k <= n:
                raise ValueError(f"{e.label}: k={e.k} groups is outside 1..{n} (the number of layers of {t!r})")
    report = GroupingReport(list(entries), seed)
    for e in entries:
        report.results[e.label] = {t: _type_grouping(sim, e, seed) for t, sim in sims.items()}
    return report


def plot_grouping_report(report: GroupingReport, path: str | Path, *, title: str = "") -> Path:
    """Box plot of the pooled pair similarities per strategy, with every pair drawn as a jittered point
    coloured by module type (so outliers can be traced to a type). Returns the PNG path."""
    plt = pyplot()
    labels = [e.label for e in report.entries]
    types = list(next(iter(report.results.values()), {}))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(labels) + 1.5), 4.0))
    data = [report.pooled_pairs(lbl) or [math.nan] for lbl in labels]
    ax.boxplot(data, showfliers=False, widths=0.5, medianprops={"color": "black"})
    rng = np.random.default_rng(0)
    colors = plt.get_cmap("tab10")
    for ti, t in enumerate(types):
        for xi, lbl in enumerate(labels, start=1):
            ys = report.results[lbl][t].pairs
            xs = xi + rng.uniform(-0.18, 0.18, len(ys))
            ax.scatter(xs, ys, s=10, alpha=0.55, color=colors(ti % 10), label=t if xi == 1 else None, zorder=3)
    for xi, lbl in enumerate(labels, start=1):
        if not report.pooled_pairs(lbl):  # k == L: all groups are single layers
            ax.text(xi, 0.5, "no pairs", transform=ax.get_xaxis_transform(), ha="center", color="gray")
    ax.set_xticks(range(1, len(labels) + 1), [f"{e.label}\n(k={e.k})" for e in report.entries])
    ax.set_ylabel("intra-group joint similarity")
    ax.grid(axis="y", alpha=0.3)
    if len(types) > 1:
        ax.legend(title="module type", fontsize=7, title_fontsize=8, loc="best")
    ax.set_title(title or "similarity of layers grouped together")
    return save_figure(fig, path)
