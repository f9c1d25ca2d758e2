"""Timing a model: prefill, compiled decode steps (gpt-fast style) and ``generate`` token by token.

Times come from CUDA events after warm-up (on the CPU: ``perf_counter``); the peaks are
``torch.cuda.max_memory_allocated`` over one batch's runs, warm-ups included and (steady) timed calls alone.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn
from transformers.generation.streamers import BaseStreamer

from .form import DEFAULT_ALIGN
from .modes import CAPTURE_MODE
from .records import GIB, Measurement, ModelRun, spread
from .traffic import stored_bytes, weight_bytes_per_token


@dataclass
class BenchSettings:
    batches: tuple[int, ...] = (1, 16, 64)
    prefill_len: int = 2048
    #: prompt before the timed decode steps: short, so weights (not the KV cache) dominate what a step reads
    decode_prompt: int = 128
    decode_steps: int = 32
    warmup: int = 3
    #: timed windows of ``decode_steps`` steps each, over the same positions; the median is kept and the spread
    #: recorded (one window, as until the twelfth session, swung 1.18-1.37x at 0.5 from one process to the next on
    #: one H200 while dense held steady: the spread says whether that swing is inside a process)
    decode_windows: int = 5
    #: timed repetitions of a prefill / a generate call (the median is kept)
    repeats: int = 2
    #: Basis Sharing's throughput setting (batch, tokens), one forward; None skips it
    throughput: tuple[int, int] | None = (512, 32)
    fuse: str = "best"
    #: ranks padded to a multiple of this in the inference form (1: the planner's ranks as they are)
    align: int = DEFAULT_ALIGN
    compile: bool = True
    #: how the decode step runs on a GPU. "cuda-graph": compiled by torch.compile (no CUDA graphs of its own), then
    #: each step recorded once as a plain CUDA graph and replayed, as serving engines run a compiled model.
    #: "reduce-overhead" (torch.compile's own CUDA graphs) checks guards and inputs on the host at every call:
    #: 3-7 ms per step for the compressed LLaMA-3-8B shape (its thousands of tensors), as long as its GPU time, so
    #: those records timed the host (thirteenth session); 0.55 ms for dense. "max-autotune": reduce-overhead, and
    #: inductor times its own Triton matmul kernels against cuBLAS for each shape
    compile_mode: str = "cuda-graph"
    #: inductor's coordinate-descent tuning (gpt-fast's setting): a decode matmul with one row becomes a
    #: reduction kernel, tuned per shape and fused with its neighbours (the lambda multiply, the norm) instead of
    #: a cuBLAS GEMV launch of its own
    coordinate_descent: bool = False
    #: prefill and throughput forwards through torch.compile too, on a GPU (mode "default": inductor's fusion of
    #: the pointwise work, such as each compressed module's ``x * lambda``, with no CUDA graphs; one graph per
    #: shape), as a server runs them. Off by default: every record up to the ninth session timed them eager
    compile_prefill: bool = False
    #: each prefill and throughput shape's forward recorded once as a CUDA graph on a GPU (after compiling, when
    #: compiled) and its replays timed, as a server replays captured prefill buckets: the host then issues one call
    #: a forward. Why: compiled without graphs, the compressed model's prefill at 2,048 tokens issues 1,184 kernels
    #: against dense's 774, and with each module as one opaque operator the host took 36 of the forward's 42 ms
    #: (H200, LLaMA-3-8B shapes, seventeenth session). Dense and compressed alike; off by default
    prefill_graph: bool = False
    #: inductor's programmatic dependent launch for its own Triton kernels (``torch._inductor.config.triton.
    #: enable_pdl``, Hopper and newer), dense and compressed alike: the norms, rotary and activation kernels between
    #: the matmuls then start while the kernel before them finishes, as the grouped kernels already do among
    #: themselves. None leaves inductor's setting as it is (``TORCHINDUCTOR_ENABLE_PDL``); not yet measured
    inductor_pdl: bool | None = None
    seed: int = 0

    def compiles(self, device: torch.device) -> bool:
        """Whether the decode step is compiled on ``device`` (a GPU only: the CPU runs it eagerly)."""
        return self.compile and device.type == "cuda"

    def compiles_prefill(self, device: torch.device) -> bool:
        return self.compile_prefill and self.compiles(device)

    def captures_prefill(self, device: torch.device) -> bool:
        """Whether prefill and throughput forwards replay a CUDA graph of their own (a GPU only)."""
        return self.prefill_graph and device.type == "cuda"

    def captures(self, device: torch.device) -> bool:
        """Whether decode steps replay a CUDA graph of their own (the step compiled without torch.compile's)."""
        return self.compile_mode == CAPTURE_MODE and self.compiles(device)

    def torch_compile_mode(self) -> str:
        return "default" if self.compile_mode == CAPTURE_MODE else self.compile_mode

    def apply_inductor_pdl(self) -> bool:
        """Set inductor's PDL as asked (read when a graph compiles, so for the process) and say whether it is on.
        Fails in one line on a torch whose inductor has no such setting."""
        triton_config = torch._inductor.config.triton
        if not hasattr(triton_config, "enable_pdl"):
            if self.inductor_pdl:
                raise ValueError(f"torch {torch.__version__}'s inductor has no programmatic dependent launch "
                                 "(torch._inductor.config.triton.enable_pdl): drop --inductor-pdl")
            return False
        if self.inductor_pdl is not None:
            triton_config.enable_pdl = self.inductor_pdl
        return bool(triton_config.enable_pdl)



# ---------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def elapsed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds ``fn`` takes on ``device`` (CUDA events on a GPU, so only device time between them counts)."""
    return timed(fn, device)[0]


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """``(device seconds, host seconds)`` of ``fn``: on a GPU the events' time and how long the host took to issue
    the work. Why both: an eager forward of a thousand small kernels can be bound by the host, and then the events'
    time measures Python, not the GPU (host seconds close to device seconds say so). On a CPU both are wall time."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        t = time.perf_counter()
        fn()
        host = time.perf_counter() - t
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000, host
    t = time.perf_counter()
    fn()
    wall = time.perf_counter() - t
    return wall, wall


@dataclass
class DecodeTiming:
    """One decode measurement: what the first warm-up took (compiling), and each timed window's seconds per step on
    the device and the host's seconds per step to issue it (host close to device: the steps wait for Python, not
    for the GPU), in the order they ran. The step time kept is the windows' median."""

    warmup_seconds: float
    windows: tuple[float, ...]
    host_windows: tuple[float, ...]

    @property
    def seconds_per_step(self) -> float:
        return statistics.median(self.windows)

    @property
    def spread(self) -> float:
        return spread(self.windows)


def capture_stream(device: torch.device) -> torch.cuda.Stream:
    """The one stream per GPU on which every warm-up before a CUDA graph and every capture runs. cuBLAS keeps a
    workspace for each stream it has run on (32 MiB on an H200) as long as the process lives: a new stream per
    capture left 32 MiB allocated per measured model, which the next model's peak then counted (thirteenth
    session). A matmul on it when it is made creates that workspace, so a measurement started after (dense's, the
    first) counts it as every later one does."""
    return _capture_stream(torch.device(device.type, torch.cuda.current_device() if device.index is None
                                        else device.index))


@functools.cache
def _capture_stream(device: torch.device) -> torch.cuda.Stream:
    stream = torch.cuda.Stream(device)
    a = torch.zeros(8, 8, device=device, dtype=torch.bfloat16)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        a @ a
    torch.cuda.current_stream(device).wait_stream(stream)
    return stream


def graph_seconds(fn: Callable[[], Any], device: torch.device, repeats: int, inner: int = 1) -> float:
    """Seconds per call of ``fn``, kernels only: on a GPU ``inner`` calls are recorded as one CUDA graph (after warm-up
    on a side stream) and its replays timed by events, so launch overhead does not count; a plain loop on a CPU."""
    if device.type != "cuda":
        fn()
        t = time.perf_counter()
        for _ in range(repeats * inner):
            fn()
        return (time.perf_counter() - t) / (repeats * inner)
    graph = record_graph(fn, device, warmups=3, calls=inner)
    graph.replay()
    return elapsed(lambda: [graph.replay() for _ in range(repeats)], device) / (repeats * inner)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


class PeakMemory:
    """Two peaks from CUDA's one peak counter: the whole run's (warm-ups, compiling and graph capture included) and
    the steady one, over the timed calls alone, which a server keeps paying once it has warmed up. Why both: the
    whole run's peak counts what compiling allocates, and that depends on inductor's cache: dense LLaMA-3-8B shapes
    took 0.583 GiB beyond their weights compiled from a cold cache and 0.540 from a warm one, the same code in the
    same session (H200, eighteenth session), which moved the compressed model's excess over dense by ~44 MiB.
    A replayed CUDA graph allocates nothing, so the steady peak adds what the replayed graphs' pools hold beyond
    their live tensors (the eighteenth session's first steady records, before this, left those pools out)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.whole: float | None = None
        self.steady: float | None = None

    def start(self) -> None:
        """Forget both peaks (a new row's measurement begins)."""
        self.whole = self.steady = None
        reset_peak(self.device)

    def steady_start(self) -> None:
        """The warm-up is over: from here the counter measures timed calls (and what they need between them)."""
        self._fold()
        reset_peak(self.device)

    def steady_end(self, pools: Iterable[Any] = ()) -> None:
        """The timed calls are over; ``pools``: the memory pools of the CUDA graphs they replayed (still alive),
        whose buffers a replay writes without allocating them, so the counter alone would leave them out."""
        peak = peak_gib(self.device)
        if peak is not None:
            self.steady = max(self.steady or 0.0, peak + pool_free_gib(pools))
        self._fold()

    def peaks(self) -> dict[str, float | None]:
        """Both peaks as :class:`Measurement` takes them."""
        return {"peak_gib": self.whole, "steady_peak_gib": self.steady}

    def _fold(self) -> None:
        peak = peak_gib(self.device)
        if peak is not None:
            self.whole = max(self.whole or 0.0, peak)


def pool_free_gib(pools: Iterable[Any]) -> float:
    """GiB that CUDA graphs' private memory pools (``CUDAGraph.pool()``) hold beyond their live tensors: the
    temporaries of the recorded calls, freed during capture but kept for every replay."""
    ids = set(pools)
    if not ids:
        return 0.0
    return sum(s["total_size"] - s["allocated_size"] for s in torch.cuda.memory_snapshot()
               if s["segment_pool_id"] in ids) / GIB


def model_run(model: nn.Module, label: str, device: torch.device) -> ModelRun:
    """A model's run before any measurement, with what the GPU already holds beyond its weights (``resident_gib``):
    whatever is allocated then counts in every peak of the run, so it tells memory left over from building the
    model (or from an earlier model) from memory the forward passes take."""
    stored = stored_bytes(model) / GIB
    resident = torch.cuda.memory_allocated(device) / GIB - stored if device.type == "cuda" else None
    return ModelRun(label, weight_bytes_per_token(model), stored, resident_gib=resident)


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


#: decode steps run uncaptured before a step is recorded as a CUDA graph (the first compiles)
CAPTURE_WARMUP = 2


def record_graph(fn: Callable[[], Any], device: torch.device, *, warmups: int = 1, calls: int = 1,
                 reset: Callable[[], Any] | None = None) -> torch.cuda.CUDAGraph:
    """``calls`` calls of ``fn`` recorded as one CUDA graph on the capture stream, after ``warmups`` calls there
    (which compile ``fn`` when compiled and warm up what capture needs). ``reset`` (e.g. a static cache's) runs
    before the warm-up and before the capture, outside the graph: transformers may write a prefill at the cache's
    own device-side position, so a forward after another without it writes past the end."""
    stream, current = capture_stream(device), torch.cuda.current_stream(device)
    reset = reset or (lambda: None)
    reset()
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        for _ in range(warmups):
            fn()
    current.wait_stream(stream)
    reset()
    stream.wait_stream(current)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for _ in range(calls):
            fn()
    return graph


class CapturedStep:
    """One decode step recorded as a CUDA graph: the next token written back as the next step's input, the position
    advanced, the static cache written in place (its tensors and write position are device tensors). Replaying
    it costs the host one call per step, whatever the model's number of tensors."""

    def __init__(self, step: Callable, token: torch.Tensor, pos: torch.Tensor, cache, device: torch.device) -> None:
        """Records one step of ``step`` (already warmed up on the capture stream by the caller)."""
        self.token, self.pos, self.cache = token.clone(), pos, cache

        def one_step() -> None:
            self.token.copy_(step(self.token, pos, cache))
            pos.add_(1)

        self.graph = record_graph(one_step, device, warmups=0)

    def serves(self, token: torch.Tensor, pos: torch.Tensor, cache) -> bool:
        return pos is self.pos and cache is self.cache and token.shape == self.token.shape

    def run(self, token: torch.Tensor, n: int, out: list | None = None) -> torch.Tensor:
        """``n`` steps from ``token``; the returned token is the graph's own input (the next run's default)."""
        self.token.copy_(token)
        for _ in range(n):
            self.graph.replay()
            if out is not None:
                out.append(self.token.clone())
        return self.token


class StepRunner:
    """Prefill and one-token decode steps of a model with a static cache (gpt-fast style)."""

    def __init__(self, model: nn.Module, settings: BenchSettings, device: torch.device,
                 compiler: Callable[[Callable], Callable] | None = None,
                 prefill_compiler: Callable[[Callable], Callable] | None = None) -> None:
        """``compiler`` wraps the decode step; default: ``torch.compile(mode=settings.compile_mode)`` on a GPU
        when ``settings.compile``, else eager. ``prefill_compiler`` wraps the prefill; default:
        ``torch.compile`` (no CUDA graphs) on a GPU when ``settings.compile_prefill``, else eager."""
        self.model, self.settings, self.device = model, settings, device
        self.cache_kw = _cache_kwarg(model)
        if compiler is None and settings.compiles(device):
            # one graph per batch size, as a server captures one CUDA graph per batch size: with dynamic=None a
            # second batch size recompiles with a symbolic batch, whose kernels may not be the specialised ones
            compiler = functools.partial(torch.compile, mode=settings.torch_compile_mode(), dynamic=False)
            # read when the step compiles (its first call, within this runner's use), so set for the process
            torch._inductor.config.coordinate_descent_tuning = settings.coordinate_descent
            settings.apply_inductor_pdl()
        self.step = self._step if compiler is None else compiler(self._step)
        self.captures = settings.captures(device)
        self._captured: CapturedStep | None = None
        # its own function, so its graphs (one per prefill shape) count apart from the decode step's
        if prefill_compiler is None and settings.compiles_prefill(device):
            prefill_compiler = functools.partial(torch.compile, dynamic=False)
        self.prefill_compiled = prefill_compiler is not None
        self.prefill_step = self._prefill if prefill_compiler is None else prefill_compiler(self._prefill)
        self.prefill_captures = settings.captures_prefill(device)
        self.memory = PeakMemory(device)

    def _prefill(self, ids: torch.Tensor, cache, pos: torch.Tensor | None = None) -> torch.Tensor:
        return self._step(ids, pos, cache)

    def _step(self, ids: torch.Tensor, pos: torch.Tensor | None, cache) -> torch.Tensor:
        """The greedy next token of each sequence (``pos`` None: a prefill, positions from the cache)."""
        out = self.model(input_ids=ids, position_ids=pos, use_cache=True, logits_to_keep=1, **{self.cache_kw: cache})
        return out.logits[:, -1:].argmax(-1)

    def prefill(self, batch: int, length: int,
                watch: contextlib.AbstractContextManager | None = None) -> tuple[float, float]:
        """Median seconds of a ``batch x length`` forward into an empty static cache (after one warm-up), and the
        median seconds the host took to issue it (:func:`timed`). A compiled prefill gets its cache filled by one
        eager forward first: transformers' static cache allocates its tensors on first use, and a graph traced
        over an unallocated cache is recompiled at the next call (on the H200, every timed call recompiled).
        ``watch`` (e.g. a profiler) is entered around the timed forwards only, not that eager one."""
        ids = _ids(self.model, batch, length, self.device, self.settings.seed)
        cache = _static_cache(self.model, length)
        # positions as a tensor when captured: without them transformers reads the cache's length on the host
        pos = torch.arange(length, device=self.device).expand(batch, -1) if self.prefill_captures else None
        if self.prefill_compiled or self.prefill_captures:
            self._prefill(ids, cache, pos)

        forward = functools.partial(self.prefill_step, ids, cache, pos)
        pools = ()
        if self.prefill_captures:
            graph = record_graph(forward, self.device, reset=cache.reset)
            forward, pools = graph.replay, (graph.pool(),)
        cache.reset()
        timed(forward, self.device)  # the warm-up
        self.memory.steady_start()
        times = []
        with watch or contextlib.nullcontext():
            for _ in range(self.settings.repeats):
                cache.reset()
                times.append(timed(forward, self.device))
        self.memory.steady_end(pools)
        return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)

    def _start(self, prompt: torch.Tensor, new: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Prefill ``prompt`` into a static cache with room for ``new`` more tokens: (first token, position, cache)."""
        cache = _static_cache(self.model, prompt.shape[1] + new)
        pos = torch.full((1, 1), prompt.shape[1], dtype=torch.long, device=self.device)
        return self._step(prompt, None, cache), pos, cache

    def _steps(self, token: torch.Tensor, pos: torch.Tensor, cache, n: int, out: list | None = None) -> torch.Tensor:
        if not self.captures:
            return self._plain_steps(token, pos, cache, n, out)
        captured = self._captured
        if captured is None or not captured.serves(token, pos, cache):
            first = min(n, CAPTURE_WARMUP)  # run as they are (they compile, and warm up what capture needs)
            token = self._plain_steps(token, pos, cache, first, out, side_stream=True)
            n -= first
            if n == 0:
                return token
            captured = self._captured = CapturedStep(self.step, token, pos, cache, self.device)
        return captured.run(token, n, out)

    def _plain_steps(self, token: torch.Tensor, pos: torch.Tensor, cache, n: int, out: list | None = None,
                     side_stream: bool = False) -> torch.Tensor:
        """``n`` steps through ``self.step``; ``side_stream``: on the capture stream, as warm-up before a CUDA
        graph's capture should run (lazily made per-stream state then exists)."""
        if side_stream:
            stream = capture_stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                token = self._plain_steps(token, pos, cache, n, out)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            return token
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

    def decode(self, batch: int, watch: contextlib.AbstractContextManager | None = None) -> DecodeTiming:
        """Seconds per decode step after ``decode_prompt`` tokens (the median of ``decode_windows`` timed windows,
        each from the same prompt, positions and token), and the seconds the first warm-up steps took (they compile
        and record the CUDA graph). ``watch`` (e.g. a profiler) is entered around one timed window only."""
        s = self.settings
        prompt = _ids(self.model, batch, s.decode_prompt, self.device, s.seed)
        token, pos, cache = self._start(prompt, s.warmup + s.decode_steps)
        _sync(self.device)
        start = time.perf_counter()
        token = self._steps(token, pos, cache, s.warmup)
        _sync(self.device)
        warmup = time.perf_counter() - start
        self.memory.steady_start()
        windows: list[tuple[float, float]] = []
        for i in range(1 if watch is not None else s.decode_windows):
            if i:  # back to where the first window started: the same cache tensors (the recorded graph's)
                cache.reset()
                pos.fill_(prompt.shape[1])
                token = self._steps(self._step(prompt, None, cache), pos, cache, s.warmup)
            with watch or contextlib.nullcontext():
                windows.append(timed(lambda: self._steps(token, pos, cache, s.decode_steps), self.device))
        self.memory.steady_end(() if self._captured is None else (self._captured.graph.pool(),))
        return DecodeTiming(warmup, tuple(w[0] / s.decode_steps for w in windows),
                            tuple(w[1] / s.decode_steps for w in windows))


@torch.no_grad()
def measure_steps(model: nn.Module, label: str, settings: BenchSettings, device: torch.device) -> ModelRun:
    run = model_run(model, label, device)
    runner = StepRunner(model, settings, device)
    if runner.captures:  # its cuBLAS workspace exists before the first peak (see capture_stream)
        capture_stream(device)
    compile_s = 0.0
    memory = runner.memory
    for batch in settings.batches:
        memory.start()
        prefill, host = runner.prefill(batch, settings.prefill_len)
        timing = runner.decode(batch)
        compile_s += timing.warmup_seconds
        peaks = memory.peaks()
        run.rows[("prefill", batch, settings.prefill_len)] = Measurement(
            prefill, batch * settings.prefill_len / prefill, host_seconds=host, **peaks)
        per_step = timing.seconds_per_step
        run.rows[("decode", batch, 1)] = Measurement(per_step, batch / per_step, windows=timing.windows,
                                                     host_windows=timing.host_windows, **peaks)
    run.compile_s = round(compile_s, 1) if settings.compiles(device) else None
    if settings.throughput is not None:
        batch, length = settings.throughput
        memory.start()
        seconds, host = runner.prefill(batch, length)
        run.rows[("throughput", batch, length)] = Measurement(seconds, batch * length / seconds, host_seconds=host,
                                                              **memory.peaks())
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
    run = model_run(model, label, device)
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
        reset_peak(device)
        t = time.perf_counter()
        generate(ids)  # compiles the decode step on a GPU
        run.compile_s = round((run.compile_s or 0) + time.perf_counter() - t, 1)
        timed = [generate(ids) for _ in range(s.repeats)]
        first = statistics.median(t for t, _ in timed)
        per_step = statistics.median(t for _, t in timed)
        peak = peak_gib(device)
        run.rows[("ttft", batch, s.decode_prompt)] = Measurement(first, batch * s.decode_prompt / first, peak)
        run.rows[("decode", batch, 1)] = Measurement(per_step, batch / per_step, peak)
    return run
