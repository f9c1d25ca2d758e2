"""Compress -> refine -> evaluate in memory, one :class:`~sharvet.evaluation.rows.ResultRow` per method, variants
and ratio: the experiment the study's benchmarks run.

A row starts from a copy of the original model, is compressed with the method's preset (and the ablation
variants), scored, refined the way the method refines (vectors for SharVeT, LoRA for the baselines; the variants
may change that) against the original, and scored again. Everything stays in memory: nothing is saved or
reloaded between the steps, so a row measures exactly the model the steps produced.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sharvet.calibration import CalibrationStats
from sharvet.data import load_texts, resolve_data_dir, tokenize_corpus
from sharvet.evaluation.perplexity import perplexity
from sharvet.evaluation.rows import WIKITEXT2, ResultRow
from sharvet.evaluation.task_runner import run_tasks
from sharvet.methods import method, refine_overrides
from sharvet.config import CompressionConfig
from sharvet.pipeline import compress
from sharvet.refinement import RefineConfig, RefineResult, finalize, refine


@dataclass(frozen=True)
class RowSpec:
    """One row of an experiment: a method, its ablation variants and the ratio."""

    method: str
    ratio: float
    variants: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str, ratio: float) -> RowSpec:
        """``method`` or ``method:VARIANT[+VARIANT]``, as rows are named on the command line."""
        name, _, variants = text.partition(":")
        return cls(name, ratio, tuple(v for v in variants.split("+") if v))


@dataclass
class Scoring:
    """What is measured on a model: perplexity on token sets (WikiText-2 first, the others are "further" sets
    scored on final models only) and lm-eval tasks (none when ``tasks`` is empty)."""

    ppl_sets: dict[str, torch.Tensor]
    tokenizer: Any = None
    device: str | None = None
    context: int = 1024
    batch_size: int = 8
    tasks: Sequence[str] = ()
    data_dir: str | Path | None = None
    task_batch_size: int = 32
    task_limit: int | None = None

    def ppl(self, model: nn.Module, name: str = WIKITEXT2) -> float:
        """Perplexity on one set, rounded to 3 decimals."""
        result = perplexity(model, self.ppl_sets[name], context=self.context, batch_size=self.batch_size,
                            device=self.device, progress=False)
        return round(result.ppl, 3)

    def perplexities(self, model: nn.Module) -> dict[str, float]:
        return {name: self.ppl(model, name) for name in self.ppl_sets}

    def task_results(self, model: nn.Module) -> dict[str, dict[str, Any]]:
        """lm-eval results of ``model`` (LoRA layers active), as stored in a row; empty without tasks."""
        if not self.tasks:
            return {}
        results = run_tasks(model, self.tokenizer, list(self.tasks), data_dir=self.data_dir,
                            batch_size=self.task_batch_size, limit=self.task_limit)
        return {name: r.to_dict() for name, r in results.items()}

    def original(self, model: nn.Module, *, tasks: bool = True) -> ResultRow:
        """The uncompressed model's row."""
        return ResultRow("original", 1.0, perplexity=self.perplexities(model),
                         tasks=self.task_results(model) if tasks else {})


def held_out_split(tokenizer: Any, data_dir: str | Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """WikiText-2 *test* split by rows: the first half's tokens (held out for perplexity) and the second half's
    (calibration and fine-tuning windows), so that no evaluated token is ever trained on."""
    rows = load_texts("wikitext2", split="test", data_dir=resolve_data_dir(data_dir))
    half = len(rows) // 2
    return tokenize_corpus(rows[:half], tokenizer), tokenize_corpus(rows[half:], tokenizer)


def refine_config_for(spec: RowSpec, base: RefineConfig) -> RefineConfig | None:
    """``base`` with the method's refinement mode and the variants' overrides (LM loss only, LoRA, matched loss
    weights: :data:`sharvet.methods.REFINE_VARIANTS`); None when a variant means no refinement (T)."""
    tuning = refine_overrides(spec.variants)
    if tuning.pop("refine", True) is False:
        return None
    return dataclasses.replace(base, mode=tuning.pop("mode", method(spec.method).refine_mode), **tuning)


def refined_model(result: RefineResult) -> nn.Module:
    """The model to evaluate after refinement: for LoRA the transformers model, into which peft injected its
    layers in place (so they run); for the vectors the model with sigma absorbed into V (``finalize``)."""
    if result.config.mode == "lora":
        return result.model.get_base_model()
    return finalize(result.model, result.record())


def run_row(spec: RowSpec, teacher: nn.Module, stats: CalibrationStats, scoring: Scoring, *,
            calibration_ids: torch.Tensor | None = None, train_ids: torch.Tensor | None = None,
            refine_base: RefineConfig | None = None, device: str | None = None) -> ResultRow:
    """Compress a copy of ``teacher``, score it, refine it (unless ``refine_base`` is None or a variant says no)
    on ``train_ids`` against ``teacher``, and score the final model. ``refine_base.output_dir`` receives the
    refinement's history."""
    cfg = CompressionConfig.preset(spec.method, spec.variants, ratio=spec.ratio)
    student = copy.deepcopy(teacher)
    t0 = time.perf_counter()
    result = compress(student, stats, cfg, calibration_ids=calibration_ids, device=device, progress=False)
    row = ResultRow(spec.method, spec.ratio, spec.variants, lr=refine_base.lr if refine_base else None,
                    realised_ratio=round(result.report.linear_ratio, 5), model_ratio=round(result.report.model_ratio, 5),
                    compress_s=round(time.perf_counter() - t0, 1))
    untuned = scoring.ppl(student)
    rcfg = refine_config_for(spec, refine_base) if refine_base is not None else None
    if rcfg is None:
        row.perplexity = {WIKITEXT2: untuned, **_further(scoring, student)}
        row.tasks = scoring.task_results(student)
        return row
    t0 = time.perf_counter()
    out = refine(student, teacher, train_ids, rcfg)
    summary = out.parameters  # counted while training: sigma's relative delta is gone from the returned model
    model = refined_model(out)
    row.refine_s = round(time.perf_counter() - t0, 1)
    row.refine_mode, row.lm_only, row.steps = rcfg.mode, rcfg.lm_only, out.steps
    row.trainable, row.total_with_adapters = summary.trainable, summary.total
    row.final_losses, row.loss_weights, row.history = out.final, out.loss_weights, f"{rcfg.output_dir}/history.jsonl"
    row.perplexity_untuned = {WIKITEXT2: untuned}
    row.perplexity = {WIKITEXT2: scoring.ppl(model), **_further(scoring, model)}
    row.tasks = scoring.task_results(model)
    return row


def _further(scoring: Scoring, model: nn.Module) -> dict[str, float]:
    """Perplexity on the sets besides WikiText-2 (scored on final models only)."""
    return {name: scoring.ppl(model, name) for name in scoring.ppl_sets if name != WIKITEXT2}
