"""High-level Python API: the same steps the CLI runs, one call each."""
from __future__ import annotations

import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import checkpoint
from .calibration import DEFAULT_BATCH_SIZE, CalibrationStats, collect_or_load
from .data import calibration_batch, resolve_data_dir
from .loading import BUNDLED_ID, LoadedModel, default_device, load_original, parse_dtype
from .models import adapter_for
from .config import CompressionConfig
from .methods import PAPER_CALIBRATION, method
from .pipeline import CompressionResult, attach_plan, compress, plan_of
from .streaming import choose_stream, collect_or_load_streamed, load_offloaded, plan_loading
from .summary import render

DEFAULT_CACHE = Path.home() / ".cache" / "sharvet"


@dataclass
class CalibrationSpec:
    #: calibration text; None: the compression method's own (``Method.calibration``), WikiText-2 where no
    #: method is involved (similarity and grouping figures)
    source: str | None = None
    samples: int = 64
    seq_len: int = 1024
    batch_size: int = DEFAULT_BATCH_SIZE
    data_dir: str | None = None
    cache_dir: str | None = str(DEFAULT_CACHE)
    #: auto | on | off: layer-streamed calibration (sharvet.streaming); auto streams what would not fit
    stream: str = "auto"


    def for_method(self, name: str) -> "CalibrationSpec":
        """This spec with ``source`` filled from method ``name`` when it was left to the method."""
        return self if self.source is not None else dataclasses.replace(self, source=method(name).calibration)


def calibration_ids(loaded: LoadedModel, spec: CalibrationSpec, *, seed: int) -> torch.Tensor:
    """The calibration set tokenised and packed into ``(samples, seq_len)``."""
    return calibration_batch(spec.source or PAPER_CALIBRATION, loaded.tokenizer, spec.samples, spec.seq_len, seed,
                             data_dir=resolve_data_dir(spec.data_dir))


def calibrate(loaded: LoadedModel, spec: CalibrationSpec, *, seed: int, device: str | None = None,
              progress: bool = True, ids: torch.Tensor | None = None, stream: bool | None = None) -> CalibrationStats:
    """One teacher pass over the calibration set accumulating input statistics (cached in safetensors).

    In memory the model moves to ``device`` first; streamed, it stays where it is and only one layer at a
    time goes to ``device``.
    """
    ids = calibration_ids(loaded, spec, seed=seed) if ids is None else ids
    adapter = adapter_for(loaded.model)
    target = torch.device(device) if device is not None else next(loaded.model.parameters()).device
    if stream is None:
        stream = choose_stream(spec.stream, adapter, ids.shape[0], ids.shape[1], spec.batch_size, target)
    if not stream:
        loaded.model.to(target)
    collect = collect_or_load_streamed if stream else collect_or_load
    return collect(adapter, ids, model_id=loaded.model_id, cache_dir=spec.cache_dir, batch_size=spec.batch_size,
                   device=target, progress=progress)


def compress_pretrained(
    model: str | None,
    cfg: CompressionConfig,
    *,
    calibration: CalibrationSpec | None = None,
    output: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[nn.Module, CompressionResult, LoadedModel]:
    """Load ``model`` (None: the bundled SmolLM2-135M), compress it, optionally save it to ``output``."""
    cfg.validate()
    if output is not None:
        checkpoint.check_output(output, overwrite)
    device = default_device(device)
    start = time.perf_counter()
    spec = (calibration or CalibrationSpec()).for_method(cfg.method)
    # streamed calibration keeps the decoder layers on disk where it can (decided before any weight loads);
    # in memory, calibration moves the model to the device
    stream, device_map = plan_loading(model, parse_dtype(dtype) or torch.float32, spec.stream, spec.samples,
                                      spec.seq_len, spec.batch_size, device) \
        if cfg.needs_stats and not cfg.needs_ids else (None, None)
    loaded = load_original(model, dtype=dtype, device=None if cfg.needs_stats else device, device_map=device_map)
    stages = {"load": round(time.perf_counter() - start, 1)}
    mark = time.perf_counter()
    adapter = adapter_for(loaded.model)
    cfg.validate(adapter.num_layers, adapter.type_names)  # k vs layers, before the calibration pass
    ids = calibration_ids(loaded, spec, seed=cfg.seed) if cfg.needs_stats or cfg.needs_ids else None
    stats = calibrate(loaded, spec, seed=cfg.seed, device=device, progress=progress, ids=ids, stream=stream) \
        if cfg.needs_stats else None
    stages["calibration"] = round(time.perf_counter() - mark, 1)
    if cfg.needs_ids and device is not None:  # FiPS captures its blocks' inputs with the whole model
        loaded.model.to(device)
    result = compress(loaded.model, stats, cfg, calibration_ids=ids if cfg.needs_ids else None, device=device,
                      progress=progress)
    if device_map:
        load_offloaded(loaded.model)  # what stayed on disk (the norms) comes in: the model is a plain one again
    result.plan.settings.model_id = loaded.model_id
    if calibration is not None and ids is not None:
        result.plan.settings.calibration = {k: v for k, v in vars(spec).items() if k != "cache_dir"}
    result.plan.settings.wall_time_s = round(time.perf_counter() - start, 1)
    result.plan.settings.stage_seconds = {**stages, **result.plan.settings.stage_seconds}
    attach_plan(loaded.model, result.plan)
    if output is not None:
        checkpoint.save(loaded.model, output, tokenizer=loaded.tokenizer,
                        summary=render(result.plan, loaded.model_id), overwrite=overwrite)
    return loaded.model, result, loaded


def load(path: str | Path, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
         verify: bool = True) -> nn.Module:
    """Load a sharvet checkpoint folder as a ready-to-run model, exactly as it was refined.

    The files are checked against the checkpoint's integrity record first (``verify=False`` skips the sha256
    pass). A checkpoint refined with LoRA comes back with its adapters applied (a peft ``PeftModel``).
    """
    if checkpoint.has_adapters(path):
        from .refinement.lora import load_lora

        return load_lora(path, device=device, dtype=dtype, verify=verify)
    return checkpoint.load(path, device=device, dtype=dtype, verify=verify)


def load_any(spec: str | None, *, device: str | None = None, dtype: str | None = None,
             verify: bool = True) -> LoadedModel:
    """A sharvet checkpoint folder, or any original model spec ``load_original`` accepts."""
    if spec is not None and checkpoint.is_checkpoint(spec):
        from .loading import load_tokenizer, parse_dtype

        model = load(spec, device=device, dtype=parse_dtype(dtype), verify=verify)
        return LoadedModel(model, load_tokenizer(spec), str(Path(spec).resolve()))
    return load_original(spec, dtype=dtype, device=device)


@dataclass
class TrainingSpec:
    """The fine-tuning set: packed like calibration, from the same data layer."""

    source: str = "wikitext2"
    samples: int = 5000
    seq_len: int = 1024
    data_dir: str | None = None


def refine_checkpoint(
    checkpoint_dir: str | Path,
    output: str | Path,
    cfg,
    train: TrainingSpec,
    *,
    teacher: str | None = None,
    resume: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Refine a saved compressed model against its original (section 3.4) and save the result.

    ``dtype`` (e.g. ``"bfloat16"``) is the precision of the student and the teacher; None keeps the checkpoint's
    own and loads the teacher in the same one (never a float32 teacher beside a bfloat16 student by accident).

    The teacher is ``teacher`` or the model the checkpoint records as its source. Vectors are absorbed
    (sigma into V) before saving; LoRA runs keep their adapters beside the checkpoint.
    """
    from .loading import load_tokenizer
    from .refinement import finalize, refine, save_lora
    from .refinement.trainer import process_device
    from .summary import render
    from .training_data import training_ids

    if checkpoint.has_adapters(checkpoint_dir):
        raise ValueError(f"{checkpoint_dir} is already refined with LoRA adapters; refine the checkpoint it was "
                         "made from instead")
    device = process_device(default_device(device))
    student = checkpoint.load(checkpoint_dir, device=device, dtype=parse_dtype(dtype))
    dtype = dtype or str(next(student.parameters()).dtype).removeprefix("torch.")
    source = teacher or plan_of(student).settings.model_id
    if source is None:
        raise ValueError("the checkpoint does not record its source model: pass --teacher MODEL")
    original = load_original(None if source == BUNDLED_ID else source, device=device, dtype=dtype)
    tokenizer = load_tokenizer(checkpoint_dir)
    ids = training_ids(train.source, tokenizer, train.samples, train.seq_len, cfg.seed, data_dir=train.data_dir,
                       teacher=original.model, teacher_id=str(source), cache_dir=DEFAULT_CACHE)
    result = refine(student, original.model, ids, cfg, resume=resume)
    if not result.main_process:
        return Path(output)
    plan_summary = lambda m: render(plan_of(m), source)  # noqa: E731
    if cfg.mode == "lora":
        save_lora(result.model, output, tokenizer=tokenizer, summary=plan_summary(result.model.base_model.model),
                  overwrite=overwrite)
    else:
        model = finalize(result.model, result.record())
        checkpoint.save(model, output, tokenizer=tokenizer, summary=plan_summary(model), overwrite=overwrite)
    return Path(output)
