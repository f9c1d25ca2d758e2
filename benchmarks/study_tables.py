"""The study's tables, claim checks and Figure 3, rendered from the JSON files under ``results/study``.

Every number comes from a results file; nothing is typed in. A method's Table 2 row is the run of the
learning-rate search with the lowest held-out WikiText-2 perplexity after fine-tuning (the same search for
every method). Accuracies are lm-eval's headline metric (acc_norm for PIQA) in percent; a task without data
on the machine that ran the study is shown as "n/a" and left out of the average.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from sharvet.evaluation.task_catalog import PAPER_TASKS
from sharvet.refinement.history import plot_comparison, read_history

NAMES = {"original": "Original", "seq": "SEQ", "cycle": "CYCLE", "cycle-rev": "CYCLE-REV",
         "basis-sharing": "Basis Sharing", "fips": "FiPS", "sharvet": "SharVeT"}
#: after fine-tuning: the baselines carry LoRA adapters, SharVeT its vectors
LABELS = {m: n if m in ("original", "sharvet") else f"{n} + LoRA" for m, n in NAMES.items()}
#: relative change below which two perplexities are called equal: identical GPU runs of the usable models
#: differed by up to 1.6% (SharVeT 0.7: 96.81 / 97.36 / 96.92; Basis Sharing 0.5: 137.07 / 139.29), so smaller
#: gaps are not findings
NOISE = 0.016
TABLE2 = ("seq", "cycle", "cycle-rev", "basis-sharing", "fips", "sharvet")
#: Table 2's perplexity sets besides WikiText-2 (scored where their data is local); C4 is always a column
PPL_SETS = {"c4": "C4", "ptb": "PTB"}
TASK_NAMES = {"copa": "COPA", "piqa": "PIQA", "arc_easy": "ARC-E", "winogrande": "WG", "lambada_openai": "LAMBADA"}
#: the paper's ablation tables: (title, [(variant or "" for full SharVeT, what it changes)])
ABLATIONS = (
    ("Table 3: components", [("", "SharVeT"), ("R", "random grouping"), ("I", "identical ranks"),
                             ("L", "LM loss only (no distillation / feature / L2)"), ("T", "no refinement")]),
    ("Table 7: similarity terms", [("", "cosine + Frobenius + CKA"), ("C", "without cosine"),
                                   ("F", "without Frobenius"), ("K", "without CKA")]),
    ("Table 8: clustering", [("", "spectral"), ("Agg", "agglomerative (Ward)"), ("DB", "DBSCAN")]),
    ("Table 9: trained vectors", [("", "lambda + sigma"), ("lambda", "lambda only"), ("sigma", "sigma only")]),
)


# ----------------------------------------------------------------------------------------------- reading

def load_runs(results_dir: Path, prefix: str) -> list[dict[str, Any]]:
    """Every results file of a stage (``<prefix>*.json``, a stage may be split over several runs)."""
    paths = sorted(p for p in results_dir.glob(f"{prefix}*.json") if not p.name.endswith(".run.json"))
    return [json.loads(p.read_text()) for p in paths]


def rows_of(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row | {"lr": run["args"]["lr"]} for run in runs for row in run["rows"]]


def tuned_row(rows: list[dict[str, Any]], ratio: float, method: str, variants: tuple[str, ...],
              lr: float) -> dict[str, Any] | None:
    """The fine-tuned row of one (ratio, method, variants, lr), or None."""
    return next((r for r in rows if (r["ratio"], r["method"], tuple(r["variants"]), r["lr"]) ==
                 (ratio, method, variants, lr) and "ppl_tuned" in r), None)


def best_rows(rows: list[dict[str, Any]]) -> dict[tuple[float, str], dict[str, Any]]:
    """Per (ratio, method) the plain (no variant) row with the lowest tuned perplexity over the lr search."""
    best: dict[tuple[float, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["ratio"], row["method"])
        if row["variants"] or "ppl_tuned" not in row:
            continue
        if key not in best or row["ppl_tuned"] < best[key]["ppl_tuned"]:
            best[key] = row
    return best


def accuracy(tasks: dict[str, Any], name: str) -> float | None:
    entry = tasks.get(name, {})
    return 100 * entry["headline"] if entry.get("status") == "ok" and entry.get("headline") is not None else None


def final_ppl(row: dict[str, Any], name: str = "wikitext2") -> float | None:
    """A row's perplexity after fine-tuning (or its only one) on ``wikitext2`` or a further set; None if not run."""
    if name == "wikitext2":
        return row.get("ppl_tuned", row.get("ppl_untuned"))
    return row.get("extra_ppl", {}).get(name)


def ppl_sets(runs: list[dict[str, Any]]) -> list[str]:
    """Table 2's further perplexity columns: C4 always, other sets where a run scored them."""
    scored = {name for run in runs for name in run.get("extra_ppl_tokens", {})}
    return [name for name in PPL_SETS if name == "c4" or name in scored]


def tasks_with_data(rows: list[dict[str, Any]]) -> list[str]:
    return [t for t in PAPER_TASKS if any(accuracy(r.get("tasks", {}), t) is not None for r in rows)]


def average(tasks: dict[str, Any], names: list[str]) -> float | None:
    values = [accuracy(tasks, t) for t in names]
    return sum(values) / len(values) if values and None not in values else None


def stderr(tasks: dict[str, Any], names: list[str]) -> float | None:
    """Standard error (percent) of the unweighted average of ``names``, from lm-eval's per-task standard
    errors (tasks are independent samples: sqrt(sum se^2) / n); None if a task was not run."""
    if not names or any(tasks.get(n, {}).get("status") != "ok" for n in names):
        return None
    errors = [100 * tasks[n]["metrics"].get(f"{tasks[n]['headline_metric']}_stderr", float("nan")) for n in names]
    return math.sqrt(sum(e * e for e in errors)) / len(names)


def last_lm_loss(history: Path, tail: int = 8) -> float:
    """Mean LM loss of the last ``tail`` logged steps (single steps are noisy)."""
    values = [r["lm"] for r in read_history(history) if "lm" in r][-tail:]
    return sum(values) / len(values)


# ----------------------------------------------------------------------------------------------- formatting

def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) >= 10_000:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def wall(row: dict[str, Any]) -> str:
    """Compression plus fine-tuning seconds of a row (evaluation not included)."""
    return f"{row.get('compress_s', 0) + row.get('refine_s', 0):.0f}"


def accuracy_header(tasks: list[str]) -> list[str]:
    """Per-task accuracy columns, plus their average with its standard error when there are several tasks."""
    return [f"{TASK_NAMES[t]} ↑" for t in tasks] + (["Avg ± SE ↑"] if len(tasks) > 1 else [])


def accuracy_cells(row: dict[str, Any], tasks: list[str]) -> list[str]:
    scores = row.get("tasks", {})
    cells = [fmt(accuracy(scores, t)) for t in tasks]
    if len(tasks) > 1:
        mean, err = average(scores, tasks), stderr(scores, tasks)
        cells.append(fmt(mean) if mean is None or err is None else f"{mean:.1f} ± {err:.1f}")
    return cells


def table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])


def rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start).replace(os.sep, "/")


# ----------------------------------------------------------------------------------------------- sections

def setup_section(first: dict[str, Any], lrs: list[float]) -> str:
    a = first["args"]
    tokens = a["train_samples"] * a["seq_len"]
    steps = a["epochs"] * a["train_samples"] // a["batch_size"]
    return (
        f"Model SmolLM2-135M-Instruct (the bundled GGUF, dequantised to float32); {first['device']}. WikiText-2 "
        f"test is split by rows: the first half ({first['eval_tokens']:,} tokens) is held out for perplexity "
        f"(context 1024, non-overlapping windows), the second half supplies {a['calib_samples']} x "
        f"{a['seq_len']} calibration tokens and the fine-tuning set: **{a['train_samples']} windows of "
        f"{a['seq_len']} tokens ({tokens:,} tokens), {a['epochs']} epochs, batch {a['batch_size']} = {steps} "
        f"optimizer steps, the same for every method**. Learning-rate search: "
        f"{', '.join(f'{lr:g}' for lr in lrs)} (the ends of the paper's range) for every method. SharVeT trains "
        f"its lambda/sigma vectors with eq. 13 (LM + distillation + feature + L2, the reference's weights); the "
        f"baselines train LoRA adapters (rank {a['lora_rank']}) on the same loss. Seeds fixed (0). Accuracy: "
        "lm-eval 0.4.13, 0-shot, full validation/test sets: PIQA from the shared data folder, COPA, WinoGrande, "
        "ARC-Easy and LAMBADA written by `sharvet fetch-data` (see \"Evaluation data\" above)."
        + "".join(f" {PPL_SETS[n]} perplexity: the first {k:,} tokens of its local evaluation file, same windows."
                  for n, k in first.get("extra_ppl_tokens", {}).items())
    )


def original_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run that scored the original model on the tasks (a stage split over runs scores it once)."""
    return next((run for run in runs if run.get("original_tasks")), runs[0])


def table2(runs: list[dict[str, Any]], best: dict, tasks: list[str]) -> str:
    first = original_run(runs)
    sets = ppl_sets(runs)
    header = ["Ratio", "Method", "lr", "realised ratio", "trainable", "WikiText-2 ↓",
              *[f"{PPL_SETS[n]} ↓" for n in sets], *TASK_NAMES.values(),
              f"Avg ({'+'.join(TASK_NAMES[t] for t in tasks)}) ↑", "wall s"]
    def cells(tasks_of: dict) -> list[str]:
        return [fmt(accuracy(tasks_of, t)) for t in TASK_NAMES] + [fmt(average(tasks_of, tasks))]
    original = {"ppl_untuned": first["original_ppl"], "extra_ppl": first.get("original_extra_ppl", {})}
    body = [["1.0", LABELS["original"], "-", "1.0", "-", *[fmt(final_ppl(original, n), 2) for n in ["wikitext2", *sets]],
             *cells(first.get("original_tasks", {})), "-"]]
    for ratio in sorted({r for r, _ in best}, reverse=True):
        for m in (m for m in TABLE2 if (ratio, m) in best):
            row = best[(ratio, m)]
            body.append([f"{ratio:g}", LABELS[m], f"{row['lr']:g}", f"{row['realised_ratio']:.4f}",
                         f"{row['trainable']:,}", *[fmt(final_ppl(row, n), 2) for n in ["wikitext2", *sets]],
                         *cells(row.get("tasks", {})), wall(row)])
    return table(header, body)


def lr_table(rows: list[dict[str, Any]], lrs: list[float], probe: list[dict[str, Any]] = ()) -> str:
    """Tuned WikiText-2 perplexity per method and learning rate, the search's and the probe's; the best in bold."""
    probe_lrs = sorted({r["lr"] for r in probe})
    plain = [r for r in [*rows, *probe] if not r["variants"] and "ppl_tuned" in r]
    keys = sorted({(r["ratio"], r["method"]) for r in plain}, key=lambda k: (-k[0], TABLE2.index(k[1])))
    body = []
    for ratio, m in keys:
        by_lr = {r["lr"]: r["ppl_tuned"] for r in plain if (r["ratio"], r["method"]) == (ratio, m)}
        top = min(by_lr.values())
        body.append([f"{ratio:g}", LABELS[m], *[f"**{fmt(v, 2)}**" if v == top else fmt(v, 2)
                                                for v in (by_lr.get(lr) for lr in [*lrs, *probe_lrs])]])
    return table(["Ratio", "Method", *[f"ppl, lr {lr:g}" for lr in lrs],
                  *[f"ppl, lr {lr:g} (probe)" for lr in probe_lrs]], body)


def probe_claims(rows: list[dict[str, Any]], probe: list[dict[str, Any]]) -> list[str]:
    """Table 2's WikiText-2 claim again, each method at its best learning rate of the search and the probe."""
    if not probe:
        return []
    best, top_lr = best_rows([*rows, *probe]), max(r["lr"] for r in probe)
    lines = []
    for ratio in sorted({r for r, _ in best}, reverse=True):
        ours, others = best.get((ratio, "sharvet")), {m: r for (q, m), r in best.items() if q == ratio and m != "sharvet"}
        if ours:
            lines += ppl_claim(ratio, f"WikiText-2, learning rate searched up to {top_lr:g} (probe)", ours, others,
                               with_lr=True)
    return lines


def table6(best: dict) -> str:
    body = [[f"{ratio:g}", NAMES[m], fmt(best[(ratio, m)]["ppl_untuned"], 1)]
            for ratio in sorted({r for r, _ in best}, reverse=True) for m in TABLE2 if (ratio, m) in best]
    return table(["Ratio", "Method", "WikiText-2 ppl, no fine-tuning ↓"], body)


def ablation_tables(base: dict[str, Any] | None, variants: dict[str, dict[str, Any]], tasks: list[str]) -> str:
    out = []
    for title, entries in ABLATIONS:
        body = []
        for v, what in entries:
            row = base if v == "" else variants.get(v)
            if row is None:
                continue
            tuned = fmt(row["ppl_tuned"], 1) if "ppl_tuned" in row else "-"
            body.append([v or "SharVeT", what, fmt(row["ppl_untuned"], 1), tuned, *accuracy_cells(row, tasks),
                         f"{row.get('trainable', 0):,}", wall(row)])
        out.append(f"**{title}** (ratio 0.5)\n\n" + table(
            ["Variant", "What changes", "ppl untuned", "ppl after refinement ↓", *accuracy_header(tasks),
             "trainable", "wall s"], body))
    return "\n\n".join(out)


def grouping_table(grouping: dict[str, Any]) -> str:
    body = [[s["label"], s["strategy"], str(s["k"]), *[fmt(s["pooled"][q], 3) for q in ("mean", "median", "min", "p5")],
             str(s["pooled"]["pairs"])] for s in grouping["strategies"]]
    return table(["Strategy", "grouping", "k", "mean S", "median S", "min S", "5th pct S", "pairs"], body)


def run_records(results_dir: Path) -> str:
    body = []
    for p in sorted(results_dir.glob("*.run.json")):
        r = json.loads(p.read_text())
        wall = "-" if r.get("wall_s") is None else f"{r['wall_s']:.0f}"
        note = f" ({r['note']})" if r.get("note") else ""
        body.append([p.name.removesuffix(".run.json"), r.get("gpu") or r.get("host", "?"), r["date"], wall,
                     f"`{r['command']}`{note}"])
    return table(["Run", "Machine", "Date", "Wall s", "Command"], body)


# ----------------------------------------------------------------------------------------------- claims

def verdict(ok: bool, ours: float | None = None, theirs: float | None = None) -> str:
    """holds / does not hold; perplexities closer than :data:`NOISE` are "within run-to-run noise"."""
    if ours is not None and theirs is not None and abs(ours - theirs) < NOISE * max(ours, theirs):
        return "**within run-to-run noise**"
    return "**holds**" if ok else "**does not hold**"


def ppl_claim(ratio: float, label: str, ours: dict[str, Any], others: dict[str, dict[str, Any]],
              name: str = "wikitext2", with_lr: bool = False) -> list[str]:
    """Table 2's claim on one perplexity set, from the rows of SharVeT and the baselines (no line when a method
    was not scored on it); ``with_lr`` names each side's learning rate (rows from several rates)."""
    mine, theirs = final_ppl(ours, name), {m: final_ppl(r, name) for m, r in others.items()}
    if mine is None or not theirs or None in theirs.values():
        return []
    rival = min(theirs, key=theirs.get)
    at = (lambda row: f" at lr {row['lr']:g}") if with_lr else (lambda row: "")
    return [f"- Table 2, ratio {ratio:g}, {label}: SharVeT ahead of every baseline - "
            f"{verdict(mine < theirs[rival], mine, theirs[rival])} (SharVeT {fmt(mine, 1)}{at(ours)}, "
            f"best baseline {LABELS[rival]} {fmt(theirs[rival], 1)}{at(others[rival])})."]


def claims(best: dict, tasks: list[str], base: dict | None, variants: dict, curves: dict, grouping: dict | None) -> str:
    lines = []
    for ratio in sorted({r for r, _ in best}, reverse=True):
        ours = best.get((ratio, "sharvet"))
        others = {m: best[(ratio, m)] for m in TABLE2 if m != "sharvet" and (ratio, m) in best}
        if not ours or not others:
            continue
        for name, label in (("wikitext2", "WikiText-2"), *PPL_SETS.items()):
            lines += ppl_claim(ratio, label, ours, others, name)
        accs = {m: average(r.get("tasks", {}), tasks) for m, r in others.items()}
        mine = average(ours.get("tasks", {}), tasks)
        if mine is not None and all(v is not None for v in accs.values()):
            top = max(accs, key=accs.get)
            err = stderr(ours.get("tasks", {}), tasks)
            close = err is not None and abs(mine - accs[top]) < 2 * err
            judged = f"**within two standard errors** (±{err:.1f} each)" if close else verdict(mine > accs[top])
            lines.append(f"- Table 2, ratio {ratio:g}, average accuracy ({'+'.join(TASK_NAMES[t] for t in tasks)}): "
                         f"SharVeT ahead - {judged} (SharVeT {fmt(mine)}, best baseline {LABELS[top]} {fmt(accs[top])}).")
        untuned = min(others, key=lambda m: others[m]["ppl_untuned"])
        lines.append(f"- Table 6, ratio {ratio:g}, no fine-tuning: SharVeT ahead - "
                     f"{verdict(ours['ppl_untuned'] < others[untuned]['ppl_untuned'], ours['ppl_untuned'], others[untuned]['ppl_untuned'])} (SharVeT "
                     f"{fmt(ours['ppl_untuned'], 1)}, best baseline {LABELS[untuned]} {fmt(others[untuned]['ppl_untuned'], 1)}).")
    if base:
        mine = base["ppl_tuned"]
        for title, entries in ABLATIONS:
            for v, what in entries[1:]:
                if v in variants:
                    theirs = variants[v].get("ppl_tuned", variants[v]["ppl_untuned"])
                    lines.append(f"- {title.split(':')[0]}: full SharVeT better than {v} ({what}) - "
                                 f"{verdict(mine < theirs, mine, theirs)} ({fmt(mine, 1)} vs {fmt(theirs, 1)}).")
    vec_label, lora_label = CURVES[0][1], CURVES[1][1]
    for ratio, finals in curves.items():
        if vec_label in finals and lora_label in finals:
            vec, lora = finals[vec_label], finals[lora_label]
            lines.append(f"- Figure 3, ratio {ratio:g}: on the same compressed model the vectors reach a lower LM loss "
                         f"than LoRA at equal steps - {verdict(vec < lora)} (mean of the last 8 steps: vectors "
                         f"{vec:.3f}, LoRA {lora:.3f}).")
    if grouping:
        pooled = {s["label"]: s["pooled"]["mean"] for s in grouping["strategies"]}
        ours, rest = pooled.get("SharVeT"), {k: v for k, v in pooled.items() if k != "SharVeT"}
        if ours is not None and rest:
            top = max(rest, key=rest.get)
            lines.append(f"- Figure 4: SharVeT's groups have the highest mean intra-group similarity - "
                         f"{verdict(ours > rest[top])} ({ours:.3f} vs {top} {rest[top]:.3f}).")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- figure 3

#: Figure 3's curves: (method, variant) of a row and its legend
CURVES = ((("sharvet", ()), "SharVeT model, lambda/sigma vectors"), (("sharvet", ("LoRA",)), "SharVeT model, LoRA r=8"),
          (("basis-sharing", ()), "Basis Sharing model, LoRA r=8"),
          (("sharvet", ("M",)), "SharVeT model, vectors, loss weights matched (M)"))


def history_path(results_dir: Path, row: dict[str, Any]) -> Path:
    return results_dir.joinpath(*Path(row["history"]).parts[-3:])  # runs-<...>/r<ratio>-<row>/history.jsonl


def figure3(results_dir: Path, rows: list[dict[str, Any]], lr: float, figures_dir: Path) -> dict[float, dict[str, float]]:
    """LM-loss curves of the vectors vs LoRA (same data, steps and lr) per ratio; returns the final losses."""
    finals = {}
    for ratio in sorted({r["ratio"] for r in rows}, reverse=True):
        runs = {}
        for (m, variants), label in CURVES:
            row = tuned_row(rows, ratio, m, variants, lr)
            if row and history_path(results_dir, row).exists():
                runs[label] = history_path(results_dir, row)
        if len(runs) >= 2:
            plot_comparison(runs, figures_dir / f"figure3_loss_r{ratio:g}.png", term="lm")
            finals[ratio] = {label: last_lm_loss(path) for label, path in runs.items()}
    return finals


def refinement_table(rows: list[dict[str, Any]], lr: float, tasks: list[str]) -> str:
    """SharVeT's model refined by its vectors or by LoRA, beside Basis Sharing + LoRA (same data and lr)."""
    body = []
    for ratio in sorted({r["ratio"] for r in rows}, reverse=True):
        for (m, variants), label in CURVES:
            row = tuned_row(rows, ratio, m, variants, lr)
            if row:
                body.append([f"{ratio:g}", label, f"{row['trainable']:,}", fmt(row["ppl_untuned"], 1),
                             fmt(row["ppl_tuned"], 2), *accuracy_cells(row, tasks)])
    return table(["Ratio", "Model, refinement", "trainable", "ppl untuned", "ppl tuned ↓", *accuracy_header(tasks)],
                 body)


# ----------------------------------------------------------------------------------------------- document

def render_study(results_dir: Path, figures_dir: Path, doc_dir: Path, discussion: Path) -> str:
    """The whole study section (markdown) of ``docs/results.md``."""
    runs = load_runs(results_dir, "methods-lr")
    if not runs:
        raise SystemExit(f"no methods-lr*.json under {results_dir}: run the study first")
    rows = rows_of(runs)
    lrs = sorted({r["lr"] for r in rows})
    best = best_rows(rows)
    probe = rows_of(load_runs(results_dir, "lr-probe"))
    variant_rows = rows_of(load_runs(results_dir, "variants"))
    variants = {r["variants"][0]: r for r in variant_rows if len(r["variants"]) == 1}
    base = tuned_row(rows, 0.5, "sharvet", (), variant_rows[0]["lr"]) if variant_rows else None
    tasks = tasks_with_data(rows) or ["piqa"]
    variant_tasks = tasks_with_data(variant_rows) or ["piqa"]
    missing = [PPL_SETS[n] for n in ppl_sets(runs) if all(final_ppl(r, n) is None for r in best.values())]
    missing += [TASK_NAMES[t] for t in TASK_NAMES if t not in tasks]
    not_run = (f"{', '.join(missing)}: **n/a = not run**: no copy of the data is reachable from these machines "
               "(no hub access; see \"Evaluation data\" above). ") if missing else ""
    grouping_path = results_dir / "grouping.json"
    grouping = json.loads(grouping_path.read_text()) if grouping_path.exists() else None
    extra = rows_of(load_runs(results_dir, "sharvet-lora") + load_runs(results_dir, "sharvet-matched"))
    fig3_lr = extra[0]["lr"] if extra else max(lrs)
    curves = figure3(results_dir, rows + extra, fig3_lr, figures_dir)
    fig = rel(figures_dir, doc_dir)
    with_runs = next(run for run in runs if run["args"]["lr"] == max(lrs))
    parts = [
        "## The study: the paper's experiments on SmolLM2-135M (issue 6)",
        "Generated by `python benchmarks/study_smollm2.py render` from `results/study/`; the runs by "
        "`python benchmarks/study_smollm2.py run --device cuda --data-dir .data` (stages listed below), where `.data` "
        "is the shared data folder plus the task files of `sharvet fetch-data` (\"Evaluation data\" above).",
        setup_section(with_runs, lrs),
        "### Table 2: methods at the same budget, after fine-tuning",
        table2(runs, best, tasks),
        f"{not_run}`trainable` counts the parameters fine-tuned: SharVeT's vectors lie inside the compression budget, "
        "the baselines' LoRA adapters come on top of it. `wall s`: compression + fine-tuning on the GPU, evaluation "
        "excluded. FiPS is reported beside the paper's baselines.",
        "Learning-rate search (held-out WikiText-2 perplexity after fine-tuning; Table 2 takes the best of the "
        "search's columns" + (", which lie at the ends of the paper's range. The probe columns are the same runs at "
        "higher rates, perplexity only, and are not used for Table 2 (they carry no accuracies); they show whether "
        "the search's edge holds a method back" if probe else "") + "):",
        lr_table(rows, lrs, probe),
        "### Table 6: no fine-tuning",
        table6(best),
        "### Ablations (Tables 3, 7, 8, 9)",
        "" if variant_tasks == tasks else f"The ablation runs carry {', '.join(TASK_NAMES[t] for t in variant_tasks)} "
        "only: they ran before the other tasks' data was on these machines.",
        ablation_tables(base, variants, variant_tasks) if base else "not run yet",
        "`wall s`: compression + fine-tuning; a run that shared the GPU with others (its note under \"Runs\" "
        "says so) includes their contention.",
        "### Figures",
        f"Figure 1 (joint similarity per module type): ![Figure 1]({fig}/similarity_smollm2.png)",
        f"Figure 3 (LM loss on the training batches, lr {fig3_lr:g}, same data and steps): SharVeT's compressed model "
        "refined by its vectors and by LoRA, Basis Sharing's model with LoRA, and SharVeT's vectors with eq. 13's "
        "weights matched to the LM loss's scale (variant M, the paper's rule for the weights; the reference's "
        "fixed weights elsewhere):",
        *[f"![Figure 3, ratio {r:g}]({fig}/figure3_loss_r{r:g}.png)" for r in curves],
        refinement_table(rows + extra, fig3_lr, tasks),
        f"Figure 4 (intra-group joint similarity S by grouping strategy): ![Figure 4]({fig}/figure4_grouping.png)",
        grouping_table(grouping) if grouping else "",
        "### The paper's claims on this model (computed from the tables above)",
        "\n".join([claims(best, tasks, base, variants, curves, grouping), *probe_claims(rows, probe)]),
        discussion.read_text().strip() if discussion.exists() else "",
        "### Runs",
        run_records(results_dir),
    ]
    return "\n\n".join(p for p in parts if p)
