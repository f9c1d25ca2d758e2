"""Text data for calibration, fine-tuning and evaluation.

Data is read from a local data directory laid out as ``DIR/<dataset>/<files>`` (for example
``DIR/wikitext2/wiki.test.raw`` or ``DIR/c4/c4-validation.00000-of-00008.json.gz``) so that every run can work
offline; a known dataset name that has no local file falls back to the Hugging Face hub through ``datasets``.
The split of a local file is read from its name (``test``, ``valid``/``validation``, ``train``); files without a
split in their name serve every split.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sharvet.datafiles import (
    SPLIT_ALIASES, DataError, DataNotFoundError, file_format, files_for_split, parquet_columns, read_records,
    supported_files,
)
from sharvet.data_splits import fixed_split

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "SHARVET_DATA_DIR"
#: Record fields tried, in order, when no field is given for JSON/parquet files.
TEXT_FIELDS = ("text", "sentence", "content")
#: Corpora are tokenised in pieces of about this many characters. WikiText-2 and PTB test sets fit in one piece,
#: so their tokens are exactly those of tokenising the whole joined text at once.
DEFAULT_CHUNK_CHARS = 1 << 22

_FALLBACK_SPLITS = ("validation", "test", "train")
_TRUE_VALUES = {"1", "true", "yes", "on"}
_warned_fallbacks: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class DatasetSource:
    """Where a named dataset lives: ``DIR/<local_dir>/`` locally, ``hub_path``/``hub_name`` on the hub."""

    name: str
    local_dir: str
    hub_path: str
    hub_name: str | None = None
    field: str = "text"
    eval_split: str = "test"
    #: split -> file inside the hub repository, for repositories far too large to load whole (C4).
    hub_data_files: Mapping[str, str] = dataclass_field(default_factory=dict)
    #: stream only this many leading documents of a hub split (SlimPajama-6B's train split is about 24 GB).
    hub_max_rows: int | None = None

    def hub_description(self, split: str) -> str:
        """Human-readable hub location, for messages."""
        where = self.hub_path + (f" ({self.hub_name})" if self.hub_name else "")
        if split in self.hub_data_files:
            where += f" file {self.hub_data_files[split]}"
        return f"{where} split {split!r}"


DATASETS: dict[str, DatasetSource] = {
    source.name: source
    for source in (
        DatasetSource("wikitext2", "wikitext2", "wikitext", "wikitext-2-raw-v1"),
        DatasetSource(
            "c4",
            "c4",
            "allenai/c4",
            eval_split="validation",
            hub_data_files={
                "train": "en/c4-train.00000-of-01024.json.gz",
                "validation": "en/c4-validation.00000-of-00008.json.gz",
            },
        ),
        DatasetSource("ptb", "ptb", "ptb_text_only", "penn_treebank", field="sentence"),
        DatasetSource("slimpajama", "slimpajama", "DKYoon/SlimPajama-6B", hub_max_rows=20_000),
    )
}


# --------------------------------------------------------------------------------------------------- locations


def resolve_data_dir(value: str | Path | None) -> Path | None:
    """The data directory: ``value`` if given, else ``$SHARVET_DATA_DIR``, else None (hub only)."""
    origin = "data dir"
    if value is None or str(value) == "":
        value, origin = os.environ.get(DATA_DIR_ENV), DATA_DIR_ENV
        if not value:
            return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DataError(f"{origin} {str(path)!r} is not an existing directory")
    return path


def normalize_split(split: str) -> str:
    """Canonical split name: ``train``, ``validation`` (also ``valid``, ``val``, ``dev``) or ``test``."""
    try:
        return SPLIT_ALIASES[split.lower()]
    except KeyError:
        raise DataError(f"unknown split {split!r}; use train, validation (valid) or test") from None


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else whether HF_DATASETS_OFFLINE or HF_HUB_OFFLINE is set to 1."""
    if offline is not None:
        return offline
    return any(os.environ.get(var, "").lower() in _TRUE_VALUES for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


# --------------------------------------------------------------------------------------------------- files


def _record_text(record: Any, path: Path, where: str, field: str | None) -> str:
    """The text of one record: a line as is; of a JSON/parquet record ``field`` if given, else the first of
    :data:`TEXT_FIELDS`."""
    if isinstance(record, str):
        return record
    candidates = (field,) if field else TEXT_FIELDS
    if isinstance(record, Mapping):
        for name in candidates:
            if isinstance(record.get(name), str):
                return record[name]
    raise DataError(f"{path}: {where} has no text field {' / '.join(repr(c) for c in candidates)}")


def _pick_column(path: Path, columns: Sequence[str], field: str | None) -> str:
    for name in (field,) if field else TEXT_FIELDS:
        if name in columns:
            return name
    raise DataError(f"{path}: no text column {field or ' / '.join(TEXT_FIELDS)} (columns: {list(columns)})")


def read_text_file(path: str | Path, field: str | None = None) -> list[str]:
    """Text records of one file (formats: :mod:`sharvet.datafiles`).

    ``.txt``/``.raw``: one record per line, blank lines dropped. ``.json`` (a list, or JSON lines), ``.jsonl`` and
    ``.parquet``: the ``field`` of each record, by default the first present of ``text``, ``sentence``,
    ``content``. An empty file fails, naming it.
    """
    path = Path(path)
    columns = None
    if file_format(path) == ".parquet" and path.is_file():  # read only the text column of a (large) table
        columns = [_pick_column(path, parquet_columns(path), field)]
    return [_record_text(record, path, where, field) for where, record in read_records(path, columns=columns)]


def _read_files(files: Sequence[Path], field: str | None) -> list[str]:
    return [text for path in files for text in read_text_file(path, field)]


def _read_folder(folder: Path, split: str, field: str | None) -> list[str]:
    files = supported_files(folder)
    chosen = files_for_split(files, split)
    if not chosen:
        found = ", ".join(p.name for p in files) or "no supported files"
        raise DataNotFoundError(f"{folder}: no file for split {split!r} (found: {found})")
    return _read_files(chosen, field)


def existing_path(source: str, data_dir: Path | None) -> Path | None:
    """``source`` as a path, relative to the working directory or else to the data directory."""
    for candidate in (Path(source).expanduser(), data_dir / source if data_dir else None):
        if candidate is not None and candidate.exists():
            return candidate
    return None


# --------------------------------------------------------------------------------------------------- loading


def _load_from_hub(spec: DatasetSource, split: str, field: str | None) -> list[str]:
    """Rows of a hub dataset split through ``datasets.load_dataset``."""
    try:
        import datasets
    except ImportError:
        raise DataNotFoundError("the datasets package is not installed (pip install 'sharvet[hub]')") from None

    kwargs: dict[str, Any] = {}
    if spec.hub_data_files:
        if split not in spec.hub_data_files:
            raise DataNotFoundError(f"{spec.name} has no {split!r} split (has {', '.join(spec.hub_data_files)})")
        kwargs["data_files"] = {split: spec.hub_data_files[split]}
    streaming = spec.hub_max_rows is not None
    rows = datasets.load_dataset(spec.hub_path, spec.hub_name, split=split, streaming=streaming, **kwargs)
    column = field or spec.field
    if streaming:
        return [row[column] for row in itertools.islice(rows, spec.hub_max_rows)]
    return list(rows[column])


def _missing_message(spec: DatasetSource, split: str, data_dir: Path | None, hub_note: str) -> str:
    folder = f"{data_dir / spec.local_dir}/" if data_dir else f"DIR/{spec.local_dir}/ (no data dir given)"
    return (
        f"no {split!r} data for {spec.name!r}: looked for a {split} file in {folder}; {hub_note}. "
        f"Provide it with --data-dir DIR or {DATA_DIR_ENV}=DIR, laid out as DIR/{spec.local_dir}/<files> "
        f"with the split in each file name (e.g. DIR/{spec.local_dir}/{spec.local_dir}.{split}.txt or .jsonl)"
    )


def _load_named(
    spec: DatasetSource, split: str, data_dir: Path | None, field: str | None, offline: bool | None
) -> list[str]:
    """A known dataset: the local folder first, then the hub unless offline."""
    folder = data_dir / spec.local_dir if data_dir else None
    if folder is not None and folder.is_dir():
        fixed = fixed_split(spec.name, folder)  # C4: documents for training vs held out (sharvet.training_data)
        if fixed is not None:
            return fixed.select(_read_files([fixed.path], field), split)
        chosen = files_for_split(supported_files(folder), split)
        if chosen:
            return _read_files(chosen, field)
    if is_offline(offline):
        raise DataNotFoundError(_missing_message(spec, split, data_dir, "offline, so the hub was not tried"))
    try:
        return _load_from_hub(spec, split, field)
    except Exception as exc:  # network, missing `datasets`, hub changes: all mean "not available here"
        note = f"loading {spec.hub_description(split)} from the Hugging Face hub failed ({type(exc).__name__}: {exc})"
        raise DataNotFoundError(_missing_message(spec, split, data_dir, note)) from exc


def load_texts(
    source: str,
    *,
    split: str = "test",
    data_dir: str | Path | None = None,
    field: str | None = None,
    offline: bool | None = None,
) -> list[str]:
    """Text rows of ``source``: a known dataset name, a file, or a folder (its files for ``split``).

    A known name (see :data:`DATASETS`) is read from ``<data_dir>/<name>/`` if a file for ``split`` is there,
    else from the hub unless offline. Any other name is tried as a path, relative to the working directory and
    then to the data directory, so datasets added to the data directory later work without code changes.
    Hub rows are returned as the dataset has them (WikiText-2 keeps its empty rows, as the usual protocol does);
    local ``.raw``/``.txt`` files drop blank lines.
    """
    split = normalize_split(split)
    root = resolve_data_dir(data_dir)
    if source in DATASETS:
        return _load_named(DATASETS[source], split, root, field, offline)
    path = existing_path(source, root)
    if path is None:
        raise DataNotFoundError(
            f"{source!r} is neither a file or folder (looked in the working directory"
            f"{' and ' + str(root) if root else ''}) nor a known dataset ({', '.join(sorted(DATASETS))})"
        )
    return _read_folder(path, split, field) if path.is_dir() else read_text_file(path, field)


# --------------------------------------------------------------------------------------------------- tokens


def join_texts(rows: Sequence[str]) -> str:
    """Rows joined by blank lines, as the usual WikiText-2 perplexity protocol does."""
    return "\n\n".join(rows)


def _text_chunks(rows: Sequence[str], chunk_chars: int) -> Iterator[str]:
    """Pieces whose concatenation is ``join_texts(rows)``, cut only right after a ``"\\n\\n"`` separator."""
    batch: list[str] = []
    size = 0
    for index, row in enumerate(rows):
        batch.append(row)
        size += len(row) + 2
        if size >= chunk_chars and index < len(rows) - 1:
            yield join_texts(batch) + "\n\n"
            batch, size = [], 0
    if batch:
        yield join_texts(batch)


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer puts a BOS token in front of a text by default (Llama does, GPT-2 does not)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos is not None and tokenizer("", add_special_tokens=True)["input_ids"][:1] == [bos]


def tokenize_corpus(
    texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, *, chunk_chars: int = DEFAULT_CHUNK_CHARS
) -> torch.Tensor:
    """1-D token ids of ``join_texts(texts)``, tokenised in pieces of about ``chunk_chars`` characters.

    Special tokens match the reference protocol ``tokenizer("\\n\\n".join(rows))``: a single BOS at the very start
    if the tokenizer adds one by default, nothing else (no EOS, no per-piece BOS). Pieces are cut after a row
    separator, where byte-level BPE tokenizers split anyway; a corpus that fits in one piece is tokenised exactly
    as a whole.
    """
    if not texts:
        raise DataError("no text to tokenise")
    pieces = [torch.tensor([tokenizer.bos_token_id] if _adds_bos(tokenizer) else [], dtype=torch.long)]
    for chunk in _text_chunks(texts, chunk_chars):
        ids = tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]
        pieces.append(torch.tensor(ids, dtype=torch.long))
    return torch.cat(pieces)


def pack_sequences(ids_1d: torch.Tensor, n_sequences: int, seq_len: int, seed: int) -> torch.Tensor:
    """``(n_sequences, seq_len)`` windows of ``ids_1d`` at uniformly random starts, reproducible for a seed.

    Starts come from a ``torch.Generator`` seeded with ``seed``, as SVD-LLM and Basis Sharing draw calibration
    windows; windows may overlap, so any ``n_sequences`` works on a corpus of at least ``seq_len`` tokens.
    """
    if ids_1d.dim() != 1:
        raise ValueError(f"expected 1-D token ids, got shape {tuple(ids_1d.shape)}")
    if n_sequences < 1 or seq_len < 1:
        raise ValueError(f"n_sequences and seq_len must be positive, got {n_sequences} and {seq_len}")
    n_tokens = ids_1d.numel()
    if n_tokens < seq_len:
        raise DataError(f"corpus has {n_tokens} tokens, fewer than seq_len={seq_len}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, n_tokens - seq_len + 1, (n_sequences,), generator=generator)
    index = starts[:, None] + torch.arange(seq_len)
    return ids_1d[index.to(ids_1d.device)].long()


def _mixture(source: str, tokenizer: PreTrainedTokenizerBase, n_sequences: int, seq_len: int, seed: int,
             data_dir: str | Path | None, split: str, field: str | None, offline: bool | None) -> torch.Tensor:
    """Sources joined by ``+`` share the windows equally (the first ones take the remainder), source ``i`` drawn
    with ``seed + i``. Where the data dir holds some of them locally, the others are left out with a warning
    (local data the user pointed at wins; the hub is not asked for the rest)."""
    root = resolve_data_dir(data_dir)
    parts = [p for p in source.split("+") if p]
    local = [p for p in parts if _local_folder(p, root) is not None or existing_path(p, root) is not None]
    if local and len(local) < len(parts):
        logger.warning("calibration data: %s not in %s, left out (calibrating on %s)",
                       ", ".join(p for p in parts if p not in local), root, "+".join(local))
    chosen = [(i, p) for i, p in enumerate(parts) if not local or p in local]
    counts = [n_sequences // len(chosen) + (j < n_sequences % len(chosen)) for j in range(len(chosen))]
    return torch.cat([calibration_batch(part, tokenizer, n, seq_len, seed + i, root, split, field=field,
                                        offline=offline) for (i, part), n in zip(chosen, counts) if n])


def _local_folder(source: str, data_dir: Path | None) -> Path | None:
    """The local folder behind a dataset name or folder path, if there is one."""
    if source in DATASETS:
        folder = data_dir / DATASETS[source].local_dir if data_dir else None
    else:
        folder = existing_path(source, data_dir)
    return folder if folder is not None and folder.is_dir() else None


def _fallback_texts(source: str, split: str, data_dir: Path | None, field: str | None) -> list[str] | None:
    """Rows of another split's local files when ``split`` has none, with a one-time warning naming them."""
    folder = _local_folder(source, data_dir)
    files = supported_files(folder) if folder else []
    for other in (s for s in _FALLBACK_SPLITS if s != split):
        chosen = files_for_split(files, other)
        if chosen:
            names = ", ".join(str(p) for p in chosen)
            if (source, names) not in _warned_fallbacks:
                _warned_fallbacks.add((source, names))
                logger.warning("no %s split for %r; calibrating on %s instead", split, source, names)
            return _read_files(chosen, field)
    return None


def calibration_batch(
    source: str,
    tokenizer: PreTrainedTokenizerBase,
    n_sequences: int,
    seq_len: int,
    seed: int,
    data_dir: str | Path | None = None,
    split: str = "train",
    *,
    field: str | None = None,
    offline: bool | None = None,
) -> torch.Tensor:
    """``(n_sequences, seq_len)`` calibration windows drawn from ``source``'s ``split``.

    Sources joined by ``+`` (``wikitext2+c4``) share the windows equally, each drawn as one source is.

    If neither the local folder nor the hub has that split but the local folder holds another one (only
    ``wiki.test.raw`` for WikiText-2, say), that split is used instead (validation before test) and a warning
    names the file once. When the data dir holds the dataset's folder, the hub is not asked at all: local
    data the user pointed at wins, and an offline machine does not wait on retries. The whole split is
    tokenised before windows are drawn.
    """
    if "+" in source:
        return _mixture(source, tokenizer, n_sequences, seq_len, seed, data_dir, split, field, offline)
    split = normalize_split(split)
    root = resolve_data_dir(data_dir)
    if _local_folder(source, root) is not None:
        offline = True
    try:
        texts = load_texts(source, split=split, data_dir=root, field=field, offline=offline)
    except DataNotFoundError:
        texts = _fallback_texts(source, split, root, field)
        if texts is None:
            raise
    return pack_sequences(tokenize_corpus(texts, tokenizer), n_sequences, seq_len, seed)
