"""The study's tables and Figure 3, from the run records under ``results/study``.

Every number comes from a results file; nothing is typed in. A method's Table 2 row is the run of the
learning-rate search with the lowest held-out WikiText-2 perplexity after fine-tuning (the same search for
every method). Accuracies are lm-eval's headline metric (acc_norm for PIQA) in percent; a task without data
on the machine that ran the study is shown as "n/a", and averages follow :data:`sharvet.evaluation.table2.AVERAGE_RULE`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from sharvet.evaluation import table2
from sharvet.evaluation.rows import ResultRow, RunRecord, read_run
from sharvet.evaluation.task_catalog import PAPER_TASKS
from sharvet.refinement import plot_comparison, read_history

NAMES = {"original": "Original", "seq": "SEQ", "cycle": "CYCLE", "cycle-rev": "CYCLE-REV",
         "basis-sharing": "Basis Sharing", "fips": "FiPS", "sharvet": "SharVeT", "sharvet-plus": "SharVeT (V refined)"}
#: after fine-tuning: the baselines carry LoRA adapters, SharVeT its vectors (and V, for sharvet-plus)
LABELS = {m: n if m in ("original", "sharvet", "sharvet-plus") else f"{n} + LoRA" for m, n in NAMES.items()}
TABLE2 = ("seq", "cycle", "cycle-rev", "basis-sharing", "fips", "sharvet")
#: Table 2's perplexity sets besides WikiText-2 (scored where their data is local); C4 is always a column
PPL_SETS = {"c4": "C4", "ptb": "PTB"}
TASK_NAMES = {t: table2.TASK_NAMES[t][1] for t in PAPER_TASKS}
#: the paper's ablation tables: (title, [(variant or "" for full SharVeT, what it changes)])
ABLATIONS = (
    ("Table 3: components", [("", "SharVeT"), ("R", "random grouping"), ("I", "identical ranks"),
                             ("L", "LM loss only (no distillation / feature / L2)"), ("T", "no refinement")]),
    ("Table 7: similarity terms", [("", "cosine + Frobenius + CKA"), ("C", "without cosine"),
                                   ("F", "without Frobenius"), ("K", "without CKA")]),
    ("Table 8: clustering", [("", "spectral"), ("Agg", "agglomerative (Ward)"), ("DB", "DBSCAN")]),
    ("Table 9: trained vectors", [("", "lambda + sigma"), ("lambda", "lambda only"), ("sigma", "sigma only")]),
)
#: Figure 3's curves: (method, variant) of a row and its legend
CURVES = ((("sharvet", ()), "SharVeT model, lambda/sigma vectors"), (("sharvet", ("LoRA",)), "SharVeT model, LoRA r=8"),
          (("basis-sharing", ()), "Basis Sharing model, LoRA r=8"),
          (("sharvet", ("M",)), "SharVeT model, vectors, loss weights matched (M)"))


# ----------------------------------------------------------------------------------------------- reading

def load_runs(results_dir: Path, prefix: str) -> list[RunRecord]:
    """Every results file of a stage (``<prefix>*.json``, a stage may be split over several runs)."""
    paths = sorted(p for p in results_dir.glob(f"{prefix}*.json") if not p.name.endswith(".run.json"))
    return [read_run(p) for p in paths]


def rows_of(runs: list[RunRecord]) -> list[ResultRow]:
    return [row for run in runs for row in run.rows]


def tuned_row(rows: list[ResultRow], ratio: float, method: str, variants: tuple[str, ...],
              lr: float) -> ResultRow | None:
    """The fine-tuned row of one (ratio, method, variants, lr), or None."""
    return next((r for r in rows if (r.ratio, r.method, r.variants, r.lr) == (ratio, method, variants, lr)
                 and r.refined), None)


def best_rows(rows: list[ResultRow]) -> dict[tuple[float, str], ResultRow]:
    """Per (ratio, method) the plain (no variant) row with the lowest tuned perplexity over the lr search."""
    best: dict[tuple[float, str], ResultRow] = {}
    for row in rows:
        key = (row.ratio, row.method)
        if row.variants or not row.refined:
            continue
        if key not in best or row.ppl() < best[key].ppl():
            best[key] = row
    return best


def accuracy(row: ResultRow, name: str) -> float | None:
    value = row.accuracy(name)
    return None if value is None else 100 * value


def average(row: ResultRow) -> float | None:
    """The average accuracy in percent (:data:`sharvet.evaluation.table2.AVERAGE_RULE`)."""
    value = table2.average_accuracy(row)
    return None if value is None else 100 * value


def stderr(row: ResultRow) -> float | None:
    """Standard error of :func:`average`, in percent."""
    value = table2.average_stderr(row)
    return None if value is None else 100 * value


def ppl_sets(runs: list[RunRecord]) -> list[str]:
    """Table 2's further perplexity columns: C4 always, other sets where a run scored them."""
    scored = {name for run in runs for name in run.ppl_tokens}
    return [name for name in PPL_SETS if name == "c4" or name in scored]


def tasks_with_data(rows: list[ResultRow]) -> list[str]:
    return [t for t in PAPER_TASKS if any(r.accuracy(t) is not None for r in rows)]


def last_lm_loss(history: Path, tail: int = 8) -> float:
    """Mean LM loss of the last ``tail`` logged steps (single steps are noisy)."""
    values = [r["lm"] for r in read_history(history) if "lm" in r][-tail:]
    return sum(values) / len(values)


def original_run(runs: list[RunRecord]) -> RunRecord:
    """The run that scored the original model on the tasks (a stage split over runs scores it once)."""
    return next((run for run in runs if run.original is not None and run.original.tasks), runs[0])


# ----------------------------------------------------------------------------------------------- formatting

def fmt(value: float | None, digits: int = 1) -> str:
    return table2.STUDY.number(value, digits)


def wall(row: ResultRow) -> str:
    """Compression plus fine-tuning seconds of a row (evaluation not included)."""
    return f"{(row.compress_s or 0) + (row.refine_s or 0):.0f}"


def accuracy_header(tasks: list[str]) -> list[str]:
    """Per-task accuracy columns, plus the average with its standard error when there are several tasks."""
    return [f"{TASK_NAMES[t]} ↑" for t in tasks] + (["Avg ± SE ↑"] if len(tasks) > 1 else [])


def accuracy_cells(row: ResultRow, tasks: list[str]) -> list[str]:
    cells = [fmt(accuracy(row, t)) for t in tasks]
    if len(tasks) > 1:
        mean, err = average(row), stderr(row)
        cells.append(fmt(mean) if mean is None or err is None else f"{mean:.1f} ± {err:.1f}")
    return cells


def table(header: list[str], body: list[list[str]]) -> str:
    return table2.markdown_table(header, body)


def rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start).replace(os.sep, "/")


# ----------------------------------------------------------------------------------------------- sections

def setup_section(first: RunRecord, lrs: list[float]) -> str:
    a = first.settings
    tokens = a["train_samples"] * a["seq_len"]
    steps = a["epochs"] * a["train_samples"] // a["batch_size"]
    return (
        f"Model SmolLM2-135M-Instruct (the bundled GGUF, dequantised to float32); {first.device}. WikiText-2 "
        f"test is split by rows: the first half ({first.eval_tokens:,} tokens) is held out for perplexity "
        f"(context 1024, non-overlapping windows), the second half supplies {a['calib_samples']} x "
        f"{a['seq_len']} calibration tokens and the fine-tuning set: **{a['train_samples']} windows of "
        f"{a['seq_len']} tokens ({tokens:,} tokens), {a['epochs']} epochs, batch {a['batch_size']} = {steps} "
        f"optimizer steps, the same for every method**. Learning-rate search: "
        f"{', '.join(f'{lr:g}' for lr in lrs)} for every method. SharVeT trains its lambda/sigma vectors with "
        f"eq. 13 (LM + distillation + feature + L2; {loss_weights_text(first)}); the baselines train LoRA "
        f"adapters (rank {a['lora_rank']}) on the same loss. Seeds fixed (0). Accuracy: "
        "lm-eval 0.4.13, 0-shot, full validation/test sets: PIQA from the shared data folder, COPA, WinoGrande, "
        "ARC-Easy and LAMBADA written by `sharvet fetch-data` (see \"Evaluation data\" above)."
        + "".join(f" {PPL_SETS[n]} perplexity: the first {k:,} tokens of its local evaluation file, same windows."
                  for n, k in first.ppl_tokens.items())
    )


def loss_weights_text(run: RunRecord) -> str:
    """How eq. 13 was weighted in a run: the authors' fixed weights or the default preset's matched ones."""
    weights = next((r.loss_weights for r in run.rows if r.loss_weights), None) or {}
    if weights.get("kd_per_sequence"):
        return "the reference's weights: KD 0.001 summed over positions, feature x5, sigma trained as an absolute value"
    return ("the default refinement preset: KD and feature weights matched to the LM loss's scale before training, "
            "the paper's rule, and sigma trained relative to its start")


def table2_section(runs: list[RunRecord], best: dict[tuple[float, str], ResultRow], caption: str) -> str:
    """Table 2 through the one renderer (:mod:`sharvet.evaluation.table2`): the original, then per ratio the
    methods' best rows of the learning-rate search."""
    original = original_run(runs).original or ResultRow("original", 1.0)
    rows = [original, *[best[(ratio, m)] for ratio in sorted({r for r, _ in best}, reverse=True)
                        for m in TABLE2 if (ratio, m) in best]]
    def compressed(text):  # "-" on the original model's row
        return lambda r: "-" if r.is_original else text(r)

    columns = [
        table2.Column("Ratio", lambda r: "1.0" if r.is_original else f"{r.ratio:g}"),
        table2.Column("Method", lambda r: LABELS[r.method]), table2.Column("lr", compressed(lambda r: f"{r.lr:g}")),
        table2.Column("realised ratio", lambda r: "1.0" if r.is_original else f"{r.realised_ratio:.4f}"),
        table2.Column("trainable", compressed(lambda r: f"{r.trainable:,}")),
        *[table2.Column(f"{PPL_SETS.get(n, 'WikiText-2')} ↓", lambda r, n=n: r.ppl(n), 2, "lower")
          for n in ["wikitext2", *ppl_sets(runs)]],
        *table2.accuracy_columns(short=False, percent=True, digits=1,
                                 average_header=f"Avg ({'+'.join(TASK_NAMES.values())}) ↑"),
        table2.Column("wall s", compressed(wall)),
    ]
    return table2.render(rows, columns, table2.STUDY, caption)


def lr_table(rows: list[ResultRow], lrs: list[float], probe: list[ResultRow] = ()) -> str:
    """Tuned WikiText-2 perplexity per method and learning rate, the search's and the probe's; the best in bold."""
    probe_lrs = sorted({r.lr for r in probe})
    plain = [r for r in [*rows, *probe] if not r.variants and r.refined]
    keys = sorted({(r.ratio, r.method) for r in plain}, key=lambda k: (-k[0], TABLE2.index(k[1])))
    body = []
    for ratio, m in keys:
        by_lr = {r.lr: r.ppl() for r in plain if (r.ratio, r.method) == (ratio, m)}
        top = min(by_lr.values())
        body.append([f"{ratio:g}", LABELS[m], *[f"**{fmt(v, 2)}**" if v == top else fmt(v, 2)
                                                for v in (by_lr.get(lr) for lr in [*lrs, *probe_lrs])]])
    return table(["Ratio", "Method", *[f"ppl, lr {lr:g}" for lr in lrs],
                  *[f"ppl, lr {lr:g} (probe)" for lr in probe_lrs]], body)


def table6(best: dict[tuple[float, str], ResultRow]) -> str:
    body = [[f"{ratio:g}", NAMES[m], fmt(best[(ratio, m)].untuned_ppl(), 1)]
            for ratio in sorted({r for r, _ in best}, reverse=True) for m in TABLE2 if (ratio, m) in best]
    return table(["Ratio", "Method", "WikiText-2 ppl, no fine-tuning ↓"], body)


def ablation_tables(base: ResultRow | None, variants: dict[str, ResultRow], tasks: list[str]) -> str:
    out = []
    for title, entries in ABLATIONS:
        body = []
        for v, what in entries:
            row = base if v == "" else variants.get(v)
            if row is None:
                continue
            tuned = fmt(row.ppl(), 1) if row.refined else "-"
            body.append([v or "SharVeT", what, fmt(row.untuned_ppl(), 1), tuned, *accuracy_cells(row, tasks),
                         f"{row.trainable or 0:,}", wall(row)])
        out.append(f"**{title}** (ratio 0.5)\n\n" + table(
            ["Variant", "What changes", "ppl untuned", "ppl after refinement ↓", *accuracy_header(tasks),
             "trainable", "wall s"], body))
    return "\n\n".join(out)


def grouping_table(grouping: dict) -> str:
    body = [[s["label"], s["strategy"], str(s["k"]), *[fmt(s["pooled"][q], 3) for q in ("mean", "median", "min", "p5")],
             str(s["pooled"]["pairs"])] for s in grouping["strategies"]]
    return table(["Strategy", "grouping", "k", "mean S", "median S", "min S", "5th pct S", "pairs"], body)


def run_records(results_dir: Path) -> str:
    body = []
    for p in sorted(results_dir.glob("*.run.json")):
        r = json.loads(p.read_text())
        seconds = "-" if r.get("wall_s") is None else f"{r['wall_s']:.0f}"
        note = f" ({r['note']})" if r.get("note") else ""
        body.append([p.name.removesuffix(".run.json"), r.get("gpu") or r.get("host", "?"), r["date"], seconds,
                     f"`{r['command']}`{note}"])
    return table(["Run", "Machine", "Date", "Wall s", "Command"], body)


# ----------------------------------------------------------------------------------------------- figure 3

def history_path(results_dir: Path, row: ResultRow) -> Path:
    return results_dir.joinpath(*Path(row.history).parts[-3:])  # runs-<...>/r<ratio>-<row>/history.jsonl


def figure3(results_dir: Path, rows: list[ResultRow], lr: float, figures_dir: Path) -> dict[float, dict[str, float]]:
    """LM-loss curves of the vectors vs LoRA (same data, steps and lr) per ratio; returns the final losses."""
    finals = {}
    for ratio in sorted({r.ratio for r in rows}, reverse=True):
        runs = {}
        for (m, variants), label in CURVES:
            row = tuned_row(rows, ratio, m, variants, lr)
            if row and history_path(results_dir, row).exists():
                runs[label] = history_path(results_dir, row)
        if len(runs) >= 2:
            plot_comparison(runs, figures_dir / f"figure3_loss_r{ratio:g}.png", term="lm")
            finals[ratio] = {label: last_lm_loss(path) for label, path in runs.items()}
    return finals


def refinement_table(rows: list[ResultRow], lr: float, tasks: list[str]) -> str:
    """SharVeT's model refined by its vectors or by LoRA, beside Basis Sharing + LoRA (same data and lr)."""
    body = []
    for ratio in sorted({r.ratio for r in rows}, reverse=True):
        for (m, variants), label in CURVES:
            row = tuned_row(rows, ratio, m, variants, lr)
            if row:
                body.append([f"{ratio:g}", label, f"{row.trainable:,}", fmt(row.untuned_ppl(), 1),
                             fmt(row.ppl(), 2), *accuracy_cells(row, tasks)])
    return table(["Ratio", "Model, refinement", "trainable", "ppl untuned", "ppl tuned ↓", *accuracy_header(tasks)],
                 body)
