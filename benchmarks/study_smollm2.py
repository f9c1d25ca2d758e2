"""The study (issue 6): run the paper's experiments on SmolLM2-135M and write them into ``docs/results.md``.

``run`` executes the stages, each one command whose line, wall time and machine are stored beside its JSON
in the results folder (so a stage can run on another machine and its files be copied back):

* ``data`` - the data folder: the shared one (WikiText-2, PIQA) plus COPA, WinoGrande, ARC-Easy and LAMBADA
  from ``sharvet fetch-data`` (kept as is when already written, so it reruns offline);
* ``methods-lr<LR>`` - Table 2 and Table 6: SEQ, CYCLE, CYCLE-REV, Basis Sharing, FiPS (each + LoRA) and
  SharVeT at ratios 0.7 and 0.5, one run per learning rate of the search (the paper's 1e-4 to 1e-3);
* ``lr-probe-<LR>`` - the same runs at learning rates beyond the paper's range (``--probe-lrs``), perplexity
  only: whether the search's edge holds a method back (not used for Table 2);
* ``variants`` - Tables 3, 7, 8, 9: the SharVeT variants at ratio 0.5 (learning rate ``--variants-lr``);
* ``sharvet-lora`` - Figure 3: SharVeT's own model fine-tuned with LoRA instead of its vectors;
* ``sharvet-matched`` - SharVeT's vectors with eq. 13's weights matched to the LM loss's scale (variant M);
* ``grouping`` - Figure 4 (intra-group similarity per strategy);
* ``similarity`` - Figure 1 (per-type similarity heatmaps).

``render`` reads those files and replaces the study section of ``docs/results.md`` (between the
``<!-- study:begin -->`` / ``<!-- study:end -->`` markers); it also draws Figure 3 (loss curves of the
vectors vs LoRA) from the refinement histories. The discussion is hand-written in
``docs/study_discussion.md`` and included as is; the claim checks above it are computed.

    python benchmarks/study_smollm2.py run --device cuda   # all stages, data first (into .data)
    python benchmarks/study_smollm2.py run --stages variants --device cuda
    python benchmarks/study_smollm2.py run --jobs 2 --device cuda   # two stages at a time share the GPU
    python benchmarks/study_smollm2.py render
"""
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

ROOT = Path(__file__).resolve().parent.parent
TABLE2_ROWS = "seq,cycle,cycle-rev,basis-sharing,fips,sharvet"
VARIANT_ROWS = ",".join(f"sharvet:{v}" for v in ("R", "I", "L", "T", "C", "F", "K", "Agg", "DB", "lambda", "sigma"))
DEFAULT_LRS = "1e-4,1e-3"


def stage_commands(a: argparse.Namespace) -> dict[str, list[str]]:
    """Every stage's command line, writing under ``a.results_dir`` / ``a.figures_dir``."""
    res, fig, runs = Path(a.results_dir), Path(a.figures_dir), Path(a.runs_dir or a.results_dir)
    model = ["--model", a.model] if a.model else []
    common = [*model, "--data-dir", a.data_dir, "--device", a.device]
    script = [sys.executable, str(ROOT / "benchmarks" / "methods_smollm2.py"), *common]
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


def run_stage(name: str, cmd: list[str], results_dir: Path, tag: str = "", jobs: int = 1) -> None:
    """Run one stage and store its command, wall time and machine as ``<stage>.run.json``.

    With ``jobs`` > 1 the stage shares the GPU with others: its output goes to ``<stage>.log`` and its record
    says so, since its wall time then includes their contention."""
    print(f"== {name}: {shlex.join(cmd)}", flush=True)
    start, date = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M")
    log = results_dir / f"{name}{tag}.log"
    if jobs > 1:
        with log.open("w") as out:
            code = subprocess.call(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    else:
        code = subprocess.call(cmd, cwd=ROOT)
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


def run(a: argparse.Namespace) -> None:
    cmds = stage_commands(a)
    names = list(cmds) if a.stages == "all" else a.stages.split(",")
    unknown = [n for n in names if n not in cmds]
    if unknown:
        raise SystemExit(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(cmds)}")
    results = Path(a.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    Path(a.figures_dir).mkdir(parents=True, exist_ok=True)
    if "data" in names:  # every other stage reads it
        run_stage("data", cmds["data"], results, a.tag)
    rest = [n for n in names if n != "data"]
    if a.jobs <= 1:
        for name in rest:
            run_stage(name, cmds[name], results, a.tag)
        return
    with ThreadPoolExecutor(a.jobs) as pool:
        futures = [pool.submit(run_stage, n, cmds[n], results, a.tag, a.jobs) for n in rest]
    failed = [str(f.exception()) for f in futures if f.exception()]
    if failed:
        raise SystemExit("; ".join(failed))


def render(a: argparse.Namespace) -> None:
    from study_tables import render_study

    doc = Path(a.doc)
    text = render_study(Path(a.results_dir), Path(a.figures_dir), doc.parent, ROOT / "docs" / "study_discussion.md")
    begin, end = "<!-- study:begin -->", "<!-- study:end -->"
    old = doc.read_text() if doc.exists() else "# Results\n"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + begin + "\n" + text + "\n" + end + "\n"
    doc.write_text(new)
    print(f"wrote the study section of {doc}")


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run study stages (GPU recommended)")
    r.add_argument("--stages", default="all", help="comma list of stages, or all")
    r.add_argument("--model", default=None, help="default: the bundled SmolLM2-135M-Instruct GGUF")
    r.add_argument("--data-dir", default=str(ROOT / ".data"),
                   help="the study's data folder, written by the data stage (git-ignored)")
    r.add_argument("--shared-data", default=str(ROOT.parent / "shared" / "data"),
                   help="the shared data folder the data stage copies in before adding the registry tasks")
    r.add_argument("--device", default="cuda")
    r.add_argument("--lrs", default=DEFAULT_LRS, help="learning-rate search of the methods stage")
    r.add_argument("--ratios", default="0.7,0.5", help="ratios of the methods stages")
    r.add_argument("--probe-lrs", default="3e-3,1e-2,3e-2",
                   help="learning rates beyond the paper's range, tried on every method (perplexity only, not used "
                        "for Table 2): stages lr-probe-<lr>; '' for none")
    r.add_argument("--variants-lr", default="1e-3")
    r.add_argument("--variant-rows", default=VARIANT_ROWS, help="rows of the variants stage")
    r.add_argument("--table2-rows", default=TABLE2_ROWS, help="rows of the methods stages (to split them with --tag)")
    r.add_argument("--runs-dir", default=None, help="refinement folders (checkpoints, loss histories); default: "
                   "the results folder")
    r.add_argument("--tag", default="", help="file-name suffix, to split a stage over several runs (e.g. -r0.7)")
    r.add_argument("--train-samples", type=int, default=256, help="fine-tuning windows of 1024 tokens")
    r.add_argument("--tasks", default="default", help="lm-eval tasks (default: those with data present)")
    r.add_argument("--task-batch-size", type=int, default=32)
    r.add_argument("--skip-original-tasks", action="store_true", help="the original model is scored by another run")
    r.add_argument("--jobs", type=int, default=1, help="stages run this many at a time on the one GPU (after data); "
                   "2 fit an 80 GB H100 (a stage peaks at about 33 GB), 6 did not")
    for q in (r, sub.add_parser("render", help="write docs/results.md's study section from the results")):
        q.add_argument("--results-dir", default=str(ROOT / "results" / "study"))
        q.add_argument("--figures-dir", default=str(ROOT / "docs" / "figures"))
    sub.choices["render"].add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    return p.parse_args()


def main() -> None:
    a = arguments()
    run(a) if a.command == "run" else render(a)


if __name__ == "__main__":
    main()
