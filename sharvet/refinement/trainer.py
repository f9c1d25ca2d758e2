"""Lightweight discrepancy refinement (paper section 3.4): train lambda and sigma against eq. 13.

One code path for CPU, one GPU and DDP (``accelerate launch`` / ``torchrun``) through HF accelerate.
Data order is ours, not a DataLoader's, so that a run can be resumed exactly: epoch ``e`` visits the
sequences in ``randperm(N, seed + e)``; micro-batch ``j`` of process ``k`` of ``W`` takes positions
``[(j W + k) b, (j W + k + 1) b)``. Each epoch uses ``N // (b W accum)`` whole optimizer steps; the few
sequences left over (fewer than one global batch) are skipped that epoch and, being shuffled, differ
from epoch to epoch.

Departures from the reference code (see ``losses.py`` for the loss itself):

* ``weight_decay`` is AdamW's decoupled decay and defaults to 0. The reference's 0.01 decays lambda
  towards 0 although it starts at, and should stay near, 1; keeping the vectors close to where they
  started is the job of the L2 term, which measures the distance to the initial values.
* bf16 autocast on GPU (the reference: fp16), nothing on CPU; if the model's trainable vectors are
  half precision they are kept in float32 while training (Adam on bf16 vectors loses the small steps)
  and in checkpoints, and cast back to the model's dtype when training ends. The teacher runs under
  the same autocast and ``no_grad``.
* sigma trains relative to its start and eq. 13's weights are matched to the LM loss's scale by
  default (``presets.py``); the ``reference`` preset restores the authors' settings.
* A non-finite loss or gradient stops the run before the optimizer step with
  :class:`NonFiniteLossError`: nothing non-finite is applied, checkpointed or returned.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm

from ..rank_padding import DEFAULT_ALIGN, Padding, pad_ranks, trim_ranks
from . import sharding
from . import state as ckpt
from .guard import NonFiniteLossError, require_finite
from .history import HISTORY, PLOT, HistoryWriter, plot_history
from .losses import LossOutput, LossWeights, refinement_loss
from .presets import preset
from .vectors import (MATRIX_MODES, ParameterSummary, VECTOR_MODES, mark_trainable, optimizer_groups,
                      parameter_summary, release_sigma)

log = logging.getLogger(__name__)

MODES = (*VECTOR_MODES, "lora")
#: fields that do not change the trajectory, so a resumed run may change them
_FREE_FIELDS = {"gradient_checkpointing", "teacher_device", "checkpoint_every", "max_steps", "output_dir", "progress",
                "cpu", "fsdp", "compile"}



@dataclass
class RefineConfig:
    """Hyper-parameters of the refinement. ``None`` fields take the value of ``preset`` (``presets.py``)."""

    mode: str = "both"
    #: ``default`` (matched loss weights, relative sigma) or ``reference`` (the authors' code)
    preset: str = "default"
    lr: float | None = None
    #: learning rate of the matrices in modes ``factors`` and ``all`` (None: the preset's)
    lr_matrices: float | None = None
    #: relative learning rate of the groups' shared bases in mode ``all`` (None: ``lr_matrices``)
    lr_bases: float | None = None
    #: passes over the training windows in steps of 16 sequences; the CLI takes the method's
    #: (``Method.refine_epochs``): 4 for the default method, 2 (the paper's) for the paper's methods
    epochs: int = 4
    batch_size: int = 16
    grad_accum: int = 1
    #: AdamW decoupled decay (towards 0). 0 by default: the L2 term regularises towards the initial values
    weight_decay: float = 0.0
    #: after each optimizer step, every trained tensor moves this share (times the schedule's factor) of the way back
    #: to its initial value: a pull towards the compressed factors decoupled from Adam's per-entry scaling, which
    #: the L2 term in the loss is not (AdamW's argument, applied towards the start instead of towards 0)
    decay_to_init: float = 0.0
    #: LinearLR from 1.0 to this factor of ``lr`` over the whole run
    lr_end_factor: float = 0.8
    grad_clip: float = 1.0
    seed: int = 0
    #: ranks padded with zeros to a multiple of this while training (``sharvet.rank_padding``: exact, and the
    #: matmuls get tensor-core-friendly sizes); 1 for none. Part of the trajectory: checkpoints hold padded tensors
    align: int = DEFAULT_ALIGN
    #: LM loss only (ablation SharVeT_L): no teacher needed
    lm_only: bool = False
    #: explicit eq. 13 weights; set, they are used as given (no matching unless ``match_loss_scales``)
    kd_weight: float | None = None
    feature_weight: float | None = None
    #: match the KD and feature weights to ``LM / term`` measured once before training, so every term
    #: starts at the LM loss's scale (the paper's rule, App. D), whatever the preset; a weight of 0 stays off, and
    #: an explicit weight multiplies its matched one (``kd_weight=2``: twice the LM loss's scale), so one term can
    #: be weighted up or down while the other stays matched
    match_loss_scales: bool = False
    l2_weight: float | None = None
    #: train sigma relative to its start (None: the preset's)
    relative_sigma: bool | None = None
    temperature: float = 1.0
    feature_layers: tuple[int, ...] | None = None
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    gradient_checkpointing: bool = False
    #: train on the CPU even when a GPU is present (tests, debugging)
    cpu: bool = False
    #: where the teacher runs ("cpu", "cuda:1", ...); None = the student's device
    teacher_device: str | None = None
    #: with several processes, shard the frozen weights of student and teacher with FSDP (``sharding.py``)
    #: instead of a whole copy per process (DDP)
    fsdp: bool = False
    #: compile every decoder layer of student and teacher (``torch.compile``, dynamic shapes, parameter sizes
    #: included, so layers of different ranks share a graph): fused element-wise work; costs compile time first
    compile: bool = False
    #: save a resumable checkpoint every this many optimizer steps (0 = only at the end / on Ctrl-C)
    checkpoint_every: int = 0
    #: stop (with a checkpoint) after this many optimizer steps in total; the schedule still spans all epochs
    max_steps: int | None = None
    output_dir: str = "refine"
    progress: bool = True

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown refinement mode {self.mode!r}; choose from {', '.join(MODES)}")
        preset(self.preset)
        positive = {"lr": self.learning_rate(), "lr_matrices": self.matrix_learning_rate(), "epochs": self.epochs,
                    "batch_size": self.batch_size, "grad_accum": self.grad_accum, "temperature": self.temperature,
                    "lora_rank": self.lora_rank, "align": self.align}
        bad = [f"{k}={v}" for k, v in positive.items() if v <= 0]
        bad += [f"{k}={v}" for k, v in {"kd_weight": self.kd_weight, "feature_weight": self.feature_weight,
                                       "lr_bases": self.lr_bases, "l2_weight": self.l2_weight,
                                       "weight_decay": self.weight_decay,
                                       "checkpoint_every": self.checkpoint_every}.items() if v is not None and v < 0]
        if bad:
            raise ValueError(f"invalid refinement settings: {', '.join(bad)}")
        if self.lr_bases is not None and self.mode != "all":
            raise ValueError(f"--lr-bases sets the shared bases' rate, which only --refine-mode all trains "
                             f"(mode is {self.mode!r})")
        if not 0 < self.lr_end_factor <= 1:
            raise ValueError(f"lr_end_factor must be in (0, 1], got {self.lr_end_factor}")
        if self.compile and self.fsdp:
            raise ValueError("compile and fsdp do not go together yet: choose one")
        if not 0 <= self.decay_to_init <= 1:
            raise ValueError(f"decay_to_init is a share of the way back, in [0, 1]; got {self.decay_to_init}")
        if self.decay_to_init and self.fsdp:
            raise ValueError("--decay-to-init does not go with --fsdp yet (sharded parameters): choose one")

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else preset(self.preset).lr(self.mode)

    def matrix_learning_rate(self) -> float:
        return self.lr_matrices if self.lr_matrices is not None else preset(self.preset).lr_matrices

    def sigma_is_relative(self) -> bool:
        return self.relative_sigma if self.relative_sigma is not None else preset(self.preset).relative_sigma

    def matches_loss_scales(self) -> bool:
        """Variant M, or the preset's rule when no KD/feature weight was given explicitly."""
        explicit = self.kd_weight is not None or self.feature_weight is not None
        return not self.lm_only and (self.match_loss_scales or (preset(self.preset).match_loss_scales and not explicit))

    def loss_weights(self) -> LossWeights:
        """Eq. 13's weights before matching (``_matched_weights`` replaces KD and feature when matching)."""
        if self.lm_only:
            return LossWeights(kd=0.0, feature=0.0, l2=0.0, temperature=self.temperature)
        base = preset(self.preset).weights
        pick = lambda value, fallback: fallback if value is None else value  # noqa: E731
        return dataclasses.replace(base, kd=pick(self.kd_weight, base.kd),
                                   feature=pick(self.feature_weight, base.feature), l2=pick(self.l2_weight, base.l2),
                                   temperature=self.temperature, feature_layers=self.feature_layers)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass
class RefineResult:
    model: nn.Module
    steps: int
    #: False when stopped early by ``max_steps``
    finished: bool
    history: list[dict[str, Any]]
    parameters: ParameterSummary
    output_dir: Path
    config: RefineConfig
    final: dict[str, float] = field(default_factory=dict)
    #: under DDP only the main process should save the model
    main_process: bool = True
    #: the eq. 13 weights used (after ``match_loss_scales``)
    loss_weights: dict[str, Any] = field(default_factory=dict)
    #: training tokens per second over the run's steps (teacher forward included, all processes)
    tokens_per_s: float | None = None
    #: tokens trained on in this call (resumed steps excluded)
    tokens: int = 0

    def record(self) -> dict[str, Any]:
        """What ``finalize`` stores in ``config.sharvet["settings"]["refinement"]``."""
        return {"config": self.config.to_dict(), "lr": self.config.learning_rate(),
                "relative_sigma": self.config.sigma_is_relative(), "steps": self.steps, "finished": self.finished,
                "final_losses": self.final, "trainable_parameters": self.parameters.trainable,
                "loss_weights": self.loss_weights, "tokens_per_s": self.tokens_per_s}


@dataclass
class _Schedule:
    """Optimizer steps per epoch, for the global batch ``batch_size * processes * grad_accum``."""

    steps_per_epoch: int
    epochs: int
    grad_accum: int

    @property
    def total(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def micro_per_epoch(self) -> int:
        return self.steps_per_epoch * self.grad_accum


@dataclass
class _Run:
    """Everything the loop touches, built once by :func:`_setup`."""

    accelerator: Accelerator
    model: nn.Module
    teacher: nn.Module | None
    teacher_device: torch.device
    names: list[str]
    params: list[nn.Parameter]
    initial: list[torch.Tensor]
    optimizer: Any
    scheduler: Any
    schedule: _Schedule
    weights: LossWeights
    fingerprint: dict[str, Any]
    out: Path
    #: vectors kept in float32 while training, with the dtype they return to afterwards
    downcast: list[tuple[nn.Parameter, torch.dtype]]
    #: student (and teacher) sharded by :mod:`sharding`; the vectors' gradients are averaged here
    fsdp: bool = False
    #: the student's ranks as padded for training (trimmed back before the result)
    padding: Padding = field(default_factory=Padding)


class _StopRequest:
    """First Ctrl-C (or SIGTERM) asks for a checkpoint at the next optimizer step, then KeyboardInterrupt.

    Stopping only at an optimizer-step boundary keeps the checkpoint exact (no half-accumulated
    gradients, no half-applied Adam step). A second Ctrl-C interrupts at once, without saving.
    Outside the main thread signals cannot be caught; then Ctrl-C interrupts without saving.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("interrupt: saving a checkpoint at the next optimizer step (Ctrl-C again aborts now)")

    def __enter__(self) -> "_StopRequest":
        try:
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread
            self.previous = {}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def process_device(device: str) -> str:
    """``cuda`` means this process's GPU when launched as one of several (``accelerate launch``, ``torchrun``), so
    that models load straight where the process trains, not all onto the first GPU."""
    local = os.environ.get("LOCAL_RANK")
    return f"cuda:{local}" if device == "cuda" and local is not None else device


def refine(student: nn.Module, teacher: nn.Module | None, train_ids: torch.Tensor, cfg: RefineConfig, *,
           resume: bool = False) -> RefineResult:
    """Train the refinement vectors (or LoRA adapters) of ``student`` in place.

    ``train_ids`` is a packed ``(N, L)`` LongTensor. ``teacher`` (the uncompressed model) is needed unless
    ``lm_only`` or both the KD and the feature weight are 0; it is put in eval mode, frozen and moved to
    ``teacher_device``. With ``resume=True`` training continues from the latest checkpoint in
    ``output_dir`` (bit for bit on CPU); without one it starts afresh. The result's ``model`` is the
    trained student (a peft model in mode ``lora``), in eval mode; pass it to ``finalize`` before saving.
    """
    cfg.validate()
    if train_ids.dim() != 2 or train_ids.dtype != torch.long:
        raise ValueError(f"train_ids must be a (N, L) LongTensor, got {tuple(train_ids.shape)} {train_ids.dtype}")
    run = _setup(student, teacher, train_ids, cfg, resume)
    position = _start_position(run, cfg, resume)
    main = run.accelerator.is_main_process
    writer = HistoryWriter(run.out / HISTORY, keep_until=position.step if position.step else None) if main else None
    bar = tqdm(total=run.schedule.total, initial=position.step, desc=f"refine ({cfg.mode})", unit="step",
               disable=not (cfg.progress and main))
    meter = _Throughput()
    try:
        with _StopRequest() as stop:
            position, finished = _train(run, cfg, position, train_ids, writer, bar, stop, meter)
    finally:
        bar.close()
        if writer is not None and writer.records:
            plot_history(writer.records, run.out / PLOT, title=f"refinement ({cfg.mode})")
    if main and meter.tokens:
        log.info(meter.line())
        if cfg.progress:
            tqdm.write(meter.line())
    return _result(run, cfg, position, finished, writer, meter)


class _Throughput:
    """Tokens and seconds of the optimizer steps of this call (the first step, which warms up, excluded)."""

    def __init__(self) -> None:
        self.tokens, self.seconds, self.steps = 0, 0.0, 0

    def add(self, tokens: int, seconds: float) -> None:
        self.steps += 1
        if self.steps > 1:
            self.tokens += tokens
            self.seconds += seconds

    @property
    def rate(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 else None

    def line(self) -> str:
        return f"refinement throughput {self.rate:,.0f} tokens/s ({self.tokens:,} tokens in {self.seconds:.1f} s)"


def _setup(student: nn.Module, teacher: nn.Module | None, ids: torch.Tensor, cfg: RefineConfig,
           resume: bool) -> _Run:
    weights = cfg.loss_weights()
    if weights.needs_teacher and teacher is None:
        raise ValueError("KD and feature losses need the teacher (or use lm_only / weights 0)")
    out = Path(cfg.output_dir)
    if not resume and ckpt.latest_checkpoint(out) is not None:
        raise FileExistsError(f"{out} holds checkpoints of an earlier run: resume it or pick another output folder")
    gpu = torch.cuda.is_available() and not cfg.cpu
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, step_scheduler_with_optimizer=False,
                              mixed_precision="bf16" if gpu else "no", cpu=not gpu)
    if accelerator.gradient_accumulation_steps != cfg.grad_accum:
        raise ValueError("ACCELERATE_GRADIENT_ACCUMULATION_STEPS disagrees with grad_accum")
    fsdp = cfg.fsdp and accelerator.num_processes > 1
    set_seed(cfg.seed, device_specific=True)
    model, downcast = _trainable_student(student, cfg, half_to_float=accelerator.mixed_precision == "bf16")
    model.to(accelerator.device)  # before cloning the initial values, which must live beside the vectors
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    lr_matrices = cfg.matrix_learning_rate() if cfg.mode in MATRIX_MODES else None
    fused = all(p.is_cuda and p.is_floating_point() for p in params)  # one kernel per group, not one per tensor
    bases = frozenset(id(p) for n, p in zip(names, params) if n.endswith(".basis"))
    optimizer = torch.optim.AdamW(optimizer_groups(list(params), cfg.learning_rate(), lr_matrices, bases=bases,
                                                   lr_bases=cfg.lr_bases),
                                  weight_decay=cfg.weight_decay, fused=fused or None)
    # after the groups (whose rates follow each matrix's RMS as planned), before anything copies the parameters;
    # FSDP shards flattened parameters, so its ranks stay as planned
    padding = pad_ranks(model, cfg.align) if cfg.align > 1 and not fsdp else Padding()
    schedule = _schedule(ids.shape[0], cfg, accelerator.num_processes)
    hint = compile_hint(ids.numel() * cfg.epochs, cfg, gpu)
    if hint and accelerator.is_main_process:
        log.info(hint)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, cfg.lr_end_factor, total_iters=schedule.total)
    if fsdp:  # our own wrapping (sharding.py): accelerate would DDP-wrap the model, or shard the shared bases
        prepared, optimizer = sharding.shard(model, list(params), accelerator.device), accelerator.prepare(optimizer)
    else:
        prepared, optimizer = accelerator.prepare(model, optimizer)
    tdev = torch.device(cfg.teacher_device) if cfg.teacher_device else accelerator.device
    if teacher is not None and weights.needs_teacher:
        teacher.eval().requires_grad_(False).to(tdev)
        if fsdp and cfg.teacher_device is None:
            teacher = sharding.shard(teacher, [], accelerator.device)
    if cfg.compile:
        compile_layers(model, teacher if weights.needs_teacher else None)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(cfg, ids, accelerator.num_processes)
    run = _Run(accelerator, prepared, teacher if weights.needs_teacher else None, tdev, list(names),
               list(params), [p.detach().clone() for p in params], optimizer, scheduler, schedule, weights,
               fingerprint, out, downcast, fsdp, padding)
    if cfg.matches_loss_scales() and weights.needs_teacher:
        run.weights = _matched_weights(run, cfg, ids)
    return run


def _matched_weights(run: _Run, cfg: RefineConfig, ids: torch.Tensor) -> LossWeights:
    """KD and feature weights ``LM / term`` on the first step's sequences of epoch 0, with the untrained student
    (times an explicit ``kd_weight`` / ``feature_weight``).

    Measured here, before any checkpoint is restored, so a resumed run gets the same weights. Each process
    measures its own share of the first step and the terms are averaged over processes, so every process gets
    the same weights and N processes of B sequences get those of one process of N x B.
    """
    order = _epoch_order(ids.shape[0], cfg.seed, 0)
    acc = run.accelerator
    training = run.model.training
    run.model.eval()  # no dropout: the measurement neither draws random numbers nor depends on them
    try:
        with torch.no_grad():
            batch = _micro_batch(ids, order, 0, cfg.batch_size, acc.process_index, acc.num_processes)
            local = _micro_step(run, batch.to(acc.device)).floats()
    finally:
        run.model.train(training)
    names = sorted(local)
    means = acc.reduce(torch.tensor([local[k] for k in names], dtype=torch.float64, device=acc.device), "mean")
    terms = dict(zip(names, means.tolist()))
    w = run.weights
    factors = {"kd": cfg.kd_weight, "feature": cfg.feature_weight}

    def matched(name: str, weight: float) -> float:
        factor = 1.0 if factors[name] is None else factors[name]
        return factor * terms["lm"] / terms[name] if weight > 0 and terms.get(name, 0.0) > 0 else 0.0

    matched_w = dataclasses.replace(w, kd=matched("kd", w.kd), feature=matched("feature", w.feature))
    log.info("loss weights matched to the LM loss %.3f: kd %.4g, feature %.4g", terms["lm"], matched_w.kd,
             matched_w.feature)
    return matched_w


def _trainable_student(student: nn.Module, cfg: RefineConfig, *,
                       half_to_float: bool) -> tuple[nn.Module, list[tuple[nn.Parameter, torch.dtype]]]:
    """Freeze all but the vectors (or attach LoRA); optionally keep half-precision vectors in float32."""
    if cfg.mode == "lora":
        from .lora import attach_lora, is_lora  # peft takes seconds to import: only when LoRA is used

        model = student if is_lora(student) else attach_lora(student, cfg.lora_rank, cfg.lora_alpha,
                                                             cfg.lora_dropout)
    else:
        model = student
        mark_trainable(model, cfg.mode, relative_sigma=cfg.sigma_is_relative())
    downcast = [(p, p.dtype) for p in model.parameters()
                if half_to_float and p.requires_grad and p.dtype in (torch.float16, torch.bfloat16)]
    for p, _ in downcast:
        p.data = p.data.float()
    if cfg.gradient_checkpointing:
        _activation_checkpointing(model, True)
    model.train()
    if cfg.progress:  # Table 1's accounting, shown to the user before training starts
        tqdm.write(parameter_summary(model).line())
    return model, downcast


def compile_layers(*models: nn.Module | None, on: bool = True) -> None:
    """Compile every decoder layer of ``models`` in place, or (``on=False``) drop the compiled forward again.

    Dynamic shapes with parameter sizes symbolic too, and no duck sizing (two sizes that happen to be equal in
    one layer would otherwise be guarded equal): the layers of a compressed model differ only in their ranks, so
    they share their graphs (a handful in all, whatever the layer count: the first layer's input needs no
    gradient, the teacher's layers are plain), where static shapes compile one per layer and hit dynamo's
    recompile limit. Set for the process: both settings are read whenever a graph compiles."""
    torch._dynamo.config.force_parameter_static_shapes = not on
    torch.fx.experimental._config.use_duck_shape = not on
    for model in filter(None, models):
        for layer in (m for m in model.modules() if type(m) in sharding.layer_classes(model)):
            if on:
                layer.compile(dynamic=True)
            else:
                layer._compiled_call_impl = None


def _activation_checkpointing(model: nn.Module, on: bool) -> None:
    """Recent transformers renamed gradient checkpointing to activation checkpointing; take what exists.

    Non-reentrant: the reentrant variant yields no gradients when the checkpointed inputs (the frozen
    embeddings' output) do not require grad, which is exactly our case.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_disable()


#: from about this many training tokens on, ``--compile`` saves time on a GPU: on an H200 it took SmolLM2's
#: refinement at batch 64 from 89-91 k to 120-126 k tokens/s after ~100-110 s of compiling (2026-11-30), so it pays
#: from ~35 M tokens
COMPILE_PAYS_FROM_TOKENS = 30_000_000


def compile_hint(tokens: int, cfg: RefineConfig, gpu: bool) -> str | None:
    """One line suggesting ``--compile`` for a long uncompiled run on a GPU; None otherwise."""
    if not gpu or cfg.compile or cfg.fsdp or tokens < COMPILE_PAYS_FROM_TOKENS:
        return None
    return (f"{tokens:,} training tokens: --compile would likely finish sooner (compiling takes a minute or two "
            f"first; on an H200 it made SmolLM2's refinement 1.3-1.4x faster at batch 64)")


def _schedule(n: int, cfg: RefineConfig, world: int) -> _Schedule:
    per_step = cfg.batch_size * world * cfg.grad_accum
    if n < per_step:
        raise ValueError(f"{n} training sequences are fewer than one optimizer step needs "
                         f"(batch {cfg.batch_size} x {world} processes x accumulation {cfg.grad_accum})")
    return _Schedule(n // per_step, cfg.epochs, cfg.grad_accum)


def trajectory_settings(cfg: RefineConfig) -> dict[str, Any]:
    """The settings that shape the training trajectory (a resumed run must not change them)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in _FREE_FIELDS}


def _fingerprint(cfg: RefineConfig, ids: torch.Tensor, world: int) -> dict[str, Any]:
    """What must not change between a run and its resumption."""
    settings = trajectory_settings(cfg)
    digest = hashlib.sha256(ids.contiguous().cpu().numpy().tobytes()).hexdigest()
    return {"config": settings, "data": {"shape": list(ids.shape), "sha256": digest}, "processes": world}


def _start_position(run: _Run, cfg: RefineConfig, resume: bool) -> ckpt.DataPosition:
    folder = ckpt.latest_checkpoint(run.out) if resume else None
    if folder is None:
        if resume:
            log.warning("no checkpoint in %s: starting from the beginning", run.out)
        return ckpt.DataPosition(step=0, epoch=0, micro=0, permutation_seed=cfg.seed)
    return _restore(run, folder)


def _restore(run: _Run, folder: Path) -> ckpt.DataPosition:
    saved = ckpt.read_state(folder)
    if saved["fingerprint"] != run.fingerprint:
        diff = [k for k in run.fingerprint if saved["fingerprint"].get(k) != run.fingerprint[k]]
        raise ValueError(f"{folder} was written with different {', '.join(diff)}; cannot resume exactly")
    vectors, initial = ckpt.read_vectors(folder, "vectors"), ckpt.read_vectors(folder, "initial")
    if set(vectors) != set(run.names):
        raise ValueError(f"{folder} holds other trainable tensors than this model (different mode or model?)")
    with torch.no_grad():
        for name, p, p0 in zip(run.names, run.params, run.initial):
            p.copy_(vectors[name])
            p0.copy_(initial[name])
    run.optimizer.load_state_dict(ckpt.load_tree(folder, "optimizer"))
    run.scheduler.load_state_dict(ckpt.load_tree(folder, "scheduler"))
    ckpt.set_rng_state(ckpt.load_tree(folder, f"rng-rank{run.accelerator.process_index}"))
    position = ckpt.position_of(saved)
    log.info("resumed from %s (step %d, epoch %d)", folder, position.step, position.epoch)
    return position


def _train(run: _Run, cfg: RefineConfig, position: ckpt.DataPosition, ids: torch.Tensor,
           writer: HistoryWriter | None, bar: tqdm, stop: _StopRequest,
           meter: _Throughput) -> tuple[ckpt.DataPosition, bool]:
    """The loop; returns the final position and whether all epochs ran."""
    acc, sched = run.accelerator, run.schedule
    if cfg.max_steps is not None and position.step >= cfg.max_steps:
        return position, False
    start_epoch, start_micro = position.epoch, position.micro
    for epoch in range(start_epoch, sched.epochs):
        order = _epoch_order(ids.shape[0], cfg.seed, epoch)
        sums: dict[str, torch.Tensor] = {}
        tick = time.perf_counter()
        for micro in range(start_micro if epoch == start_epoch else 0, sched.micro_per_epoch):
            batch = _micro_batch(ids, order, micro, cfg.batch_size, acc.process_index, acc.num_processes)
            loss, grad_norm = _learn(run, cfg, batch.to(acc.device), sums, position.step + 1)
            if not acc.sync_gradients:
                continue
            lr = run.optimizer.param_groups[0]["lr"]
            run.scheduler.step()
            position = _advance(position, epoch, micro + 1, sched, cfg.seed)
            elapsed, tick = time.perf_counter() - tick, time.perf_counter()
            tokens = batch.numel() * sched.grad_accum
            meter.add(tokens * acc.num_processes, elapsed)
            record = _record(run, position, epoch, lr, sums, grad_norm, tokens, elapsed)
            sums = {}
            _report(record, writer, bar)
            if _should_stop(run, stop):
                _save(run, position)
                raise KeyboardInterrupt
            if cfg.max_steps is not None and position.step >= cfg.max_steps:
                _save(run, position)
                return position, False
            if cfg.checkpoint_every and position.step % cfg.checkpoint_every == 0:
                _save(run, position)
    _save(run, position)
    return position, True


def _learn(run: _Run, cfg: RefineConfig, batch: torch.Tensor, sums: dict[str, torch.Tensor],
           step: int) -> tuple[LossOutput, torch.Tensor | None]:
    """Forward and backward; on the last micro-batch of an optimizer step also check, clip and update.

    ``sums`` accumulates the step's loss terms; ``step`` is the number of the optimizer step being made.
    """
    acc = run.accelerator
    with acc.accumulate(run.model):  # no DDP all-reduce, and no-op optimizer calls, until the last one
        loss = _micro_step(run, batch)
        acc.backward(loss.total)
        for k, v in loss.terms.items():
            sums[k] = sums.get(k, 0.0) + v
        grad_norm = None
        if acc.sync_gradients:
            if run.fsdp:
                sharding.average_gradients(run.params)
            grad_norm = acc.clip_grad_norm_(run.params, cfg.grad_clip) if cfg.grad_clip > 0 else \
                torch.nn.utils.get_total_norm([p.grad for p in run.params if p.grad is not None])
            _check_finite(run, sums, grad_norm, step)
        run.optimizer.step()
        run.optimizer.zero_grad()
        if acc.sync_gradients and cfg.decay_to_init:
            _decay_to_init(run, cfg.decay_to_init)
    return loss, grad_norm if cfg.grad_clip > 0 else None


@torch.no_grad()
def _decay_to_init(run: _Run, share: float) -> None:
    """Move every trained tensor ``share`` x (the schedule's current factor) of the way back to its start."""
    group = run.optimizer.param_groups[0]
    factor = share * group["lr"] / group.get("initial_lr", group["lr"])
    torch._foreach_lerp_([p.data for p in run.params], run.initial, factor)


def _check_finite(run: _Run, sums: dict[str, torch.Tensor], grad_norm: torch.Tensor, step: int) -> None:
    """Raise before the optimizer step if a loss term or the gradient norm is NaN/inf (on any process)."""
    values = torch.stack([*(v.float().reshape(()) for v in sums.values()), grad_norm.float().reshape(())])
    bad = (~torch.isfinite(values)).any().float().reshape(1)
    if run.accelerator.num_processes > 1:
        bad = run.accelerator.reduce(bad, "sum")
    if bad.item() == 0:
        return
    terms = ", ".join(f"{k} {float(v) / run.schedule.grad_accum:.4g}" for k, v in sorted(sums.items()))
    raise NonFiniteLossError(
        f"refinement diverged at step {step}: non-finite loss or gradient ({terms}, gradient norm "
        f"{float(grad_norm):.4g}); nothing of this step was applied or saved, the last checkpoint in "
        f"{run.out} is intact. Lower --lr (now {run.optimizer.param_groups[0]['lr']:.3g}) and start again")


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of the ``n`` training sequences used in ``epoch`` (same on every process)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))


def _micro_batch(ids: torch.Tensor, order: torch.Tensor, micro: int, batch: int, rank: int,
                 world: int) -> torch.Tensor:
    start = (micro * world + rank) * batch
    return ids[order[start:start + batch]]


def _micro_step(run: _Run, ids: torch.Tensor) -> LossOutput:
    """One forward of teacher (no grad, on its own device) and student, and eq. 13."""
    w = run.weights
    hidden = w.feature > 0
    t_logits = t_hidden = None
    if run.teacher is not None:
        with torch.no_grad(), run.accelerator.autocast():
            t_out = run.teacher(input_ids=ids.to(run.teacher_device), output_hidden_states=hidden, use_cache=False)
        dev = ids.device
        t_logits = t_out.logits.to(dev) if w.kd > 0 else None
        t_hidden = tuple(h.to(dev) for h in t_out.hidden_states) if hidden else None
    with run.accelerator.autocast():  # a prepared model carries it already; one sharded here does not
        out = run.model(input_ids=ids, output_hidden_states=hidden, use_cache=False)
    return refinement_loss(out.logits, ids, w, student_hidden=out.hidden_states if hidden else None,
                           teacher_logits=t_logits, teacher_hidden=t_hidden, params=run.params,
                           initial=run.initial)


def _advance(position: ckpt.DataPosition, epoch: int, micro_done: int, sched: _Schedule,
             seed: int) -> ckpt.DataPosition:
    """Position after an optimizer step; the end of an epoch is stored as the start of the next."""
    if micro_done == sched.micro_per_epoch:
        epoch, micro_done = epoch + 1, 0
    return ckpt.DataPosition(position.step + 1, epoch, micro_done, seed + epoch)


def _record(run: _Run, position: ckpt.DataPosition, epoch: int, lr: float, sums: dict[str, torch.Tensor],
            grad_norm: torch.Tensor | None, tokens: int, elapsed: float) -> dict[str, Any]:
    """Step means of every term, averaged over micro-batches and processes."""
    keys = sorted(sums)
    means = run.accelerator.reduce(torch.stack([sums[k] for k in keys]) / run.schedule.grad_accum, "mean")
    record: dict[str, Any] = {"step": position.step, "epoch": epoch, "lr": lr}
    record.update({k: float(v) for k, v in zip(keys, means)})
    if grad_norm is not None:
        record["grad_norm"] = float(grad_norm)
    record["tokens_per_s"] = tokens * run.accelerator.num_processes / max(elapsed, 1e-9)
    return record


def _report(record: dict[str, Any], writer: HistoryWriter | None, bar: tqdm) -> None:
    if writer is not None:
        writer.append(record)
    shown = {k: f"{v:.4g}" for k, v in record.items() if k not in ("step", "epoch")}
    bar.set_postfix(shown, refresh=False)
    bar.update()


def _should_stop(run: _Run, stop: _StopRequest) -> bool:
    """A signal may reach only some processes: they all stop if any of them was asked to."""
    if run.accelerator.num_processes == 1:
        return stop.requested
    flag = torch.tensor([float(stop.requested)], device=run.accelerator.device)
    return bool(run.accelerator.reduce(flag, "sum").item() > 0)


def _save(run: _Run, position: ckpt.DataPosition) -> None:
    """Every process writes its RNG state; the main process the shared rest, then publishes the folder."""
    require_finite(zip(run.names, run.params), "refinement checkpoint")
    acc = run.accelerator
    partial = ckpt.partial_folder(run.out, position.step)
    if acc.is_main_process:
        partial.mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()
    if acc.is_main_process:
        ckpt.write_vectors(partial, "vectors", dict(zip(run.names, run.params)))
        ckpt.write_vectors(partial, "initial", dict(zip(run.names, run.initial)))
        ckpt.save_tree(run.optimizer.state_dict(), partial, "optimizer")
        ckpt.save_tree(run.scheduler.state_dict(), partial, "scheduler")
    ckpt.save_tree(ckpt.rng_state(), partial, f"rng-rank{acc.process_index}")
    acc.wait_for_everyone()
    if acc.is_main_process:
        ckpt.publish(partial, ckpt.state_record(position, run.fingerprint))
    acc.wait_for_everyone()


def _result(run: _Run, cfg: RefineConfig, position: ckpt.DataPosition, finished: bool,
            writer: HistoryWriter | None, meter: _Throughput) -> RefineResult:
    # drop DDP and accelerate's autocast wrapper of forward: later evaluation must run in the model's dtype;
    # a sharded student is put back together on the main process (the others keep theirs, sharded)
    model = (sharding.gather(run.model, run.accelerator.is_main_process) or run.model) if run.fsdp else \
        run.accelerator.unwrap_model(run.model, keep_fp32_wrapper=False)
    if cfg.compile:
        compile_layers(model, run.teacher, on=False)
    trim_ranks(run.padding)
    summary = parameter_summary(model)  # counted while the vectors still train
    release_sigma(model)  # sigma0 (1 + delta) back into a plain sigma, in the model's dtype
    for p, dtype in run.downcast:  # outside autocast a bf16 model needs bf16 vectors
        p.data = p.data.to(dtype)
    if cfg.gradient_checkpointing:
        _activation_checkpointing(model, False)
    model.eval()
    history = writer.records if writer is not None else []
    final = {k: v for k, v in history[-1].items() if k not in ("step", "epoch")} if history else {}
    return RefineResult(model, position.step, finished, history, summary, run.out, cfg, final,
                        run.accelerator.is_main_process, dataclasses.asdict(run.weights), meter.rate, meter.tokens)
