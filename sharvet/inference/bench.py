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
  prefill_len`` tokens into a static cache; decode is a gpt-fast loop: one token per step through
  ``torch.compile(mode="reduce-overhead")`` (CUDA graphs) with a static cache, no host sync inside the timed
  steps. The throughput setting of Basis Sharing (512 x 32 tokens, one forward) is a prefill row.

Times come from CUDA events after warm-up (on the CPU: ``perf_counter``); the peak is
``torch.cuda.max_memory_allocated`` over one batch's runs, this model alone on the GPU. Each row carries
``bound``: the dense model's weight bytes read per token over the compressed model's
(:func:`~sharvet.inference.traffic.weight_bytes_per_token`).
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import gc
import inspect
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from transformers.generation.streamers import BaseStreamer

from ..models import adapter_for
from ..modules import SharedBasisLinear
from .form import prepare
from .traffic import stored_bytes, weight_bytes_per_token

GIB = 2**30
#: published shapes (the models' config.json); nothing is downloaded
SHAPES = {
    "llama3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0,
                      max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "tiny": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=256, rope_theta=10000.0,
                 max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False),
}


@dataclass
class BenchSettings:
    batches: tuple[int, ...] = (1, 16, 64)
    prefill_len: int = 2048
    #: prompt before the timed decode steps: short, so weights (not the KV cache) dominate what a step reads
    decode_prompt: int = 128
    decode_steps: int = 32
    warmup: int = 3
    #: timed repetitions of a prefill / a generate call (the median is kept)
    repeats: int = 2
    #: Basis Sharing's throughput setting (batch, tokens), one forward; None skips it
    throughput: tuple[int, int] | None = (512, 32)
    fuse: str = "auto"
    compile: bool = True
    seed: int = 0


@dataclass
class Measurement:
    seconds: float
    tokens_per_s: float
    peak_gib: float | None = None


@dataclass
class ModelRun:
    """One model's measurements, keyed by (phase, batch, tokens per step)."""

    label: str
    weight_bytes_per_token: int
    stored_gib: float
    rows: dict[tuple[str, int, int], Measurement] = field(default_factory=dict)
    compile_s: float | None = None
    note: str = ""


# ---------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def elapsed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds ``fn`` takes on ``device`` (CUDA events on a GPU, so only device time between them counts)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def release(device: torch.device) -> None:
    """Drop compiled graphs (and their CUDA-graph memory pools) and cached blocks between models."""
    torch.compiler.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------- the step loop (shapes)
def _cache_kwarg(model: nn.Module) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` (5.2x); use whichever this version takes."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _static_cache(model: nn.Module, length: int):
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=length)


def _ids(model: nn.Module, batch: int, length: int, device: torch.device, seed: int) -> torch.Tensor:
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    return torch.randint(min(100, vocab // 2), vocab, (batch, length), generator=g).to(device)


class StepRunner:
    """Prefill and one-token decode steps of a model with a static cache (gpt-fast style)."""

    def __init__(self, model: nn.Module, settings: BenchSettings, device: torch.device,
                 compiler: Callable[[Callable], Callable] | None = None) -> None:
        """``compiler`` wraps the decode step; default: ``torch.compile(mode="reduce-overhead")`` on a GPU when
        ``settings.compile``, else eager."""
        self.model, self.settings, self.device = model, settings, device
        self.cache_kw = _cache_kwarg(model)
        if compiler is None and settings.compile and device.type == "cuda":
            compiler = functools.partial(torch.compile, mode="reduce-overhead")
        self.step = self._step if compiler is None else compiler(self._step)

    def _step(self, ids: torch.Tensor, pos: torch.Tensor | None, cache) -> torch.Tensor:
        """The greedy next token of each sequence (``pos`` None: a prefill, positions from the cache)."""
        out = self.model(input_ids=ids, position_ids=pos, use_cache=True, logits_to_keep=1, **{self.cache_kw: cache})
        return out.logits[:, -1:].argmax(-1)

    def prefill(self, batch: int, length: int) -> float:
        """Median seconds of a ``batch x length`` forward into an empty static cache (after one warm-up)."""
        ids = _ids(self.model, batch, length, self.device, self.settings.seed)
        cache = _static_cache(self.model, length)
        times = []
        for i in range(1 + self.settings.repeats):
            cache.reset()
            t = elapsed(lambda: self._step(ids, None, cache), self.device)
            if i:
                times.append(t)
        return statistics.median(times)

    def _start(self, prompt: torch.Tensor, new: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Prefill ``prompt`` into a static cache with room for ``new`` more tokens: (first token, position, cache)."""
        cache = _static_cache(self.model, prompt.shape[1] + new)
        pos = torch.full((1, 1), prompt.shape[1], dtype=torch.long, device=self.device)
        return self._step(prompt, None, cache), pos, cache

    def _steps(self, token: torch.Tensor, pos: torch.Tensor, cache, n: int, out: list | None = None) -> torch.Tensor:
        for _ in range(n):
            token = self.step(token, pos, cache).clone()
            pos.add_(1)
            if out is not None:
                out.append(token)
        return token

    def greedy(self, prompt: torch.Tensor, new: int) -> torch.Tensor:
        """``new`` greedy tokens after ``prompt`` through the decode step (the tests compare compiled and eager)."""
        token, pos, cache = self._start(prompt, new)
        out = [token]
        self._steps(token, pos, cache, new - 1, out)
        return torch.cat(out, dim=1)

    def decode(self, batch: int) -> tuple[float, float]:
        """Seconds per decode step after ``decode_prompt`` tokens, and the seconds the warm-up steps took (they
        compile and record the CUDA graph)."""
        s = self.settings
        token, pos, cache = self._start(_ids(self.model, batch, s.decode_prompt, self.device, s.seed),
                                        s.warmup + s.decode_steps)
        _sync(self.device)
        start = time.perf_counter()
        token = self._steps(token, pos, cache, s.warmup)
        _sync(self.device)
        warmup = time.perf_counter() - start
        return elapsed(lambda: self._steps(token, pos, cache, s.decode_steps), self.device) / s.decode_steps, warmup


@torch.no_grad()
def measure_steps(model: nn.Module, label: str, settings: BenchSettings, device: torch.device) -> ModelRun:
    run = ModelRun(label, weight_bytes_per_token(model), stored_bytes(model) / GIB)
    runner = StepRunner(model, settings, device)
    compile_s = 0.0
    for batch in settings.batches:
        _reset_peak(device)
        prefill = runner.prefill(batch, settings.prefill_len)
        per_step, warmup = runner.decode(batch)
        compile_s += warmup
        peak = _peak(device)
        run.rows[("prefill", batch, settings.prefill_len)] = Measurement(prefill, batch * settings.prefill_len / prefill,
                                                                         peak)
        run.rows[("decode", batch, 1)] = Measurement(per_step, batch / per_step, peak)
    run.compile_s = round(compile_s, 1) if settings.compile and device.type == "cuda" else None
    if settings.throughput is not None:
        batch, length = settings.throughput
        _reset_peak(device)
        seconds = runner.prefill(batch, length)
        run.rows[("throughput", batch, length)] = Measurement(seconds, batch * length / seconds, _peak(device))
    return run


# ---------------------------------------------------------------------- generate (checkpoints)
class TokenClock(BaseStreamer):
    """A ``generate`` streamer that only notes when each new token reaches the host (the prompt comes first)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, _tokens: torch.Tensor) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


@torch.no_grad()
def measure_generate(model: nn.Module, label: str, settings: BenchSettings, device: torch.device) -> ModelRun:
    """``generate`` end to end, each call timed token by token: TTFT to the first new token, then decode steps.

    On a GPU the cache is static, so transformers compiles the decode step (CUDA graphs); the first call of each
    batch size compiles and is not timed.
    """
    run = ModelRun(label, weight_bytes_per_token(model), stored_bytes(model) / GIB)
    s = settings
    pad = model.generation_config.pad_token_id
    pad = model.generation_config.eos_token_id if pad is None else pad
    pad = pad[0] if isinstance(pad, (list, tuple)) else pad
    static = {"cache_implementation": "static"} if device.type == "cuda" and s.compile else {}

    def generate(ids: torch.Tensor) -> tuple[float, float]:
        clock = TokenClock()
        _sync(device)
        start = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=s.decode_steps,
                       min_new_tokens=s.decode_steps, pad_token_id=pad, streamer=clock, **static)
        first, last = clock.times[1], clock.times[-1]
        return first - start, (last - first) / (len(clock.times) - 2)

    for batch in s.batches:
        ids = _ids(model, batch, s.decode_prompt, device, s.seed)
        _reset_peak(device)
        t = time.perf_counter()
        generate(ids)  # compiles the decode step on a GPU
        run.compile_s = round((run.compile_s or 0) + time.perf_counter() - t, 1)
        timed = [generate(ids) for _ in range(s.repeats)]
        first = statistics.median(t for t, _ in timed)
        per_step = statistics.median(t for _, t in timed)
        peak = _peak(device)
        run.rows[("ttft", batch, s.decode_prompt)] = Measurement(first, batch * s.decode_prompt / first, peak)
        run.rows[("decode", batch, 1)] = Measurement(per_step, batch / per_step, peak)
    return run


# ---------------------------------------------------------------------- models
def shape_config(shape: str):
    from transformers import AutoConfig

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    spec = dict(SHAPES[shape])
    return AutoConfig.for_model(spec.pop("model_type"), **spec)


def random_model(config, dtype: torch.dtype, device: torch.device, seed: int) -> nn.Module:
    """transformers' own initialisation, run on ``device`` (an 8B model takes seconds on a GPU)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def plan_for(model: nn.Module, ratio: float, device: torch.device, method: str = "sharvet"):
    """The plan sharvet's planner makes for this model: the method's preset, and where it groups by similarity,
    structural similarity only (CKA needs calibration data)."""
    from ..config import CompressionConfig
    from ..planning import plan_compression
    from ..similarity import SimilarityConfig

    cfg = CompressionConfig.preset(method, ratio=ratio, similarity=SimilarityConfig(use_cka=False))
    return plan_compression(adapter_for(model), None, cfg, device=device, progress=False)[0]


@torch.no_grad()
def compressed_random(config, plan, dtype: torch.dtype, device: torch.device, seed: int) -> nn.Module:
    """A model with ``plan``'s modules installed and random factors (lambdas 1 +- 0.05, as after refinement)."""
    from ..install import install_plan

    model = random_model(config, dtype, device, seed)
    install_plan(adapter_for(model), plan, lambda _g: None)
    gen = torch.Generator(device=device).manual_seed(seed)
    for m in model.modules():
        if isinstance(m, SharedBasisLinear):
            for p in (m.basis, m.v):
                p.normal_(0.0, 0.02, generator=gen)
            if m.scale is not None:
                m.scale.normal_(1.0, 0.05, generator=gen)
    return model


# ---------------------------------------------------------------------- records
def _git_describe() -> str | None:
    import subprocess

    root = Path(__file__).resolve().parents[2]
    with contextlib.suppress(Exception):
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    return None


def environment(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": name, "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__,
            "transformers": transformers.__version__, "commit": _git_describe(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _minus(peak: float | None, stored: float) -> float | None:
    return None if peak is None else round(peak - stored, 3)


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


def records(dense: ModelRun, compressed: ModelRun, *, shape: str, ratio: float, path: str, command: str,
            env: dict[str, Any], extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One record per (phase, batch, tokens per step) both runs measured."""
    bound = dense.weight_bytes_per_token / compressed.weight_bytes_per_token
    out = []
    for key in dense.rows:
        if key not in compressed.rows:
            continue
        d, c = dense.rows[key], compressed.rows[key]
        phase, batch, tokens = key
        out.append({
            "shape": shape, "ratio": ratio, "phase": phase, "path": path, "batch": batch,
            "tokens_per_step": 1 if phase == "decode" else tokens,
            "dense_tokens_per_s": _sig(d.tokens_per_s), "compressed_tokens_per_s": _sig(c.tokens_per_s),
            "speedup": _sig(c.tokens_per_s / d.tokens_per_s), "bound": _sig(bound),
            "dense_ms": _sig(d.seconds * 1000), "compressed_ms": _sig(c.seconds * 1000),
            "peak_gpu_gib_dense": None if d.peak_gib is None else round(d.peak_gib, 3),
            "peak_gpu_gib_compressed": None if c.peak_gib is None else round(c.peak_gib, 3),
            "stored_gib_dense": round(dense.stored_gib, 3), "stored_gib_compressed": round(compressed.stored_gib, 3),
            # peak minus the weights: KV cache, activations, CUDA-graph pools (the target: compressed <= dense)
            "workspace_gib_dense": _minus(d.peak_gib, dense.stored_gib),
            "workspace_gib_compressed": _minus(c.peak_gib, compressed.stored_gib),
            "weight_bytes_per_token_dense": dense.weight_bytes_per_token,
            "weight_bytes_per_token_compressed": compressed.weight_bytes_per_token,
            "compile_s_dense": dense.compile_s, "compile_s_compressed": compressed.compile_s,
            "inference_form": compressed.note, **(extra or {}), **env, "command": command,
        })
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """The records as a Markdown table, the bound beside each speedup."""
    head = ("| shape | ratio | fuse | phase | batch | tokens/step | dense tok/s | compressed tok/s | speedup | bound | "
            "peak GiB dense | peak GiB compressed |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['ratio']} | {r.get('fuse', '')} | {r['phase']} | {r['batch']} | "
                     f"{r['tokens_per_step']} | {r['dense_tokens_per_s']:,.0f} | {r['compressed_tokens_per_s']:,.0f} | "
                     f"{r['speedup']:.2f}x | {r['bound']:.2f}x | {r['peak_gpu_gib_dense']} | "
                     f"{r['peak_gpu_gib_compressed']} |")
    return "\n".join(lines)


def _key(r: dict[str, Any]) -> tuple:
    return tuple(r.get(k) for k in ("shape", "method", "ratio", "fuse", "phase", "path", "batch", "tokens_per_step", "device",
                                    "dtype"))


def write_records(path: str | Path, new: list[dict[str, Any]]) -> Path:
    """Merge into ``path``'s ``records``: a new record replaces one of the same setting, others are kept."""
    path = Path(path)
    old = json.loads(path.read_text())["records"] if path.is_file() else []
    keys = {_key(r) for r in new}
    merged = [r for r in old if _key(r) not in keys] + new
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"records": merged}, indent=1) + "\n")
    return path


# ---------------------------------------------------------------------- the two benchmarks
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
        prepare(model, fuse=fuse)
        run = measure_steps(model, f"r{ratio}", settings, device)
        run.note = model.sharvet_inference.line()
        plan = plans[ratio]
        rows = records(dense_run, run, shape=shape, ratio=ratio, path="step", command=command, env=env,
                       extra={"fuse": fuse, "method": method, "groups": len(plan.groups),
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
    prepare(model, fuse=settings.fuse)
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
                   extra={"fuse": settings.fuse, "method": plan.method, "original": source or BUNDLED_ID})
    log(f"{table(rows)}\n({time.perf_counter() - start:.0f} s)")
    emit(rows)
