"""Benchmark (issue 15): is the compressed model good? SharVeT's default refinement against the LoRA baselines.

Every row compresses the bundled SmolLM2-135M with one method, refines it with the refinement flags of
``sharvet compress --refine`` (parsed by the CLI's own parser, so a row without extra flags runs exactly the
command-line defaults), and is scored on held-out text: WikiText-2 *test* and the held-out half of the C4
subset (``sharvet.training_data``; fine-tuning reads WikiText-2 *validation* and the other C4 half).

    python benchmarks/quality_smollm2.py run --model smol.gguf --data-dir DATA --device cuda \
        --rows sharvet@0.7,basis-sharing@0.7,svd@0.7 --json results/quality/run.json
    python benchmarks/quality_smollm2.py throughput --model smol.gguf --data-dir DATA --device cuda --variants 16,32 --profile
    python benchmarks/quality_smollm2.py summary results/quality/run-*.json --out results/quality/summary.json

Rows are ``NAME@RATIO``: ``sharvet`` (its default refinement), ``sharvet-reference`` (``--refine-preset
reference``), ``basis-sharing`` (+ LoRA, adapters on top of the budget), ``svd`` (per-layer whitened SVD,
``--method basis-sharing --k 30``, + LoRA), and the rows beyond the paper listed in ``ROWS`` (``sharvet-plus``,
the default method; ``*-factors``: V refined; ``*-in-budget``: LoRA inside the ratio). ``--refine-flags`` are
added to every row (same data, steps and search for all; a row whose method trains another number of epochs by
default gets the default method's ``--epochs``, written into its command); every row of a run is calibrated on
``--calib-data`` (default: the default method's, ``wikitext2+c4``), and a row's recorded command carries
``--calib-data`` where that differs from its method's own default. A row of the default method (``sharvet-plus``)
is marked ``default`` when it ran what ``sharvet compress --refine`` runs today: its own calibration, flags that
only restate defaults, and the recorded epochs, rate, batch and data of today's defaults (``summary`` re-decides
this for every record).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch

from sharvet.accounting import lora_share, module_shapes
from sharvet.api import DEFAULT_CACHE, CalibrationSpec, calibration_ids
from sharvet.calibration import collect_stats
from sharvet.evaluation.perplexity import perplexity
from sharvet.evaluation.results import ppl_tokens
from sharvet.loading import load_original
from sharvet.methods import DEFAULT_METHOD, method
from sharvet.models import adapter_for
from sharvet.config import CompressionConfig
from sharvet.experiment import refined_model
from sharvet.pipeline import compress
from sharvet.profiling import lines, profiler, top_operations
from sharvet.refinement import add_refine_arguments, refine, refine_config_from_args
from sharvet.training_data import training_ids

IN_BUDGET = "lora_in_budget"
#: row name -> (compression method, explicit compression fields, extra refinement flags)
ROWS = {
    "sharvet": ("sharvet", {}, []),
    "sharvet-reference": ("sharvet", {}, ["--refine-preset", "reference"]),
    "sharvet-lr3e-3": ("sharvet", {}, ["--lr", "3e-3"]),
    "basis-sharing": ("basis-sharing", {}, []),
    "svd": ("basis-sharing", {"k": 30}, []),
    # beyond the paper (issue 15): spectrum allocation, V trained too ("factors", nothing added to the budget)
    "sharvet-plus": ("sharvet-plus", {}, []),
    "sharvet-plus-rel1e-2": ("sharvet-plus", {}, ["--lr-matrices", "1e-2"]),
    "sharvet-plus-rel1e-3": ("sharvet-plus", {}, ["--lr-matrices", "1e-3"]),
    "sharvet-all": ("sharvet-plus", {}, ["--refine-mode", "all"]),  # the shared bases trained too
    # ... at a smaller relative rate than V's (a step of a basis moves every layer of its group)
    "sharvet-all-b1e-3": ("sharvet-plus", {}, ["--refine-mode", "all", "--lr-bases", "1e-3"]),
    "sharvet-all-b3e-4": ("sharvet-plus", {}, ["--refine-mode", "all", "--lr-bases", "3e-4"]),
    "sharvet-all-b1e-4": ("sharvet-plus", {}, ["--refine-mode", "all", "--lr-bases", "1e-4"]),
    "sharvet-plus-balanced": ("sharvet-plus", {"grouping": "spectral-balanced"}, []),  # groups of equal size
    # the LoRA baselines with their adapters counted inside the ratio (compressed to ratio - LoRA's share)
    "basis-sharing-in-budget": ("basis-sharing", {IN_BUDGET: True}, []),
    "svd-in-budget": ("basis-sharing", {"k": 30, IN_BUDGET: True}, []),
    "sharvet-spectrum": ("sharvet", {"allocation": "spectrum", "mu": 0.5}, []),
    "sharvet-spectrum-mu0": ("sharvet", {"allocation": "spectrum", "mu": 0.0}, []),
    # (rows "sharvet-factors*" of the 2026-11-29 runs trained V at an absolute rate, since replaced by sharvet-plus)
    "sharvet-spectrum-factors": ("sharvet", {"allocation": "spectrum", "mu": 0.5}, ["--refine-mode", "factors"]),
    "basis-sharing-factors": ("basis-sharing", {}, ["--refine-mode", "factors"]),
    "svd-factors": ("basis-sharing", {"k": 30}, ["--refine-mode", "factors"]),
}
TASKS = ("copa", "piqa", "arc_easy", "winogrande", "lambada")


def _refine_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--seed", type=int, default=0)
    add_refine_arguments(p)
    return p


def _setup(a: argparse.Namespace):
    teacher = load_original(a.model, device=a.device)
    spec = CalibrationSpec(a.calib_data, data_dir=a.data_dir, samples=a.calib_samples)  # the CLI's defaults
    calib = calibration_ids(teacher, spec, seed=0)
    stats = collect_stats(adapter_for(teacher.model), calib, device=a.device, progress=False)
    return teacher, calib, stats


def _compressed(teacher, stats, calib, name: str, ratio: float, device: str):
    meth, fields, _ = ROWS[name]
    fields = dict(fields)
    if fields.pop(IN_BUDGET, False):  # LoRA r=8 (the default) on every compressed module, inside the ratio
        ratio -= lora_share(module_shapes(adapter_for(teacher.model)), 8)
    student = copy.deepcopy(teacher.model)
    cfg = CompressionConfig.preset(meth, (), ratio=ratio, **fields)
    result = compress(student, stats, cfg, calibration_ids=calib, device=device, progress=False)
    return student, result.report, round(ratio, 5)


def _teacher_bf16(teacher):
    """A bf16 copy of the teacher (the original scores the rows in float32)."""
    return copy.deepcopy(teacher.model).bfloat16()


def _in_bf16(student, teacher):
    """The student and a copy of the teacher in bf16: frozen weights and activations in bf16 (the refinement keeps
    the trained tensors in float32 meanwhile)."""
    return student.bfloat16(), _teacher_bf16(teacher)


def _refined(a, teacher, student, meth: str, flags: list[str], out_dir: str):
    args = _refine_parser().parse_args(flags + ["--refine-output", out_dir])
    args.device = a.device
    cfg = refine_config_from_args(args, method=method(meth))
    t0 = time.perf_counter()
    ids = training_ids(args.train_data, teacher.tokenizer, args.train_samples, args.train_seq_len, cfg.seed,
                       data_dir=a.data_dir, teacher=teacher.model, teacher_id="SmolLM2-135M-Instruct",
                       cache_dir=DEFAULT_CACHE)
    data_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    student, teacher_model = _in_bf16(student, teacher) if a.train_dtype == "bfloat16" else (student, teacher.model)
    out = refine(student, teacher_model, ids, cfg)
    refine_s = time.perf_counter() - t0
    # scored in float32 like every row (a bf16 run keeps bf16 values); .to, since transformers' .float() refuses
    # a GGUF-loaded model (is_quantized)
    model = refined_model(out).to(torch.float32)
    info = {"refine_mode": cfg.mode, "preset": cfg.preset, "lr": cfg.learning_rate(), "steps": out.steps,
            "train_data": args.train_data, "train_tokens": int(ids.numel()) * cfg.epochs,
            "distinct_train_sequences": int(ids.shape[0]), "epochs": cfg.epochs, "batch_size": cfg.batch_size,
            "tokens_per_s": out.tokens_per_s, "data_s": round(data_s, 1), "refine_s": round(refine_s, 1),
            "trainable": out.parameters.trainable, "loss_weights": out.loss_weights, "final_losses": out.final,
            "train_dtype": a.train_dtype}
    return model, info


def _scores(a, model, tokenizer, sets: dict[str, torch.Tensor], with_tasks: bool) -> dict:
    res = {f"{k}_ppl": round(perplexity(model, ids, context=1024, batch_size=16, device=a.device, progress=False).ppl, 3)
           for k, ids in sets.items()}
    if with_tasks:
        from sharvet.evaluation.task_runner import run_tasks

        results = run_tasks(model, tokenizer, list(TASKS), data_dir=a.data_dir, batch_size=128)
        res["tasks"] = {n: r.to_dict() for n, r in results.items()}
        heads = [r.to_dict().get("headline") for r in results.values()]
        res["avg_acc"] = round(100 * sum(heads) / len(heads), 2) if all(h is not None for h in heads) else None
    return res


def cmd_run(a: argparse.Namespace) -> None:
    teacher, calib, stats = _setup(a)
    names = [n for n in a.ppl.split(",") if n]
    sets, not_run = ppl_tokens(names, teacher.tokenizer, Path(a.data_dir), True, a.max_eval_tokens)
    if not_run:
        raise SystemExit(f"perplexity data missing: {not_run}")
    extra = shlex.split(a.refine_flags)
    task_rows = set(a.task_rows.split(",")) if a.task_rows else set()
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": torch.cuda.get_device_name()
           if a.device == "cuda" else a.device, "argv": sys.argv, "eval_tokens": {k: len(v) for k, v in sets.items()},
           "rows": []}
    if a.original:
        res["original"] = _scores(a, teacher.model, teacher.tokenizer, sets, "original" in task_rows)
        print("original", json.dumps(res["original"]), flush=True)
    for row in a.rows.split(","):
        name, _, ratio = row.partition("@")
        meth, fields, flags = ROWS[name]
        flags = flags + _same_epochs(meth, flags + extra)
        t0 = time.perf_counter()
        student, report, compress_ratio = _compressed(teacher, stats, calib, name, float(ratio), a.device)
        compress_s = time.perf_counter() - t0
        model, info = _refined(a, teacher, student, meth, flags + extra, f"{a.out_dir}/{name}-{ratio}")
        record = {"row": row, "method": name, "ratio": float(ratio), "compress_ratio": compress_ratio,
                  "realised_ratio": round(report.linear_ratio, 5),
                  "adapters_in_budget": info["refine_mode"] != "lora" or bool(ROWS[name][1].get(IN_BUDGET)),
                  "calib_data": a.calib_data, "calib_samples": a.calib_samples,
                  "refine_flags": flags + extra, "compress_s": round(compress_s, 1), **info,
                  **_scores(a, model, teacher.tokenizer, sets, row in task_rows)}
        record["default"] = _is_default(record)
        res["rows"].append(record)
        print(json.dumps({k: v for k, v in record.items() if k not in ("tasks", "final_losses")}), flush=True)
        _write(a.json, res)
        del model, student
        torch.cuda.empty_cache() if a.device == "cuda" else None
    _write(a.json, res)


#: throughput variant flags that are not refinement flags: frozen weights and activations in bf16 (the trained
#: tensors stay float32 while training, as the refinement keeps half-precision vectors), or only the teacher in
#: bf16 (it trains nothing: its forward is a third of a step, and the student's numerics stay as they are)
BF16, BF16_TEACHER = "bf16", "bf16-teacher"


def _variant_setup(a: argparse.Namespace, teacher, stats, calib, variant: str, name: str):
    """A fresh compression, the teacher to train against and the default refinement's config for ``variant``
    (``BATCH[:FLAG]``: ``--FLAG`` added to the refinement flags, or ``bf16`` / ``bf16-teacher``), short."""
    bs, _, flag = variant.partition(":")
    student, _, _ = _compressed(teacher, stats, calib, DEFAULT_METHOD, 0.7, a.device)
    teacher_model = teacher.model
    if flag == BF16:
        (student, teacher_model), flag = _in_bf16(student, teacher), ""
    elif flag == BF16_TEACHER:
        teacher_model, flag = _teacher_bf16(teacher), ""
    args = _refine_parser().parse_args(["--batch-size", bs, "--max-steps", str(a.steps),
                                        "--refine-output", f"{a.out_dir}/{name}-{variant.replace(':', '-')}"]
                                       + ([f"--{flag}"] if flag else []))
    args.device = a.device
    return student, teacher_model, refine_config_from_args(args, method=method(DEFAULT_METHOD))


def _refine_variant(a: argparse.Namespace, teacher, stats, calib, ids: torch.Tensor, variant: str, name: str):
    student, teacher_model, cfg = _variant_setup(a, teacher, stats, calib, variant, name)
    return refine(student, teacher_model, ids, cfg)


def _profile(a: argparse.Namespace, teacher, stats, calib, ids: torch.Tensor, variant: str) -> dict:
    """Where a refinement's time goes: torch.profiler over a short run (its set-up and first step included, the
    compression not), kernels by their own device time."""
    student, teacher_model, cfg = _variant_setup(a, teacher, stats, calib, variant, "profile")
    with profiler(a.device) as prof:
        refine(student, teacher_model, ids, cfg)
    return {"variant": variant, "steps": a.steps, **top_operations(prof, a.device)}


def cmd_throughput(a: argparse.Namespace) -> None:
    """Tokens/s of the default refinement (teacher forward included) per batch size, and of teacher sampling.
    The first step is not counted."""
    teacher, calib, stats = _setup(a)
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": torch.cuda.get_device_name()
           if a.device == "cuda" else a.device, "argv": sys.argv, "method": DEFAULT_METHOD, "refine": {}}
    ids = training_ids("wikitext2", teacher.tokenizer, 512, a.seq_len, 0, data_dir=a.data_dir)
    for variant in a.variants.split(","):
        if a.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = _refine_variant(a, teacher, stats, calib, ids, variant, "tp")
        res["refine"][variant] = {"tokens_per_s": out.tokens_per_s, "wall_s": round(time.perf_counter() - t0, 1),
                                  "steps": out.steps, "peak_gib": torch.cuda.max_memory_allocated() / 2**30
                                  if a.device == "cuda" else None,
                                  "refine_mode": out.config.mode}
        print(variant, res["refine"][variant], flush=True)
        _write(a.json, res)  # after every variant: a run stopped later keeps what it measured
        del out
        torch.cuda.empty_cache() if a.device == "cuda" else None
    if a.profile:
        res["profile"] = _profile(a, teacher, stats, calib, ids, a.variants.split(",")[0])
        print("\n".join(lines(res["profile"])), flush=True)
    if a.gen_sequences:
        res["teacher_text"] = _teacher_text(a, teacher)
    _write(a.json, res)


def _write(path: str, res: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(res, indent=1, default=str))


def _teacher_text(a: argparse.Namespace, teacher) -> dict:
    """Tokens/s of sampling teacher text (``--train-data ...+teacher``), and the start of one sample."""
    from sharvet.training_data import teacher_sequences

    t0 = time.perf_counter()
    gen = teacher_sequences(teacher.model, teacher.tokenizer, a.gen_sequences, 1024, 0, model_id="x",
                            batch_size=a.gen_batch)
    seconds = time.perf_counter() - t0
    out = {"tokens": gen.numel(), "seconds": seconds, "batch": a.gen_batch, "tokens_per_s": gen.numel() / seconds,
           "sample": teacher.tokenizer.decode(gen[0, :80])}
    print(json.dumps(out), flush=True)
    return out


def _same_epochs(meth: str, flags: list[str]) -> list[str]:
    """``--epochs N`` for a row whose method trains another number of epochs than the default method's, unless its
    flags set one: every row of a run sees the same data the same number of times."""
    epochs = method(DEFAULT_METHOD).refine_epochs
    if "--epochs" in flags or method(meth).refine_epochs == epochs:
        return []
    return ["--epochs", str(epochs)]


def _default_settings(flags: list[str]) -> tuple[dict, dict]:
    """The refinement ``flags`` parse to, for the default method: every argument as resolved, and the recorded
    settings that say which defaults a row ran with (a default that changes leaves older rows behind)."""
    args = _refine_parser().parse_args(flags + ["--refine-output", "-"])
    cfg = refine_config_from_args(args, method=method(DEFAULT_METHOD))
    keys = {"refine_mode": cfg.mode, "lr": cfg.learning_rate(), "epochs": cfg.epochs, "batch_size": cfg.batch_size,
            "train_data": args.train_data}
    return {**vars(args), **dataclasses.asdict(cfg)}, keys  # flags as resolved: --epochs unset reads as the method's


def _is_default(row: dict) -> bool:
    """A row is what ``sharvet compress --refine`` runs with today's defaults: the default method, its own
    calibration, float32, refinement flags that only restate defaults (``--epochs 4`` once 4 is the default), and
    recorded settings equal to today's (so rows of an earlier default, e.g. two epochs, are no longer default)."""
    if (row["method"] != DEFAULT_METHOD or row.get("calib_data", "wikitext2") != method(DEFAULT_METHOD).calibration
            or row.get("calib_samples", CALIB_SAMPLES_BEFORE) != CalibrationSpec.samples
            or row.get("train_dtype", "float32") != "float32"):
        return False
    today, keys = _default_settings([])
    given, _ = _default_settings(list(row["refine_flags"]))
    return given == today and all(row.get(k) == v for k, v in keys.items())


def _compress_flags(name: str, calib_data: str, calib_samples: int) -> str:
    """The ``sharvet compress`` flags a row stands for (its refinement flags are appended)."""
    meth, fields, _ = ROWS[name]
    flags = "" if meth == DEFAULT_METHOD else f" --method {meth}"
    flags += "" if calib_data == method(meth).calibration else f" --calib-data {calib_data}"
    flags += "" if calib_samples == CalibrationSpec.samples else f" --calib-samples {calib_samples}"
    return flags + "".join(f" --{k.replace('_', '-')} {v}" for k, v in fields.items() if k != IN_BUDGET)


def avg_acc_stderr(tasks: dict | None) -> float | None:
    """Standard error (points) of the five tasks' average accuracy: the tasks' own standard errors of their headline
    metrics (lm-eval's), combined as for a mean of independent estimates."""
    if not tasks:
        return None
    errors = [t.get("metrics", {}).get(f"{t.get('headline_metric')}_stderr") for t in tasks.values()]
    if any(e is None for e in errors):
        return None
    return round(100 * math.sqrt(sum(e * e for e in errors)) / len(errors), 3)


#: calibration windows of a run whose records do not name the count: every run before the ninth session had 64
CALIB_SAMPLES_BEFORE = 64


def _argv_calib_samples(argv: list[str]) -> int:
    """The ``--calib-samples`` a run was given (its records did not say before the ninth session)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--calib-samples", type=int, default=CALIB_SAMPLES_BEFORE)
    return p.parse_known_args(argv)[0].calib_samples


def task_outcomes(tasks: dict | None) -> dict:
    """Each task's per-question outcomes where the run logged them (since the thirteenth session), for comparing
    two methods on the same questions; nothing for older runs."""
    correct = {name: t["correct"] for name, t in (tasks or {}).items() if t.get("correct")}
    return {"task_correct": correct} if correct else {}


def _record(row: dict, run: dict) -> dict:
    flags = "".join(f" {shlex.quote(f)}" for f in row["refine_flags"])
    ratio = row.get("compress_ratio", row["ratio"])
    calib_data = row.get("calib_data", "wikitext2")  # runs before 2026-11-30 calibrated on WikiText-2
    row = {**row, "calib_samples": row.get("calib_samples", _argv_calib_samples(run["argv"]))}
    compress = _compress_flags(row["method"], calib_data, row["calib_samples"])
    command = (f"sharvet compress --ratio {ratio}{compress} --refine{flags} "
               f"--device cuda --data-dir DATA -o OUT")
    bf16 = row.get("train_dtype", "float32") == "bfloat16"
    if bf16:  # no one command: compressed in float32, then student and teacher cast to bf16 for the refinement
        command += " (refined in bf16: quality_smollm2.py run --train-dtype bfloat16)"
    keep = ("realised_ratio", "refine_mode", "preset", "lr", "steps", "train_data", "epochs", "batch_size",
            "tokens_per_s", "trainable", "loss_weights")
    return {"method": row["method"], "ratio": row["ratio"], "wikitext2_ppl": row["wikitext2_ppl"],
            "c4_ppl": row["c4_ppl"], "avg_acc": row.get("avg_acc"), "avg_acc_stderr": avg_acc_stderr(row.get("tasks")),
            "adapters_in_budget": row["adapters_in_budget"],
            "train_tokens": row["train_tokens"], "command": command,
            "default": _is_default(row),
            "calib_data": calib_data, "calib_samples": row["calib_samples"],
            "train_dtype": row.get("train_dtype", "float32"), **{k: row[k] for k in keep},
            "compress_ratio": row.get("compress_ratio", row["ratio"]),
            "date": run["date"], "device": run["device"],
            "measured_by": " ".join(run["argv"]), **task_outcomes(row.get("tasks"))}


def cmd_summary(a: argparse.Namespace) -> None:
    """``results/quality/summary.json``: issue 15's records (one per row, and the original) from run JSONs."""
    records = []
    for path in a.runs:
        run = json.loads(Path(path).read_text())
        if "original" in run and not any(r["method"] == "original" for r in records):
            orig = run["original"]
            records.append({"method": "original", "ratio": 1.0, "wikitext2_ppl": orig["wikitext2_ppl"],
                            "c4_ppl": orig["c4_ppl"], "avg_acc": orig.get("avg_acc", a.original_avg_acc),
                            "avg_acc_source": None if "avg_acc" in orig else a.original_avg_acc_source,
                            "adapters_in_budget": True, "train_tokens": 0, "command": "sharvet eval --ppl wikitext2,c4",
                            "default": False, "date": run["date"], "device": run["device"],
                            "measured_by": " ".join(run["argv"])})
        skip = set(a.exclude.split(","))
        records += [_record(row, run) for row in run["rows"]
                    if row["method"] not in skip and f"{Path(path).name}:{row['row']}" not in skip]
    Path(a.out).write_text(json.dumps(records, indent=1) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "throughput"):
        s = sub.add_parser(name)
        s.add_argument("--model", default=None)
        s.add_argument("--data-dir", required=True)
        s.add_argument("--device", default="cuda")
        s.add_argument("--out-dir", default="outputs/quality")
        s.add_argument("--json", required=True)
        s.add_argument("--calib-samples", type=int, default=CalibrationSpec.samples, help="as sharvet compress's")
        s.add_argument("--calib-data", default=method(DEFAULT_METHOD).calibration,
                       help="every row of a run is calibrated on the same data (same for all methods: a fair "
                            "comparison); default: the default method's")
    r = sub.choices["run"]
    r.add_argument("--rows", default="sharvet@0.7,basis-sharing@0.7,svd@0.7,sharvet@0.5,basis-sharing@0.5,svd@0.5")
    r.add_argument("--refine-flags", default="", help="refinement flags added to every row (then no row is default)")
    r.add_argument("--ppl", default="wikitext2,c4")
    r.add_argument("--train-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="refine with student and teacher in bf16 (the throughput bench's BATCH:bf16): its quality")
    r.add_argument("--max-eval-tokens", type=int, default=None, help="score only the first N tokens (smoke runs)")
    r.add_argument("--original", action="store_true", help="score the original model too")
    r.add_argument("--task-rows", default="", help="rows (and 'original') scored on the five tasks too")
    t = sub.choices["throughput"]
    t.add_argument("--variants", default="16,32",
                   help="batch sizes of the default refinement; BATCH:FLAG adds the refinement flag --FLAG, "
                        "BATCH:bf16 runs student and teacher in bf16 (trained tensors in float32), "
                        "BATCH:bf16-teacher only the teacher")
    t.add_argument("--steps", type=int, default=12)
    t.add_argument("--seq-len", type=int, default=1024, help="tokens per training sequence")
    t.add_argument("--gen-sequences", type=int, default=256, help="teacher-text sequences to time (0: none)")
    t.add_argument("--profile", action="store_true",
                   help="also profile a run of the first variant (torch.profiler; kernels by own device time)")
    t.add_argument("--gen-batch", type=int, default=256)
    m = sub.add_parser("summary")
    m.add_argument("runs", nargs="+")
    m.add_argument("--exclude", default="",
                   help="rows left out (e.g. measured by older code): NAME, or RUNFILE:NAME@RATIO")
    m.add_argument("--out", required=True)
    m.add_argument("--original-avg-acc", type=float, default=None,
                   help="the original's five-task average when the runs did not score it")
    m.add_argument("--original-avg-acc-source", default=None, help="where that average was measured")
    a = p.parse_args()
    {"run": cmd_run, "throughput": cmd_throughput, "summary": cmd_summary}[a.cmd](a)


if __name__ == "__main__":
    main()
