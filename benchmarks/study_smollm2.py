"""The study (issue 6): run the paper's experiments on SmolLM2-135M and write them into ``docs/results.md``.

``run`` executes the stages, each one command whose line, wall time and machine are stored beside its JSON
in the results folder (so a stage can run on another machine and its files be copied back):

* ``data`` - the data folder: the shared one (WikiText-2, PIQA) plus COPA, WinoGrande, ARC-Easy and LAMBADA
  from ``sharvet fetch-data`` (kept as is when already written, so it reruns offline);
* ``methods-lr<LR>`` - Table 2 and Table 6: SEQ, CYCLE, CYCLE-REV, Basis Sharing, FiPS (each + LoRA) and
  SharVeT at ratios 0.7 and 0.5, one run per learning rate of the search (``--lrs``: 3e-3 and 1e-2, where the
  first study's probe found LoRA and the vectors at their best; the paper searched 1e-4 to 1e-3);
* ``lr-probe-<LR>`` - the same runs at further learning rates (``--probe-lrs``, none by default), perplexity
  only: whether the search's edge holds a method back (not used for Table 2);
* ``variants`` - Tables 3, 7, 8, 9: the SharVeT variants at ratio 0.5 (learning rate ``--variants-lr``);
* ``sharvet-lora`` - Figure 3: SharVeT's own model fine-tuned with LoRA instead of its vectors;
* ``sharvet-matched`` - SharVeT's vectors with eq. 13's weights matched to the LM loss's scale (variant M);
* ``grouping`` - Figure 4 (intra-group similarity per strategy);
* ``similarity`` - Figure 1 (per-type similarity heatmaps).

``render`` reads those files (:mod:`sharvet.study`) and replaces the study section of ``docs/results.md`` (between the
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
from pathlib import Path

from sharvet.study.document import render_study, splice
from sharvet.study.stages import DEFAULT_LRS, TABLE2_ROWS, VARIANT_ROWS, run, stage_commands

ROOT = Path(__file__).resolve().parent.parent


def render(a: argparse.Namespace) -> None:
    doc = Path(a.doc)
    text = render_study(Path(a.results_dir), Path(a.figures_dir), doc.parent, ROOT / "docs" / "study_discussion.md")
    splice(doc, text)
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
    r.add_argument("--probe-lrs", default="",
                   help="further learning rates tried on every method (perplexity only, not used for Table 2), "
                        "e.g. 1e-3,3e-2: stages lr-probe-<lr>")
    r.add_argument("--variants-lr", default="1e-2", help="learning rate of the variants, LoRA and matched stages")
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
    if a.command == "run":
        run(a, stage_commands(a, ROOT / "benchmarks" / "methods_smollm2.py"), cwd=ROOT)
    else:
        render(a)


if __name__ == "__main__":
    main()
