"""The study's stages: each one command whose line, wall time and machine are stored beside its JSON in the
results folder (so a stage can run on another machine and its files be copied back). The stages are listed in
``benchmarks/study_smollm2.py``, which runs them."""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TABLE2_ROWS = "seq,cycle,cycle-rev,basis-sharing,fips,sharvet"
VARIANT_ROWS = ",".join(f"sharvet:{v}" for v in ("R", "I", "L", "T", "C", "F", "K", "Agg", "DB", "lambda", "sigma"))
#: where the first study's probe found LoRA (3e-3) and the vectors (1e-2) at their best; the recorded tables
DEFAULT_LRS = "3e-3,1e-2"


def stage_commands(a: argparse.Namespace, methods_script: Path) -> dict[str, list[str]]:
    """Every stage's command line, writing under ``a.results_dir`` / ``a.figures_dir``; ``methods_script`` is
    ``benchmarks/methods_smollm2.py``."""
    res, fig, runs = Path(a.results_dir), Path(a.figures_dir), Path(a.runs_dir or a.results_dir)
    model = ["--model", a.model] if a.model else []
    common = [*model, "--data-dir", a.data_dir, "--device", a.device]
    script = [sys.executable, str(methods_script), *common]
    rest = ["--train-samples", str(a.train_samples), "--task-batch-size", str(a.task_batch_size),
            *(["--skip-original-tasks"] if a.skip_original_tasks else [])]
    bench = [*script, "--tasks", a.tasks, *rest]
    tag = a.tag
    cmds = {f"methods-lr{lr}": [*bench, "--ratios", a.ratios, "--rows", a.table2_rows, "--lr", lr,
                                "--out-dir", str(runs / f"runs-lr{lr}"), "--json", str(res / f"methods-lr{lr}{tag}.json")]
            for lr in a.lrs.split(",")}
    for lr in filter(None, a.probe_lrs.split(",")):  # perplexity only: a probe, not Table 2's search
        cmds[f"lr-probe-{lr}"] = [*script, "--tasks", "", *rest, "--ratios", a.ratios, "--rows", a.table2_rows,
                                  "--lr", lr, "--out-dir", str(runs / f"runs-lr{lr}"),
                                  "--json", str(res / f"lr-probe-{lr}{tag}.json")]
    cmds["variants"] = [*bench, "--ratios", "0.5", "--rows", a.variant_rows, "--lr", a.variants_lr,
                        "--out-dir", str(runs / "runs-variants"), "--json", str(res / f"variants{tag}.json")]
    for stage, row in (("sharvet-lora", "sharvet:LoRA"), ("sharvet-matched", "sharvet:M")):
        cmds[stage] = [*bench, "--ratios", a.ratios, "--rows", row, "--lr", a.variants_lr,
                       "--out-dir", str(runs / f"runs-lr{a.variants_lr}"), "--json", str(res / f"{stage}{tag}.json")]
    cli = [sys.executable, "-m", "sharvet.cli"]
    cmds = {"data": [*cli, "fetch-data", "--out", a.data_dir, "--base", a.shared_data], **cmds}
    where = [a.model] if a.model else []
    calib = ["--data-dir", a.data_dir, "--device", a.device, "--cache-dir", "none"]
    cmds["grouping"] = [*cli, "grouping", *where, *calib, "--plot", str(fig / "figure4_grouping.png"),
                        "--json", str(res / "grouping.json")]
    cmds["similarity"] = [*cli, "similarity", *where, *calib, "--plot", str(fig / "similarity_smollm2.png")]
    return cmds


def run_stage(name: str, cmd: list[str], results_dir: Path, tag: str = "", jobs: int = 1, cwd: Path | None = None) -> None:
    """Run one stage and store its command, wall time and machine as ``<stage>.run.json``.

    With ``jobs`` > 1 the stage shares the GPU with others: its output goes to ``<stage>.log`` and its record
    says so, since its wall time then includes their contention."""
    print(f"== {name}: {shlex.join(cmd)}", flush=True)
    start, date = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M")
    log = results_dir / f"{name}{tag}.log"
    if jobs > 1:
        with log.open("w") as out:
            code = subprocess.call(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    else:
        code = subprocess.call(cmd, cwd=cwd)
    record = {"stage": name, "command": shlex.join(cmd), "returncode": code, "date": date,
              "wall_s": round(time.perf_counter() - start, 1), "host": platform.node(), "gpu": gpu_name()}
    if jobs > 1:
        record["note"] = f"ran {jobs} stages at a time on one GPU (output: {log.name}); wall times include contention"
    (results_dir / f"{name}{tag}.run.json").write_text(json.dumps(record, indent=2))
    if code:
        raise SystemExit(f"stage {name} failed with exit code {code}")


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def run(a: argparse.Namespace, cmds: dict[str, list[str]], cwd: Path | None = None) -> None:
    """Run the stages ``a.stages`` of ``cmds``: data first, then the others one or ``a.jobs`` at a time."""
    names = list(cmds) if a.stages == "all" else a.stages.split(",")
    unknown = [n for n in names if n not in cmds]
    if unknown:
        raise SystemExit(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(cmds)}")
    results = Path(a.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    Path(a.figures_dir).mkdir(parents=True, exist_ok=True)
    if "data" in names:  # every other stage reads it
        run_stage("data", cmds["data"], results, a.tag, cwd=cwd)
    rest = [n for n in names if n != "data"]
    if a.jobs <= 1:
        for name in rest:
            run_stage(name, cmds[name], results, a.tag, cwd=cwd)
        return
    with ThreadPoolExecutor(a.jobs) as pool:
        futures = [pool.submit(run_stage, n, cmds[n], results, a.tag, a.jobs, cwd) for n in rest]
    failed = [str(f.exception()) for f in futures if f.exception()]
    if failed:
        raise SystemExit("; ".join(failed))
