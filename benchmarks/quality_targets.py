"""Issue 15's targets, checked from ``results/quality/summary.json``: one command, three tables.

For the rows of the default method marked ``default`` (``sharvet compress --refine`` as it is), or run with the given
refinement flags, against the LoRA baselines run with the same fine-tuning data and steps, calibration, precision
and other flags (``setting``):

1. perplexity as a multiple of the original's: <= 1.6x (WikiText-2) and <= 1.8x (C4) at 0.7, <= 3x at 0.5;
2. >= 10 % lower perplexity than each baseline, both sets (adapters on top and in budget);
3. average accuracy over the five tasks not behind any baseline.

Repeated runs of a row are averaged (the spread of identical GPU runs is ~2-3 %), and every cell says how many.

    python benchmarks/quality_targets.py results/quality/summary.json
    python benchmarks/quality_targets.py results/quality/summary.json --flags "--epochs 4"   # a candidate default
    python benchmarks/quality_targets.py results/quality/summary.json --calib-samples 256    # another calibration
    python benchmarks/quality_targets.py results/quality/summary.json --plot docs/figures/quality_targets.png
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharvet.methods import DEFAULT_METHOD  # noqa: E402
from sharvet.plots import pyplot, save_figure  # noqa: E402

BASELINES = {"basis-sharing": "Basis Sharing + LoRA", "svd": "per-layer SVD + LoRA",
             "basis-sharing-in-budget": "Basis Sharing + LoRA, in budget", "svd-in-budget": "per-layer SVD + LoRA, in budget"}
SETS = {"wikitext2_ppl": "WikiText-2", "c4_ppl": "C4"}
#: ratio -> set -> largest multiple of the original's perplexity
LIMITS = {0.7: {"wikitext2_ppl": 1.6, "c4_ppl": 1.8}, 0.5: {"wikitext2_ppl": 3.0, "c4_ppl": 3.0}}
MARGIN = 0.10
#: calibration windows of records that do not name theirs (all runs before the ninth session: the CLI's default then)
CALIB_SAMPLES_BEFORE = 64


def refine_flags(record: dict) -> str:
    """The refinement flags of a record's command (``... --refine FLAGS --device cuda ...``)."""
    tail = record["command"].split(" --refine", 1)[1]
    return tail.split(" --device ", 1)[0].strip()


def setting(record: dict) -> tuple:
    """What rows must share to be compared: fine-tuning data and length (recorded, so a row of today's default
    epochs without flags matches a baseline run with ``--epochs N``), calibration, precision, and any other flags."""
    words = refine_flags(record).split()
    others = " ".join(w for i, w in enumerate(words) if w != "--epochs" and (i == 0 or words[i - 1] != "--epochs"))
    return (record.get("train_data"), record.get("epochs"), record.get("train_tokens"), record["calib_data"],
            calib_samples(record), record.get("train_dtype"), others)


def calib_samples(record: dict) -> int:
    return record.get("calib_samples", CALIB_SAMPLES_BEFORE)


def chosen(records: list[dict], flags: str, calib: int | None = None) -> tuple[list[dict], dict[str, list[dict]]]:
    """The default method's rows (those marked default, or those run with ``flags`` and, if given, ``calib``
    calibration windows; float32) and the baselines' rows of the same setting."""
    ours = [r for r in records if r["method"] == DEFAULT_METHOD and r.get("train_dtype") == "float32"
            and (calib is None or calib_samples(r) == calib)
            and (refine_flags(r) == flags if flags or calib else r["default"])]
    settings = {setting(r) for r in ours}
    base = {m: [r for r in records if r["method"] == m and setting(r) in settings] for m in BASELINES}
    return ours, base


def mean(rows: list[dict], key: str) -> tuple[float | None, int]:
    values = [r[key] for r in rows if r.get(key) is not None]
    return (statistics.fmean(values) if values else None), len(values)


def runs_stderr(ours: list[dict], theirs: list[dict]) -> float | None:
    """Standard error of the difference of two mean accuracies from the runs' own spread: how sure the means are
    for these questions. None unless both sides have two runs or more."""
    sides = [[r["avg_acc"] for r in rows if r.get("avg_acc") is not None] for rows in (ours, theirs)]
    if any(len(v) < 2 for v in sides):
        return None
    return sum(statistics.variance(v) / len(v) for v in sides) ** 0.5


def questions_stderr(ours: list[dict], theirs: list[dict]) -> float | None:
    """Standard error of the difference of one run of each side from lm-eval's per-task errors (the tasks' finite
    questions), as if the two models' answers were independent: repeating runs on the same questions does not
    shrink it, and pairing on the same questions would. None where a record does not carry one."""
    sides = []
    for rows in (ours, theirs):
        errors = [r.get("avg_acc_stderr") for r in rows if r.get("avg_acc") is not None]
        if not errors or any(e is None for e in errors):
            return None
        sides.append(statistics.fmean(e * e for e in errors))
    return (sides[0] + sides[1]) ** 0.5


def paired_stderr(ours: list[dict], theirs: list[dict]) -> float | None:
    """Standard error (points) of the difference of the two sides' mean accuracies over these tasks' questions,
    paired: per question, the share of each side's runs that answered it right; per task, the spread of the
    difference over its questions; the average weighs the tasks alike, as ``avg_acc`` does. Both models answer
    the same questions, so this is far below the unpaired error. None unless every run of both sides logged every
    task's outcomes (``task_correct``)."""
    sides = [[r for r in rows if r.get("avg_acc") is not None] for rows in (ours, theirs)]
    runs = sides[0] + sides[1]
    if not all(sides) or any("task_correct" not in r for r in runs):
        return None
    tasks = sorted(runs[0]["task_correct"])
    if any(sorted(r["task_correct"]) != tasks for r in runs):
        return None
    variance = 0.0
    for task in tasks:
        outcomes = [[r["task_correct"][task] for r in side] for side in sides]
        if len({len(o) for side in outcomes for o in side}) != 1:
            return None
        share = [[statistics.fmean(int(o[q]) for o in side) for q in range(len(side[0]))] for side in outcomes]
        diff = [a - b for a, b in zip(*share)]
        variance += statistics.variance(diff) / len(diff)
    return 100 * variance ** 0.5 / len(tasks)


def shortfall(ours: list[dict], theirs: list[dict], gap: float) -> str:
    """How far behind, with the standard errors that can be computed; where only some runs logged their questions,
    the paired comparison of those runs alone."""
    text = f"behind by {gap:.2f}"
    runs, questions = runs_stderr(ours, theirs), questions_stderr(ours, theirs)
    paired = paired_stderr(ours, theirs)
    if runs is not None:
        text += f"; SE across runs {runs:.2f}"
    if questions is not None:
        text += f"; SE of one run's questions {questions:.1f}"
    if paired is not None:
        return text + f"; paired SE of the questions {paired:.2f}"
    return text + logged_comparison(ours, theirs)


def logged_comparison(ours: list[dict], theirs: list[dict]) -> str:
    """``; of the runs that logged their questions (n and m): behind by x, paired SE y``, or nothing where a side
    has none: older runs predate the logging, and the paired error needs every compared run's outcomes."""
    logged = [[r for r in rows if "task_correct" in r and r.get("avg_acc") is not None] for rows in (ours, theirs)]
    paired = paired_stderr(*logged)
    if paired is None:
        return ""
    gap = mean(logged[1], "avg_acc")[0] - mean(logged[0], "avg_acc")[0]
    return (f"; of the runs that logged their questions ({len(logged[0])} and {len(logged[1])}): "
            f"{'behind' if gap > 0 else 'ahead'} by {abs(gap):.2f}, paired SE {paired:.2f}")


def cell(value: float | None, n: int, digits: int = 2) -> str:
    return "not run" if value is None else f"{value:.{digits}f}" + (f" (mean of {n})" if n > 1 else "")


def tables(records: list[dict], flags: str, calib: int | None = None) -> tuple[str, int, int]:
    """The three tables in markdown, and how many targets were checked and met."""
    original = next(r for r in records if r["method"] == "original")
    ours, base = chosen(records, flags, calib)
    met = checked = 0
    limits = ["| ratio | set | SharVeT default | x original | limit | met |", "|---|---|---|---|---|---|"]
    margins = ["| ratio | set | baseline | SharVeT | baseline | lower by | met (>= 10 %) |",
               "|---|---|---|---|---|---|---|"]
    accuracy = ["| ratio | baseline | SharVeT avg | baseline avg | met (not behind) |", "|---|---|---|---|---|"]
    for ratio in sorted({r["ratio"] for r in ours}, reverse=True):
        mine = [r for r in ours if r["ratio"] == ratio]
        for key, name in SETS.items():
            value, n = mean(mine, key)
            limit = LIMITS.get(ratio, {}).get(key)
            if value is not None and limit is not None:
                ok = value / original[key] <= limit
                met, checked = met + ok, checked + 1
                limits.append(f"| {ratio} | {name} | {cell(value, n)} | {value / original[key]:.2f} | {limit} | "
                              f"{'yes' if ok else '**no**'} |")
            for m, label in BASELINES.items():
                theirs, k = mean([r for r in base[m] if r["ratio"] == ratio], key)
                if value is None or theirs is None:
                    margins.append(f"| {ratio} | {name} | {label} | {cell(value, n)} | not run | - | - |")
                    continue
                lower = 1 - value / theirs
                ok = lower >= MARGIN
                met, checked = met + ok, checked + 1
                margins.append(f"| {ratio} | {name} | {label} | {cell(value, n)} | {cell(theirs, k)} | "
                               f"{100 * lower:.1f} % | {'yes' if ok else '**no**'} |")
        acc, n = mean(mine, "avg_acc")
        for m, label in BASELINES.items():
            rows = [r for r in base[m] if r["ratio"] == ratio]
            theirs, k = mean(rows, "avg_acc")
            if acc is None or theirs is None:
                continue
            ok = acc >= theirs
            met, checked = met + ok, checked + 1
            accuracy.append(f"| {ratio} | {label} | {cell(acc, n)} | {cell(theirs, k)} | "
                            f"{'yes' if ok else f'**no** ({shortfall(mine, rows, theirs - acc)})'} |")
    return "\n\n".join("\n".join(t) for t in (limits, margins, accuracy)), checked, met


PANELS = {**SETS, "avg_acc": "average accuracy (5 tasks)"}


def _column(ax, x: float, values: list[float], color: str) -> None:
    """One method's runs as dots (spread sideways so repeats show) and their mean as a bar."""
    offsets = [0.0] if len(values) == 1 else [0.24 * (i / (len(values) - 1) - 0.5) for i in range(len(values))]
    ax.scatter([x + o for o in offsets], values, s=14, color=color, alpha=0.7, zorder=3)
    ax.hlines(statistics.fmean(values), x - 0.3, x + 0.3, color=color, linewidth=2.5, zorder=4)


def _target_line(ax, key: str, ratio: float, original: dict, means: list[float]) -> None:
    """Where the default must be: 10 % below the best baseline's perplexity (and within the limit of the
    original's), or not below the best baseline's accuracy."""
    if key == "avg_acc":
        ax.axhline(max(means), color="grey", linestyle=":", label="best baseline (not behind)")
        return
    ax.axhline((1 - MARGIN) * min(means), color="grey", linestyle=":", label="10 % below the best baseline")
    limit = LIMITS.get(ratio, {}).get(key)
    if limit is not None:
        ax.axhline(limit * original[key], color="tab:red", linestyle="--", linewidth=1,
                   label=f"{limit}x the original's")


def targets_figure(records: list[dict], flags: str, calib: int | None, path: str | Path) -> Path:
    """Issue 15's targets as a picture: per ratio (rows) and measure (columns) every run of the default and of each
    baseline of the same setting, their means, and the line each target draws."""
    original = next(r for r in records if r["method"] == "original")
    ours, base = chosen(records, flags, calib)
    ratios = sorted({r["ratio"] for r in ours}, reverse=True)
    labels = {DEFAULT_METHOD: "SharVeT default", **BASELINES}
    plt = pyplot()
    fig, axes = plt.subplots(len(ratios), len(PANELS), figsize=(5.2 * len(PANELS), 3.9 * len(ratios)), squeeze=False)
    for row, ratio in zip(axes, ratios):
        sides = {DEFAULT_METHOD: [r for r in ours if r["ratio"] == ratio],
                 **{m: [r for r in rows if r["ratio"] == ratio] for m, rows in base.items()}}
        for ax, (key, name) in zip(row, PANELS.items()):
            runs = {m: [r[key] for r in rows if r.get(key) is not None] for m, rows in sides.items()}
            shown = [m for m, v in runs.items() if v]
            for x, m in enumerate(shown):
                _column(ax, x, runs[m], "tab:blue" if m == DEFAULT_METHOD else "tab:orange")
            baselines = [statistics.fmean(runs[m]) for m in shown if m != DEFAULT_METHOD]
            if baselines and runs[DEFAULT_METHOD]:
                _target_line(ax, key, ratio, original, baselines)
                ax.legend(fontsize=7, loc="best")
            ax.set_xticks(range(len(shown)), [labels[m].replace(", ", ",\n").replace(" + ", "\n+ ") for m in shown],
                          fontsize=7)
            ax.set_title(f"ratio {ratio}: {name}", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
    fig.suptitle("issue 15's targets: each dot a run, each bar a mean (lower perplexity and higher accuracy are "
                 "better)", fontsize=10)
    return save_figure(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("summary", help="results/quality/summary.json")
    p.add_argument("--flags", default="", help="refinement flags of the rows to check (default: none, the defaults)")
    p.add_argument("--calib-samples", type=int, default=None, help="check rows calibrated on this many windows")
    p.add_argument("--plot", default=None, help="also draw the runs and the targets' lines into this PNG")
    a = p.parse_args()
    records = json.loads(Path(a.summary).read_text())
    text, checked, met = tables(records, a.flags, a.calib_samples)
    what = f"rows with --refine {a.flags}" if a.flags else "the default rows"
    what += f", {a.calib_samples} calibration windows" if a.calib_samples else ""
    print(f"issue 15's targets, {what} ({DEFAULT_METHOD}) against baselines of the same fine-tuning setting:\n\n{text}\n\n"
          f"{met} of {checked} checked targets met")
    if a.plot:
        print(f"figure: {targets_figure(records, a.flags, a.calib_samples, a.plot)}")


if __name__ == "__main__":
    main()
