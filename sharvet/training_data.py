"""Fine-tuning data that does not run out: a fixed C4 split, teacher-generated text, and a repetition warning.

* **The C4 split.** ``DIR/c4/c4-validation-subset-2000.json.gz`` (2,000 documents of C4 validation, one JSON
  record a line) is split by document index: documents 0-999 serve calibration and fine-tuning (split
  ``train``), documents 1000-1999 are held out for evaluation (``validation`` / ``test``). Every C4 reader of
  :mod:`sharvet.data` goes through :func:`sharvet.data_splits.fixed_split`, so perplexity on C4 reads only held-out documents.
* **WikiText-2**: fine-tuning reads ``wiki.valid.raw`` (no train file offline, validation comes first),
  evaluation reads ``wiki.test.raw``.
* **Teacher text** (``--train-data teacher``): sequences sampled from the original model on its device, as
  data-free distillation does (LLM-QAT): the first token uniform over the non-special vocabulary, the rest
  sampled from the model's own distribution (temperature 1, no top-k/top-p, no end of text), seeded, and
  cached as safetensors so a second run reads them back.
* Sources joined by ``+`` (``c4+teacher``) share the requested sequences equally; a source whose packed
  windows would hold more tokens than it has warns once (the windows then repeat text).
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file

from .outputs import save_whole

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

TEACHER = "teacher"


def warn_if_repeated(source: str, available: int, n_sequences: int, seq_len: int) -> bool:
    """One warning line when ``n_sequences x seq_len`` packed tokens exceed the ``available`` distinct ones."""
    wanted = n_sequences * seq_len
    if wanted <= available:
        return False
    log.warning("training data %r: %d x %d = %s tokens from %s distinct ones, each token seen ~%.1f times; "
                "add data (e.g. +teacher) or lower --train-samples", source, n_sequences, seq_len, f"{wanted:,}",
                f"{available:,}", wanted / available)
    return True


def corpus_ids(source: str, tokenizer: PreTrainedTokenizerBase, data_dir: str | Path | None) -> torch.Tensor:
    """1-D token ids of the fine-tuning split of ``source``: train, else validation, else test."""
    from .data import DATASETS, DataNotFoundError, load_texts, resolve_data_dir, tokenize_corpus

    root = resolve_data_dir(data_dir)
    local = root is not None and source in DATASETS and (root / DATASETS[source].local_dir).is_dir()
    splits = ("train", "validation", "test") if local or source not in DATASETS else ("train",)  # hub: once
    for split in splits:
        try:
            texts = load_texts(source, split=split, data_dir=root, offline=True if local else None)
        except DataNotFoundError:
            if len(splits) == 1:
                raise
            continue
        if split != "train":
            log.warning("no train split for %r: fine-tuning on its %s split", source, split)
        return tokenize_corpus(texts, tokenizer)
    raise DataNotFoundError(f"no train, validation or test text for {source!r}")


def _cache_file(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / f"teacher-text-{digest}.safetensors"


def _first_tokens(tokenizer: PreTrainedTokenizerBase, n: int, generator: torch.Generator) -> torch.Tensor:
    special = set(tokenizer.all_special_ids)
    allowed = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    return allowed[torch.randint(0, len(allowed), (n,), generator=generator)]


def _sampler(model: PreTrainedModel, device: torch.device) -> tuple[PreTrainedModel, dict]:
    """What samples on ``device``: on a GPU the model in bfloat16 (a copy where it is held in float32) with a
    static KV cache, which ``generate`` compiles with CUDA graphs (the dynamic cache re-dispatches every layer's
    ops at every token: ~5k tokens/s for SmolLM2 at batch 256 on an H200); elsewhere the model as it is."""
    if device.type != "cuda":
        return model, {}
    if model.dtype == torch.float32:
        model = copy.deepcopy(model).to(torch.bfloat16)
    return model, {"cache_implementation": "static"}


@torch.no_grad()
def teacher_sequences(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, n_sequences: int, seq_len: int,
                      seed: int, *, model_id: str, batch_size: int = 256, cache_dir: str | Path | None = None,
                      progress: bool = True) -> torch.Tensor:
    """``(n_sequences, seq_len)`` token ids sampled from ``model`` (see the module docstring), on its device.

    Reproducible for a seed and ``batch_size`` (sampling draws from the global generator batch by batch).
    ``model_id`` names the model in the cache key (with the sizes, seed and sampling rule); with
    ``cache_dir`` the ids are read from / written to ``teacher-text-<key>.safetensors`` there.
    """
    key = {"model": model_id, "n": n_sequences, "seq_len": seq_len, "seed": seed, "batch_size": batch_size,
           "rule": "uniform-first-token/t1"}
    if next(model.parameters()).device.type == "cuda":
        key["sampler"] = "bf16/static-cache"  # not the same numbers as the float32 model's
    cached = _cache_file(Path(cache_dir), key) if cache_dir else None
    if cached is not None and cached.is_file():
        return load_file(str(cached))["ids"]
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    first = _first_tokens(tokenizer, n_sequences, generator)
    torch.manual_seed(seed)  # generate() samples from the global generator
    eos = tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    sampler, options = _sampler(model, device)
    chunks = []
    start_gen = time.perf_counter()
    for start in range(0, n_sequences, batch_size):
        prompt = first[start:start + batch_size, None].to(device)
        out = sampler.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=1.0,
                               top_k=0, top_p=1.0, max_new_tokens=seq_len - 1, min_new_tokens=seq_len - 1,
                               pad_token_id=eos if eos is not None else 0, **options)
        chunks.append(out[:, :seq_len].cpu())
        if progress:
            log.info("teacher text: %d of %d sequences", min(start + batch_size, n_sequences), n_sequences)
    model.train(was_training)
    ids = torch.cat(chunks).long()
    seconds = time.perf_counter() - start_gen
    log.info("teacher text: %s tokens in %.1f s", f"{ids.numel():,}", seconds)
    if cached is not None:
        save_whole({"ids": ids.contiguous()}, cached, metadata={"key": json.dumps(key)})
    return ids


def _windows(ids: torch.Tensor, n: int, seq_len: int, seed: int) -> torch.Tensor:
    """All non-overlapping windows when ``n`` is that many (each token once), else ``n`` at random starts."""
    from .data import pack_sequences

    whole = ids.numel() // seq_len
    return ids[: whole * seq_len].view(whole, seq_len).clone() if n == whole else pack_sequences(ids, n, seq_len, seed)


def _text_windows(parts: list[str], tokenizer: PreTrainedTokenizerBase,
                  data_dir: str | Path | None) -> dict[str, torch.Tensor]:
    """1-D ids of every text source that has data; a missing one is skipped with a warning, unless all are."""
    from .data import DataNotFoundError

    found: dict[str, torch.Tensor] = {}
    for part in parts:
        try:
            found[part] = corpus_ids(part, tokenizer, data_dir)
        except DataNotFoundError as exc:
            if len(parts) == 1:
                raise
            log.warning("training data: %s has no data here, left out (%s)", part, str(exc).splitlines()[0])
    if parts and not found:
        raise DataNotFoundError(f"none of the training sources {', '.join(parts)} has data")
    return found


def training_ids(source: str, tokenizer: PreTrainedTokenizerBase, n_sequences: int | None, seq_len: int,
                 seed: int, *, data_dir: str | Path | None = None, teacher: PreTrainedModel | None = None,
                 teacher_id: str = "", cache_dir: str | Path | None = None) -> torch.Tensor:
    """``(n, seq_len)`` fine-tuning windows from ``source``, one or several joined by ``+``.

    ``n_sequences=None`` takes every whole window of the text sources once (each token once; not with
    ``teacher``). Otherwise, without ``teacher`` the sources share the windows equally (packed at random
    starts, seeded; a source with fewer distinct tokens warns); with it, each text source gives at most its
    share and at most what it holds (non-overlapping windows: every token once) and teacher text (which
    needs the original model) fills the rest. A text source without data is left out with a warning when
    others have some. The result is in source order; the trainer shuffles.
    """
    parts = [p for p in source.split("+") if p]
    if not parts:
        raise ValueError("--train-data names no source")
    fill = TEACHER in parts
    if fill and (teacher is None or n_sequences is None):
        raise ValueError("--train-data teacher needs the original model and a number of --train-samples")
    texts = _text_windows([p for p in parts if p != TEACHER], tokenizer, data_dir)
    share = n_sequences // len(parts) if n_sequences is not None else 0
    out = []
    for i, (part, ids) in enumerate(texts.items()):
        whole = ids.numel() // seq_len
        if n_sequences is None:
            n = whole
        elif fill:
            n = min(share, whole)
        else:
            n = n_sequences // len(texts) + (i < n_sequences % len(texts))
            warn_if_repeated(part, ids.numel(), n, seq_len)
        if n:
            out.append(_windows(ids, n, seq_len, seed + i))
    rest = n_sequences - sum(len(o) for o in out) if fill else 0
    if rest:
        out.append(teacher_sequences(teacher, tokenizer, rest, seq_len, seed, model_id=teacher_id, cache_dir=cache_dir))
    if not out:
        raise ValueError(f"no whole window of {seq_len} tokens in {source!r}")
    log.info("training data %s: %s", source, ", ".join(f"{len(o)} x {seq_len}" for o in out))
    return torch.cat(out)
