"""Measure dense vs compressed inference: decode and prefill tokens/s, time to first token, peak GPU memory.

Two sources of models, one record format:

- **a checkpoint** (``sharvet bench DIR``): the compressed model (:func:`sharvet.load`, then :func:`prepare`)
  against its original, both run end to end by ``generate`` (greedy, a static KV cache: transformers compiles
  the decode step with CUDA graphs on a GPU), timed token by token through a streamer: time to first token, then
  seconds per later token.
- **a published shape with random weights** (``--shape llama3-8b``): the dense model, then one compressed model
  per ratio, its groups and ranks chosen by sharvet's own planner (SharVeT preset; on random weights the
  similarity is structural only, cosine and Frobenius, since CKA needs calibration data) and random factors of
  those shapes, lambdas drawn around 1 as after refinement. Prefill is one eager forward of ``batch x
  prefill_len`` tokens into a static cache; decode is a gpt-fast loop: one token per step, compiled by
  ``torch.compile`` and replayed from a CUDA graph (by default one of its own, see ``BenchSettings.compile_mode``)
  with a static cache, no host sync inside the timed steps. The throughput setting of Basis Sharing (512 x 32
  tokens, one forward) is a prefill row.

Times come from CUDA events after warm-up (on the CPU: ``perf_counter``); the peak is
``torch.cuda.max_memory_allocated`` over one batch's runs, this model alone on the GPU. Each row carries
``bound``: the dense model's weight bytes read per token over the compressed model's
(:func:`~sharvet.inference.traffic.weight_bytes_per_token`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch

from . import chunked
from .form import prepare
from .grouped import GroupedStages, describe
from .measure import BenchSettings, measure_generate, measure_steps, release
from .records import GIB, environment, records, table
from .shapes import compressed_random, plan_for, random_model, shape_config
from .traffic import stored_bytes


def _mode(settings: BenchSettings, device: torch.device) -> str | None:
    """The decode step's torch.compile mode as recorded (None: eager, or the CPU, which never compiles)."""
    if not settings.compiles(device):
        return None
    return (settings.compile_mode + ("+coordinate-descent" if settings.coordinate_descent else "")
            + ("+pdl" if settings.apply_inductor_pdl() else ""))


def _kernels(model: torch.nn.Module) -> str | None:
    """The grouped kernels' settings (tiles, PDL, ...; they come from the environment) where the model runs them:
    part of a record's merge key, so a run with other tiles adds records instead of replacing the defaults'."""
    uses = any(isinstance(m, GroupedStages) for m in model.modules())
    return "; ".join(filter(None, (describe(), chunked.describe()))) if uses else None


def _prefill_mode(settings: BenchSettings, device: torch.device) -> str | None:
    """The prefill and throughput forwards' torch.compile mode as recorded (None: eager; ``+graph``: replayed from a
    CUDA graph)."""
    graph = "+graph" if settings.captures_prefill(device) else ""
    if not settings.compiles_prefill(device):
        return f"eager{graph}" if graph else None
    return "default" + ("+pdl" if settings.apply_inductor_pdl() else "") + graph


def _variant(text: str, default_fuse: str) -> tuple[float, str]:
    ratio, _, fuse = text.partition(":")
    return float(ratio), fuse or default_fuse


Emit = Callable[[list[dict[str, Any]]], None]


def bench_shape(shape: str, variants: list[str], settings: BenchSettings, *, device: torch.device,
                dtype: torch.dtype, command: str, emit: Emit, method: str = "sharvet",
                log: Callable[[str], None] = print) -> None:
    """Dense vs each ``RATIO[:FUSE]`` variant at a published shape, random weights, the planner's groups.

    ``emit`` gets each variant's records as soon as they are measured (a run cut short keeps what it measured).
    """
    start = time.perf_counter()
    config = shape_config(shape)
    env = environment(device, dtype)
    parsed = [_variant(v, settings.fuse) for v in variants]
    dense = random_model(config, dtype, device, settings.seed)
    plans = {ratio: plan_for(dense, ratio, device, method) for ratio in dict.fromkeys(r for r, _ in parsed)}
    log(f"{shape}: dense model ({stored_bytes(dense) / GIB:.2f} GiB) and {method} plans for ratios "
        f"{', '.join(map(str, plans))} ({time.perf_counter() - start:.0f} s)")
    dense_run = measure_steps(dense, "dense", settings, device)
    log(f"{shape}: dense measured (decode compile {dense_run.compile_s} s; {time.perf_counter() - start:.0f} s)")
    del dense
    release(device)
    for ratio, fuse in parsed:
        model = compressed_random(config, plans[ratio], dtype, device, settings.seed)
        prepare(model, fuse=fuse, align=settings.align)
        run = measure_steps(model, f"r{ratio}", settings, device)
        run.note = model.sharvet_inference.line()
        plan = plans[ratio]
        rows = records(dense_run, run, shape=shape, ratio=ratio, path="step", command=command, env=env,
                       extra={"fuse": model.sharvet_inference.fuse, "kernels": _kernels(model),
                              "compile_mode": _mode(settings, device),
                              "prefill_compile_mode": _prefill_mode(settings, device),
                              "method": method, "groups": len(plan.groups),
                              "plan": f"{method} planner on random weights (structural similarity)",
                              "realised_ratio": round(plan.settings.budget.realised_ratio, 4)})
        log(f"{run.note} ({time.perf_counter() - start:.0f} s)\n{table(rows)}")
        emit(rows)
        del model
        release(device)


def bench_checkpoint(folder: str, original: str | None, settings: BenchSettings, *, device: torch.device,
                     dtype: torch.dtype, command: str, emit: Emit, verify: bool = True,
                     log: Callable[[str], None] = print) -> None:
    """A saved checkpoint against its original, both through ``generate``."""
    from ..api import load
    from ..loading import BUNDLED_ID, load_original
    from ..pipeline import plan_of

    start = time.perf_counter()
    model = load(folder, device=str(device), dtype=dtype, verify=verify)
    plan = plan_of(model)
    source = original or plan.settings.model_id
    prepare(model, fuse=settings.fuse, align=settings.align)
    fuse = model.sharvet_inference.fuse  # as resolved for where the model lies
    kernels = _kernels(model)
    run = measure_generate(model, "compressed", settings, device)
    run.note = model.sharvet_inference.line()
    log(f"{run.note} ({time.perf_counter() - start:.0f} s)")
    del model
    release(device)
    dense = load_original(None if source in (None, BUNDLED_ID) else source, dtype=str(dtype).removeprefix("torch."),
                          device=str(device)).model
    dense_run = measure_generate(dense, "dense", settings, device)
    del dense
    release(device)
    rows = records(dense_run, run, shape=f"checkpoint {Path(folder).name}", ratio=plan.ratio, path="generate",
                   command=command, env=environment(device, dtype),
                   extra={"fuse": fuse, "kernels": kernels, "compile_mode": _mode(settings, device),
                          "method": plan.method,
                          "original": source or BUNDLED_ID})
    log(f"{table(rows)}\n({time.perf_counter() - start:.0f} s)")
    emit(rows)
