"""The paper's claims checked on the study's tables: each line says what is claimed, whether it holds here, and
the numbers it was judged on."""
from __future__ import annotations

from sharvet.evaluation.rows import ResultRow
from sharvet.study.tables import (
    ABLATIONS, CURVES, LABELS, PPL_SETS, TABLE2, TASK_NAMES, average, best_rows, fmt, stderr,
)

#: relative change below which two perplexities are called equal: identical GPU runs of the usable models
#: differed by up to 1.6% (SharVeT 0.7: 96.81 / 97.36 / 96.92; Basis Sharing 0.5: 137.07 / 139.29), so smaller
#: gaps are not findings
NOISE = 0.016


def verdict(ok: bool, ours: float | None = None, theirs: float | None = None) -> str:
    """holds / does not hold; perplexities closer than :data:`NOISE` are "within run-to-run noise"."""
    if ours is not None and theirs is not None and abs(ours - theirs) < NOISE * max(ours, theirs):
        return "**within run-to-run noise**"
    return "**holds**" if ok else "**does not hold**"


def ppl_claim(ratio: float, label: str, ours: ResultRow, others: dict[str, ResultRow], name: str = "wikitext2",
              with_lr: bool = False) -> list[str]:
    """Table 2's claim on one perplexity set, from the rows of SharVeT and the baselines (no line when a method
    was not scored on it); ``with_lr`` names each side's learning rate (rows from several rates)."""
    mine, theirs = ours.ppl(name), {m: r.ppl(name) for m, r in others.items()}
    if mine is None or not theirs or None in theirs.values():
        return []
    rival = min(theirs, key=theirs.get)
    at = (lambda row: f" at lr {row.lr:g}") if with_lr else (lambda row: "")
    return [f"- Table 2, ratio {ratio:g}, {label}: SharVeT ahead of every baseline - "
            f"{verdict(mine < theirs[rival], mine, theirs[rival])} (SharVeT {fmt(mine, 1)}{at(ours)}, "
            f"best baseline {LABELS[rival]} {fmt(theirs[rival], 1)}{at(others[rival])})."]


def probe_claims(rows: list[ResultRow], probe: list[ResultRow]) -> list[str]:
    """Table 2's WikiText-2 claim again, each method at its best learning rate of the search and the probe."""
    if not probe:
        return []
    best, top_lr = best_rows([*rows, *probe]), max(r.lr for r in probe)
    lines = []
    for ratio in sorted({r for r, _ in best}, reverse=True):
        ours, others = best.get((ratio, "sharvet")), {m: r for (q, m), r in best.items() if q == ratio and m != "sharvet"}
        if ours:
            lines += ppl_claim(ratio, f"WikiText-2, learning rate searched up to {top_lr:g} (probe)", ours, others,
                               with_lr=True)
    return lines


def claims(best: dict[tuple[float, str], ResultRow], base: ResultRow | None, variants: dict[str, ResultRow],
           curves: dict[float, dict[str, float]], grouping: dict | None) -> str:
    lines = []
    for ratio in sorted({r for r, _ in best}, reverse=True):
        ours = best.get((ratio, "sharvet"))
        others = {m: best[(ratio, m)] for m in TABLE2 if m != "sharvet" and (ratio, m) in best}
        if not ours or not others:
            continue
        for name, label in (("wikitext2", "WikiText-2"), *PPL_SETS.items()):
            lines += ppl_claim(ratio, label, ours, others, name)
        accs = {m: average(r) for m, r in others.items()}
        mine = average(ours)
        if mine is not None and all(v is not None for v in accs.values()):
            top = max(accs, key=accs.get)
            err = stderr(ours)
            close = err is not None and abs(mine - accs[top]) < 2 * err
            judged = f"**within two standard errors** (±{err:.1f} each)" if close else verdict(mine > accs[top])
            lines.append(f"- Table 2, ratio {ratio:g}, average accuracy ({'+'.join(TASK_NAMES.values())}): "
                         f"SharVeT ahead - {judged} (SharVeT {fmt(mine)}, best baseline {LABELS[top]} {fmt(accs[top])}).")
        untuned = min(others, key=lambda m: others[m].untuned_ppl())
        mine_untuned, theirs_untuned = ours.untuned_ppl(), others[untuned].untuned_ppl()
        lines.append(f"- Table 6, ratio {ratio:g}, no fine-tuning: SharVeT ahead - "
                     f"{verdict(mine_untuned < theirs_untuned, mine_untuned, theirs_untuned)} (SharVeT "
                     f"{fmt(mine_untuned, 1)}, best baseline {LABELS[untuned]} {fmt(theirs_untuned, 1)}).")
    if base:
        mine = base.ppl()
        for title, entries in ABLATIONS:
            for v, what in entries[1:]:
                if v in variants:
                    theirs = variants[v].ppl()
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
        ours_s, rest = pooled.get("SharVeT"), {k: v for k, v in pooled.items() if k != "SharVeT"}
        if ours_s is not None and rest:
            top = max(rest, key=rest.get)
            lines.append(f"- Figure 4: SharVeT's groups have the highest mean intra-group similarity - "
                         f"{verdict(ours_s > rest[top])} ({ours_s:.3f} vs {top} {rest[top]:.3f}).")
    return "\n".join(lines)
