"""Sliding-window perplexity, counted exactly from the logits.

Protocol (the Hugging Face "perplexity of fixed-length models" guide): windows of ``context`` tokens start every
``stride`` tokens until one reaches the end of the corpus (only that last window may be shorter). A window scores
only the targets that no earlier window scored, each predicted from the window's preceding tokens; the first
token of a window has no context inside it and is never a target. So with ``stride < context`` every token after
the first is scored exactly once, and with ``stride == context`` (non-overlapping windows, the default and the
usual protocol of compression papers) the first token of every window is left out: ``n_tokens`` is the corpus
length minus the number of windows.

Perplexity is ``exp(total NLL / scored tokens)``. References that average window losses, ``exp(mean(loss_w))``,
give the same number whenever every window scores the same number of tokens, i.e. except for a short last window.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sharvet.data import DATASETS, load_texts, tokenize_corpus

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity and the exact counts behind it."""

    ppl: float
    nll_sum: float
    n_tokens: int
    n_windows: int
    context: int
    stride: int


@dataclass(frozen=True)
class _Window:
    begin: int
    end: int
    first_target: int  # offset inside the window of the first scored token (>= 1)

    @property
    def length(self) -> int:
        return self.end - self.begin


def _windows(n_tokens: int, context: int, stride: int) -> list[_Window]:
    """Windows of the sliding-window protocol, each with the offset of its first not-yet-scored target."""
    windows = []
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + context, n_tokens)
        windows.append(_Window(begin, end, max(prev_end - begin, 1)))
        prev_end = end
        if end == n_tokens:
            break
    return windows


def _batches(windows: list[_Window], batch_size: int) -> Iterator[list[_Window]]:
    """Consecutive windows of equal length, at most ``batch_size`` at a time (so they stack without padding)."""
    for _, same_length in itertools.groupby(windows, key=lambda w: w.length):
        group = list(same_length)
        for start in range(0, len(group), batch_size):
            yield group[start : start + batch_size]


def _batch_nll(model: PreTrainedModel, ids: torch.Tensor, batch: list[_Window], device: torch.device) -> float:
    """Summed float32 NLL of the targets scored by ``batch``."""
    inputs = torch.stack([ids[w.begin : w.end] for w in batch]).to(device)
    logits = model(input_ids=inputs, use_cache=False).logits
    total = 0.0
    for row, window in enumerate(batch):
        predicted = logits[row, window.first_target - 1 : -1].float()
        targets = inputs[row, window.first_target :]
        total += F.cross_entropy(predicted, targets, reduction="sum").item()
    return total


def perplexity(
    model: PreTrainedModel,
    ids_1d: torch.Tensor,
    *,
    context: int = 1024,
    stride: int | None = None,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of a causal LM on a 1-D token sequence by the sliding-window protocol (see module docs).

    ``stride`` defaults to ``context`` and must not exceed it (tokens would go unscored). ``device`` defaults to
    that of the model's parameters. The model is run in eval mode under ``torch.inference_mode``; its training
    flag is restored afterwards.
    """
    stride = context if stride is None else stride
    if not 1 <= stride <= context:
        raise ValueError(f"need 1 <= stride <= context, got stride={stride}, context={context}")
    if ids_1d.dim() != 1 or ids_1d.numel() < 2:
        raise ValueError(f"need a 1-D sequence of at least 2 tokens, got shape {tuple(ids_1d.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    ids = ids_1d.long()
    windows = _windows(ids.numel(), context, stride)
    was_training = model.training
    model.eval()
    nll_sum = 0.0
    try:
        bar = tqdm(total=len(windows), desc="perplexity", unit="window", disable=not progress)
        with torch.inference_mode(), bar:
            for batch in _batches(windows, batch_size):
                nll_sum += _batch_nll(model, ids, batch, device)
                bar.update(len(batch))
    finally:
        model.train(was_training)
    n_tokens = sum(w.length - w.first_target for w in windows)
    return PerplexityResult(math.exp(nll_sum / n_tokens), nll_sum, n_tokens, len(windows), context, stride)


def evaluation_tokens(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase,
    data_dir: str | Path | None = None,
    *,
    offline: bool | None = None,
) -> torch.Tensor:
    """Token ids of an evaluation set: rows joined by blank lines (:func:`sharvet.data.join_texts`) and tokenised.

    Uses each dataset's evaluation split: test for WikiText-2 and PTB (and any path), validation for C4. For C4
    that is the whole local validation file, or from the hub the validation shard
    ``en/c4-validation.00000-of-00008.json.gz``; papers that use only its first documents (GPTQ's 256 windows)
    therefore get a somewhat different number.
    """
    spec = DATASETS.get(name_or_path)
    split = spec.eval_split if spec else "test"
    texts = load_texts(name_or_path, split=split, data_dir=data_dir, offline=offline)
    return tokenize_corpus(texts, tokenizer)
