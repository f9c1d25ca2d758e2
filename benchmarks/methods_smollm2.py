"""Benchmark: every method and SharVeT variant on SmolLM2-135M at the same budget (issues 4 and 6).

Each row compresses a copy of the original with one ``--method`` preset (and ablation ``--variant``s),
prints the budget accountant's realised ratio, the WikiText-2 perplexity without fine-tuning, then
fine-tunes with the method's own refinement (vectors for SharVeT, LoRA for the baselines) on the same
token windows, steps and learning rate, and evaluates again. WikiText-2 *test* is split by rows as in
``refine_smollm2.py``: the first half is held out for perplexity, the second half supplies calibration
and fine-tuning windows.

    python benchmarks/methods_smollm2.py --data-dir ../shared/data --device cuda \
        --ratios 0.5,0.7 --rows sharvet,basis-sharing,seq,cycle,cycle-rev,fips --json results/methods.json
    python benchmarks/methods_smollm2.py ... --ratios 0.5 --rows sharvet:R,sharvet:I,sharvet:L,sharvet:C

A row is ``method`` or ``method:VARIANT[+VARIANT]``.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from refine_smollm2 import split_corpus

from sharvet.calibration import collect_stats
from sharvet.config import CompressionConfig
from sharvet.data import pack_sequences
from sharvet.evaluation.perplexity import perplexity
from sharvet.evaluation.results import ppl_tokens
from sharvet.evaluation.tasks import run_tasks
from sharvet.loading import load_original
from sharvet.methods import method, refine_overrides
from sharvet.models import adapter_for
from sharvet.pipeline import compress
from sharvet.refinement import RefineConfig, finalize, parameter_summary, refine

ALL_ROWS = "sharvet,basis-sharing,seq,cycle,cycle-rev,fips"


def parse_row(text: str) -> tuple[str, tuple[str, ...]]:
    name, _, variants = text.partition(":")
    return name, tuple(v for v in variants.split("+") if v)


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cuda")
    p.add_argument("--ratios", default="0.7,0.5")
    p.add_argument("--rows", default=ALL_ROWS)
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--train-samples", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--eval-tokens", type=int, default=None, help="evaluate on the first N held-out tokens only")
    p.add_argument("--extra-ppl", default="c4,ptb",
                   help="further perplexity sets scored on the original and every final model, each where its data "
                        "is in --data-dir (a set without local data is left out, never downloaded); '' for none")
    p.add_argument("--extra-ppl-tokens", type=int, default=256 * 1024,
                   help="score the first N tokens of each further set (256 windows of 1024 by default)")
    p.add_argument("--no-finetune", action="store_true", help="only the untuned rows (paper Table 6)")
    p.add_argument("--tasks", default=None,
                   help="comma list of lm-eval tasks scored on each final model (e.g. default, piqa); needs lm_eval")
    p.add_argument("--task-batch-size", type=int, default=32)
    p.add_argument("--skip-original-tasks", action="store_true",
                   help="do not score the original model (a stage split over runs scores it once)")
    p.add_argument("--task-limit", type=int, default=None, help="score only the first N documents (smoke runs)")
    p.add_argument("--out-dir", default="outputs/methods-bench")
    p.add_argument("--json", default=None)
    return p.parse_args()


def main() -> None:
    a = arguments()
    teacher = load_original(a.model, device=a.device)
    eval_ids, train_1d = split_corpus(teacher.tokenizer, a.data_dir)
    eval_ids = eval_ids[: a.eval_tokens]
    calib_ids = pack_sequences(train_1d, a.calib_samples, a.seq_len, 0)
    stats = collect_stats(adapter_for(teacher.model), calib_ids, device=a.device, progress=False)
    train_ids = pack_sequences(train_1d, a.train_samples, a.seq_len, 1)

    def ppl_on(model, ids: torch.Tensor) -> float:
        return round(perplexity(model, ids, context=1024, batch_size=8, device=a.device, progress=False).ppl, 3)

    def ppl(model) -> float:
        return ppl_on(model, eval_ids)

    extra, not_run = ppl_tokens([n for n in a.extra_ppl.split(",") if n], teacher.tokenizer,
                                Path(a.data_dir) if a.data_dir else None, True, a.extra_ppl_tokens)
    for name, why in not_run.items():
        print(f"{name}: not scored ({why['reason']})", flush=True)

    def extra_ppl(model) -> dict[str, float]:
        """Perplexity on the further sets (C4, PTB) whose data is local."""
        return {name: ppl_on(model, ids) for name, ids in extra.items()}

    def tasks(model) -> dict:
        """lm-eval accuracies of ``model`` (LoRA layers active); empty without ``--tasks``."""
        if not a.tasks:
            return {}
        results = run_tasks(model, teacher.tokenizer, a.tasks.split(","), data_dir=a.data_dir,
                            batch_size=a.task_batch_size, limit=a.task_limit)
        return {name: r.to_dict() for name, r in results.items()}

    start = time.perf_counter()
    res = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name() if a.device == "cuda" else a.device,
           "eval_tokens": len(eval_ids), "args": vars(a), "original_ppl": ppl(teacher.model),
           "extra_ppl_tokens": {name: len(ids) for name, ids in extra.items()},
           "original_extra_ppl": extra_ppl(teacher.model),
           "original_tasks": {} if a.skip_original_tasks else tasks(teacher.model), "rows": []}
    print("original", res["original_ppl"], headlines(res["original_tasks"]), flush=True)
    for ratio in map(float, a.ratios.split(",")):
        for row_text in a.rows.split(","):
            row = run_row(a, row_text, ratio, teacher.model, stats, calib_ids, train_ids, Scores(ppl, extra_ppl, tasks))
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
            if a.json:  # after every row: a run cut short keeps what it measured
                Path(a.json).parent.mkdir(parents=True, exist_ok=True)
                Path(a.json).write_text(json.dumps(res, indent=2, default=str))
    res["wall_s"] = round(time.perf_counter() - start, 1)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=str))
    print_table(res)


def headlines(task_results: dict) -> dict[str, float | None]:
    return {name: r.get("headline") for name, r in task_results.items()}


class Scores(NamedTuple):
    """What is measured on a model: held-out WikiText-2 perplexity, the further sets, lm-eval tasks."""

    ppl: Callable[[Any], float]
    extra_ppl: Callable[[Any], dict[str, float]]
    tasks: Callable[[Any], dict]


def run_row(a, row_text, ratio, teacher, stats, calib_ids, train_ids, score: Scores) -> dict:
    name, variants = parse_row(row_text)
    cfg = CompressionConfig.preset(name, variants, ratio=ratio)
    student = copy.deepcopy(teacher)
    t0 = time.perf_counter()
    result = compress(student, stats, cfg, calibration_ids=calib_ids, device=a.device, progress=False)
    row = {"row": row_text, "method": name, "variants": list(variants), "ratio": ratio,
           "realised_ratio": round(result.report.linear_ratio, 5), "model_ratio": round(result.report.model_ratio, 5),
           "compress_s": round(time.perf_counter() - t0, 1), "ppl_untuned": score.ppl(student)}
    tuning = refine_overrides(variants)
    if a.no_finetune or tuning.pop("refine", True) is False:
        row.update({"extra_ppl": score.extra_ppl(student), "tasks": score.tasks(student)})
        return row
    mode = tuning.get("mode", method(name).refine_mode)
    rcfg = RefineConfig(mode=mode, lr=a.lr, epochs=a.epochs, batch_size=a.batch_size, lora_rank=a.lora_rank,
                        lm_only=tuning.get("lm_only", False), match_loss_scales=tuning.get("match_loss_scales", False),
                        seed=0, progress=False,
                        output_dir=str(Path(a.out_dir) / f"r{ratio}-{row_text.replace(':', '-')}"))
    t0 = time.perf_counter()
    out = refine(student, teacher, train_ids, rcfg)
    summary = parameter_summary(out.model)
    # LoRA: peft injects its layers into the transformers model in place, so the unwrapped model runs them
    model = out.model.get_base_model() if mode == "lora" else finalize(out.model, out.record())
    row.update({"refine_mode": mode, "lm_only": rcfg.lm_only, "lr": a.lr, "steps": out.steps,
                "refine_s": round(time.perf_counter() - t0, 1), "trainable": summary.trainable,
                "total_with_adapters": summary.total, "ppl_tuned": score.ppl(model), "final_losses": out.final,
                "loss_weights": out.loss_weights, "history": f"{rcfg.output_dir}/history.jsonl",
                "extra_ppl": score.extra_ppl(model), "tasks": score.tasks(model)})
    return row


def print_table(res: dict) -> None:
    print(f"original WikiText-2 (held-out half) perplexity {res['original_ppl']}, further sets {res['original_extra_ppl']}")
    print("| ratio | row | realised | untuned ppl | tuned ppl | further sets | refinement | trainable | tasks |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        print(f"| {r['ratio']} | {r['row']} | {r['realised_ratio']:.4f} | {r['ppl_untuned']} | "
              f"{r.get('ppl_tuned', '-')} | {r.get('extra_ppl', {})} | {r.get('refine_mode', '-')} | "
              f"{r.get('trainable', 0):,} | {headlines(r.get('tasks', {}))} |")


if __name__ == "__main__":
    main()
