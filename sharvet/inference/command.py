"""``sharvet bench``: the flags and the command (the measurement itself is :mod:`sharvet.inference.bench`)."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from ..argtypes import at_least
from .form import DEFAULT_ALIGN, FUSE_MODES
from .modes import CAPTURE_MODE, COMPILE_MODES

DEFAULT_OUT = "results/inference/summary.json"


def _ints(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"want a comma list of positive integers, got {text!r}")
    return values


def _variants(text: str) -> list[str]:
    out = [v.strip() for v in text.split(",") if v.strip()]
    for v in out:
        ratio, _, fuse = v.partition(":")
        try:
            ok = 0 < float(ratio) <= 1 and (not fuse or fuse in FUSE_MODES)
        except ValueError:
            ok = False
        if not ok:
            raise argparse.ArgumentTypeError(f"want RATIO[:FUSE] items, ratio in (0, 1] and fuse in "
                                             f"{', '.join(FUSE_MODES)}; got {v!r}")
    return out


def _throughput(text: str) -> tuple[int, int] | None:
    if text == "none":
        return None
    batch, _, tokens = text.partition("x")
    try:
        return _ints(batch)[0], _ints(tokens)[0]
    except (argparse.ArgumentTypeError, ValueError):
        raise argparse.ArgumentTypeError(f"want BATCHxTOKENS (e.g. 512x32) or none, got {text!r}") from None


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="sharvet checkpoint folder: run it and its original end to end with generate")
    p.add_argument("--original", default=None, help="the dense model to compare with (default: the checkpoint's "
                   "recorded source)")
    p.add_argument("--shape", default=None, help="also (or instead) a published shape with random weights: "
                   "llama3-8b, or tiny (a CPU check)")
    p.add_argument("--ratios", type=_variants, default=["0.7", "0.5", "0.3"],
                   help="compressed variants of --shape, RATIO[:FUSE] comma list (e.g. 0.7,0.5,0.3,0.5:always)")
    p.add_argument("--method", default="sharvet", choices=("sharvet", "basis-sharing"),
                   help="whose plan --shape uses: sharvet (groups by similarity, per type) or basis-sharing "
                        "(consecutive groups, alike for every type)")
    p.add_argument("--align", type=int, default=DEFAULT_ALIGN,
                   help="pad every rank of the inference form to a multiple of this with zeros (1: none)")
    p.add_argument("--fuse", default="best", choices=FUSE_MODES, help="first-stage stacking of the inference form "
                   "(auto: only where it copies no shared basis; grouped: Triton kernels for one-token steps; "
                   "best: grouped on an NVIDIA GPU with Triton, else auto)")
    p.add_argument("--batches", type=_ints, default=(1, 16, 64))
    p.add_argument("--prefill-len", type=at_least(1), default=2048, help="tokens per sequence of the prefill rows")
    p.add_argument("--decode-prompt", type=at_least(1), default=128, help="prompt before the timed decode steps")
    p.add_argument("--decode-steps", type=at_least(2), default=32, help="timed decode steps (new tokens)")
    p.add_argument("--warmup", type=at_least(1), default=3)
    p.add_argument("--decode-windows", type=at_least(1), default=5,
                   help="timed windows of --decode-steps each (median kept, spread recorded)")
    p.add_argument("--repeats", type=at_least(1), default=2, help="timed prefill / generate calls (median)")
    p.add_argument("--throughput", type=_throughput, default=(512, 32),
                   help="Basis Sharing's throughput setting BATCHxTOKENS, one forward (--shape only; none skips)")
    p.add_argument("--no-compile", action="store_true", help="eager decode (no torch.compile / CUDA graphs)")
    p.add_argument("--compile-mode", default=CAPTURE_MODE, choices=COMPILE_MODES,
                   help="the decode step on a GPU: cuda-graph (compiled, then replayed from a CUDA graph of its own, "
                        "as serving engines run it), reduce-overhead (torch.compile's own CUDA graphs, whose "
                        "per-call host checks grow with the model's tensors), max-autotune (reduce-overhead, and "
                        "inductor times its own matmul kernels; compiling takes longer)")
    p.add_argument("--coordinate-descent", action="store_true",
                   help="inductor's coordinate-descent tuning for the compiled decode step (gpt-fast's setting: "
                        "one-row matmuls become fused, tuned reduction kernels)")
    p.add_argument("--compile-prefill", action="store_true",
                   help="--shape's prefill and throughput forwards through torch.compile too (no CUDA graphs), as "
                        "a server runs them (default: eager, as in every record so far)")
    p.add_argument("--prefill-graph", action="store_true",
                   help="--shape's prefill and throughput forwards recorded once per shape as a CUDA graph and "
                        "replayed when timed (after --compile-prefill's compiling), as a server replays captured "
                        "prefill buckets: the host then issues one call a forward; dense and compressed alike")
    p.add_argument("--inductor-pdl", action=argparse.BooleanOptionalAction, default=None,
                   help="programmatic dependent launch for inductor's own kernels (norms, rotary, activations) on "
                        "sm_90+, dense and compressed alike; default: inductor's setting (TORCHINDUCTOR_ENABLE_PDL); "
                        "records add +pdl to the compile mode")
    p.add_argument("--out", default=DEFAULT_OUT, help="JSON file the records are merged into")
    p.add_argument("--note", default=None, help="a note stored in every record (the machine's state, the session)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default="auto", help="auto (default): bfloat16 on a GPU, float32 on the CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the checkpoint's files")


def bench_command(a: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import require_checkpoint
    from ..loading import default_device, parse_dtype
    from ..outputs import check_output_file
    from .bench import bench_checkpoint, bench_shape
    from .measure import BenchSettings
    from .records import table, write_records
    from .shapes import SHAPES

    if a.checkpoint is None and a.shape is None:
        raise ValueError("give a checkpoint folder, --shape, or both")
    if a.shape is not None and a.shape not in SHAPES:
        raise ValueError(f"unknown --shape {a.shape!r}; known: {', '.join(SHAPES)}")
    if a.checkpoint is not None:
        require_checkpoint(a.checkpoint)
    check_output_file(a.out, "--out")
    device = torch.device(default_device(a.device))
    dtype = parse_dtype(a.dtype) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    settings = BenchSettings(batches=a.batches, prefill_len=a.prefill_len, decode_prompt=a.decode_prompt,
                             decode_steps=a.decode_steps, warmup=a.warmup, repeats=a.repeats,
                             decode_windows=a.decode_windows,
                             throughput=a.throughput, fuse=a.fuse, align=a.align, compile=not a.no_compile,
                             compile_mode=a.compile_mode, coordinate_descent=a.coordinate_descent,
                             compile_prefill=a.compile_prefill, prefill_graph=a.prefill_graph,
                             inductor_pdl=a.inductor_pdl, seed=a.seed)
    for flag, asked, applies, needs in (
            ("--compile-prefill", a.compile_prefill, settings.compiles_prefill(device), "a GPU and compiling on"),
            ("--prefill-graph", a.prefill_graph, settings.captures_prefill(device), "a GPU")):
        if asked and not applies:  # the records then say eager; the line says why
            print(f"sharvet: {flag} ignored: it needs {needs}", file=sys.stderr)
    argv = [shlex.quote(x) for x in sys.argv]
    # the grouped kernels' settings, the prefill chunks and inductor's PDL may come from the environment: the
    # command says which
    knobs = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items())
             if k.startswith(("SHARVET_GROUPED_", "SHARVET_PREFILL_")) or k == "TORCHINDUCTOR_ENABLE_PDL"]
    command = " ".join(knobs + (["sharvet", *argv[1:]] if Path(sys.argv[0]).name == "sharvet" else
                                ["python", *argv] if sys.argv[0].endswith(".py") else argv))
    rows: list[dict] = []

    def emit(new: list[dict]) -> None:
        new = [{**r, "note": a.note} for r in new] if a.note else new
        rows.extend(new)
        write_records(a.out, new)

    if a.shape is not None:  # first: its rows are the targets, and each model's rows are kept as it ends
        bench_shape(a.shape, a.ratios, settings, device=device, dtype=dtype, command=command, emit=emit,
                    method=a.method, log=_log)
    if a.checkpoint is not None:
        bench_checkpoint(a.checkpoint, a.original, settings, device=device, dtype=dtype, command=command, emit=emit,
                         verify=not a.no_verify, log=_log)
    print(table(rows))
    print(f"wrote {len(rows)} records to {a.out}")
    return 0


def _log(text: str) -> None:
    print(text, flush=True)
