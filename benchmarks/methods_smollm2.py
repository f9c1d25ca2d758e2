"""Benchmark: every method and SharVeT variant on SmolLM2-135M at the same budget (issues 4 and 6).

Each row compresses a copy of the original with one ``--method`` preset (and ablation ``--variant``s),
prints the budget accountant's realised ratio, the WikiText-2 perplexity without fine-tuning, then
fine-tunes with the method's own refinement (vectors for SharVeT, LoRA for the baselines) on the same
token windows, steps and learning rate, and evaluates again (:func:`sharvet.experiment.run_row`). WikiText-2
*test* is split by rows (:func:`sharvet.experiment.held_out_split`): the first half is held out for perplexity,
the second half supplies calibration and fine-tuning windows. The JSON is a
:class:`sharvet.evaluation.rows.RunRecord`.

    python benchmarks/methods_smollm2.py --data-dir ../shared/data --device cuda \
        --ratios 0.5,0.7 --rows sharvet,basis-sharing,seq,cycle,cycle-rev,fips --json results/methods.json
    python benchmarks/methods_smollm2.py ... --ratios 0.5 --rows sharvet:R,sharvet:I,sharvet:L,sharvet:C

A row is ``method`` or ``method:VARIANT[+VARIANT]``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from sharvet.calibration import collect_stats
from sharvet.data import pack_sequences
from sharvet.evaluation.results import ppl_tokens
from sharvet.evaluation.rows import ResultRow, RunRecord, write_run
from sharvet.experiment import RowSpec, Scoring, held_out_split, run_row
from sharvet.loading import load_original
from sharvet.models import adapter_for
from sharvet.refinement import RefineConfig

ALL_ROWS = "sharvet,basis-sharing,seq,cycle,cycle-rev,fips"


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
    command = shlex.join([sys.executable, *sys.argv])
    teacher = load_original(a.model, device=a.device)
    eval_ids, train_1d = held_out_split(teacher.tokenizer, a.data_dir)
    eval_ids = eval_ids[: a.eval_tokens]
    calib_ids = pack_sequences(train_1d, a.calib_samples, a.seq_len, 0)
    stats = collect_stats(adapter_for(teacher.model), calib_ids, device=a.device, progress=False)
    train_ids = pack_sequences(train_1d, a.train_samples, a.seq_len, 1)
    extra, not_run = ppl_tokens([n for n in a.extra_ppl.split(",") if n], teacher.tokenizer,
                                Path(a.data_dir) if a.data_dir else None, True, a.extra_ppl_tokens)
    for name, why in not_run.items():
        print(f"{name}: not scored ({why['reason']})", flush=True)
    scoring = Scoring({"wikitext2": eval_ids, **extra}, teacher.tokenizer, a.device,
                      tasks=a.tasks.split(",") if a.tasks else (), data_dir=a.data_dir,
                      task_batch_size=a.task_batch_size, task_limit=a.task_limit)
    start = time.perf_counter()
    run = RunRecord([], scoring.original(teacher.model, tasks=not a.skip_original_tasks), settings=vars(a),
                    date=time.strftime("%Y-%m-%d"), eval_tokens=len(eval_ids),
                    device=torch.cuda.get_device_name() if a.device == "cuda" else a.device,
                    ppl_tokens={name: len(ids) for name, ids in extra.items()})
    print("original", run.original.perplexity, headlines(run.original), flush=True)
    for ratio in map(float, a.ratios.split(",")):
        for row_text in a.rows.split(","):
            spec = RowSpec.parse(row_text, ratio)
            base = None if a.no_finetune else RefineConfig(
                lr=a.lr, epochs=a.epochs, batch_size=a.batch_size, lora_rank=a.lora_rank, seed=0, progress=False,
                output_dir=str(Path(a.out_dir) / f"r{ratio}-{row_text.replace(':', '-')}"))
            row = run_row(spec, teacher.model, stats, scoring, calibration_ids=calib_ids, train_ids=train_ids,
                          refine_base=base, device=a.device)
            row.command = command
            run.rows.append(row)
            print(json.dumps(row.to_dict()), flush=True)
            if a.json:  # after every row: a run cut short keeps what it measured
                write_run(run, a.json)
    run.wall_s = round(time.perf_counter() - start, 1)
    if a.json:
        write_run(run, a.json)
    print_table(run)


def headlines(row: ResultRow) -> dict[str, float | None]:
    return {name: row.accuracy(name) for name in row.tasks}


def print_table(run: RunRecord) -> None:
    print(f"original WikiText-2 (held-out half) perplexity {run.original.perplexity}")
    print("| ratio | row | realised | untuned ppl | final ppl | further sets | refinement | trainable | tasks |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in run.rows:
        further = {k: v for k, v in r.perplexity.items() if k != "wikitext2"}
        print(f"| {r.ratio} | {r.label} | {r.realised_ratio:.4f} | {r.untuned_ppl()} | {r.ppl()} | {further} | "
              f"{r.refine_mode or '-'} | {r.trainable or 0:,} | {headlines(r)} |")


if __name__ == "__main__":
    main()
