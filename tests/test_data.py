"""Tests for sharvet.data: file formats, split selection, offline errors, token packing."""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from sharvet import data
from sharvet.data import (
    DATA_DIR_ENV,
    DataError,
    calibration_batch,
    join_texts,
    load_texts,
    pack_sequences,
    read_text_file,
    resolve_data_dir,
    tokenize_corpus,
)

ROWS = [" = Heading = ", " First paragraph , with words .", " Second one @-@ here ."]
HAS_PARQUET = any(importlib.util.find_spec(m) for m in ("pyarrow", "pandas"))


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their own data dir; never the hub."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _byte_bpe(add_bos: bool) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer trained in-process (no network)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(ROWS * 20 + ["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>")


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return _byte_bpe(add_bos=False)


def _write(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _jsonl(rows: list[str], key: str = "text") -> str:
    return "".join(json.dumps({key: r, "meta": i}) + "\n" for i, r in enumerate(rows))


# ------------------------------------------------------------------------------------------------ formats


@pytest.mark.parametrize("name", ["a.txt", "a.raw", "a.txt.gz"])
def test_line_formats_drop_blank_lines(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / name, ROWS[0] + "\n\n" + ROWS[1] + "\n   \n" + ROWS[2] + "\n")
    assert read_text_file(path) == ROWS


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.gz", "a.json", "a.json.gz"])
def test_json_lines(tmp_path: Path, name: str) -> None:
    assert read_text_file(_write(tmp_path / name, _jsonl(ROWS))) == ROWS


def test_json_list_and_fallback_field(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.json", json.dumps([{"sentence": r} for r in ROWS]))
    assert read_text_file(path) == ROWS


def test_explicit_field(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.jsonl", "".join(json.dumps({"body": r, "text": "x"}) + "\n" for r in ROWS))
    assert read_text_file(path, field="body") == ROWS


@pytest.mark.skipif(not HAS_PARQUET, reason="neither pyarrow nor pandas is installed")
def test_parquet(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    path = tmp_path / "a.parquet"
    pd.DataFrame({"id": range(len(ROWS)), "content": ROWS}).to_parquet(path)
    assert read_text_file(path) == ROWS


def test_missing_field_names_file_and_record(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.jsonl", _jsonl(ROWS[:2]) + json.dumps({"title": "no text"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl: record 2 "):
        read_text_file(path)


@pytest.mark.parametrize("name", ["wiki.test.raw", "c4.test.jsonl.gz", "list.test.json"])
def test_empty_file_fails_naming_it(tmp_path: Path, name: str, tokenizer: PreTrainedTokenizerFast) -> None:
    """An empty (or blank) WikiText-2 file used to pass reading and fail later with "no text to tokenise"."""
    _write(tmp_path / "wikitext2" / name, "[]" if name.endswith(".json") else "\n\n")
    with pytest.raises(DataError, match=rf"wikitext2/{name}: no records \(the file is empty\)"):
        calibration_batch("wikitext2", tokenizer, 2, 8, 0, data_dir=tmp_path, split="test")


def test_json_list_error_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"a\.json: not valid JSON \(.* at line 2\)"):
        read_text_file(_write(tmp_path / "a.json", '[{"text": "x"},\n oops]'))


def test_unsupported_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unsupported"):
        read_text_file(_write(tmp_path / "a.csv", "x\n"))


# ------------------------------------------------------------------------------------------------ folders and names


def _split_folder(root: Path) -> Path:
    folder = root / "wikitext2"
    _write(folder / "wiki.test.raw", "test row\n")
    _write(folder / "wiki.valid.raw", "valid row\n")
    _write(folder / "wiki.train.raw", "train row 1\ntrain row 2\n")
    _write(folder / "README.md", "not data\n")
    return folder


@pytest.mark.parametrize(
    ("split", "expected"),
    [
        ("test", ["test row"]),
        ("valid", ["valid row"]),
        ("validation", ["valid row"]),
        ("train", ["train row 1", "train row 2"]),
    ],
)
def test_folder_split_selection(tmp_path: Path, split: str, expected: list[str]) -> None:
    folder = _split_folder(tmp_path)
    assert load_texts(str(folder), split=split) == expected
    assert load_texts("wikitext2", split=split, data_dir=tmp_path) == expected


def test_folder_without_split_names_serves_every_split(tmp_path: Path) -> None:
    _write(tmp_path / "corpus" / "b.txt", "second\n")
    _write(tmp_path / "corpus" / "a.jsonl", _jsonl(["first"]))
    assert load_texts(str(tmp_path / "corpus"), split="train") == ["first", "second"]


def test_unlisted_dataset_found_by_layout(tmp_path: Path) -> None:
    _write(tmp_path / "pile" / "pile.validation.jsonl.gz", _jsonl(ROWS))
    assert load_texts("pile", split="valid", data_dir=tmp_path) == ROWS


def test_offline_without_local_file_explains_how_to_provide_it(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_texts("ptb", data_dir=tmp_path, offline=True)
    message = str(info.value)
    assert "--data-dir" in message and DATA_DIR_ENV in message
    assert str(tmp_path / "ptb") in message and "offline" in message


def test_offline_from_environment(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="offline"):
        load_texts("c4", split="validation", data_dir=tmp_path)


def test_a_hub_that_fails_is_named_with_its_error_and_the_local_way_in(tmp_path: Path, monkeypatch) -> None:
    """Online, a corpus missing locally is tried on the hub (mocked: tests never reach it); its failure is one
    DataError naming the hub's error and how to provide the files instead."""
    tried = []

    def unreachable(spec, split, field):  # noqa: ANN001, ANN202 - _load_from_hub's signature
        tried.append((spec.name, split))
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(data, "_load_from_hub", unreachable)
    with pytest.raises(DataError) as info:
        load_texts("ptb", data_dir=tmp_path, offline=False)
    message = str(info.value)
    assert tried == [("ptb", "test")] and "ConnectionError: hub unreachable" in message
    assert "--data-dir" in message and str(tmp_path / "ptb") in message


def test_unknown_name_lists_known_datasets() -> None:
    with pytest.raises(DataError, match="c4, ptb, slimpajama, wikitext2"):
        load_texts("no-such-dataset-xyz")


def test_missing_split_in_folder(tmp_path: Path) -> None:
    _write(tmp_path / "d" / "x.test.txt", "row\n")
    with pytest.raises(DataError, match=r"no file for split 'train' \(found: x.test.txt\)"):
        load_texts(str(tmp_path / "d"), split="train")


def test_resolve_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_data_dir(None) is None
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    assert resolve_data_dir(str(tmp_path / "..")) == tmp_path / ".."
    with pytest.raises(DataError, match="not an existing directory"):
        resolve_data_dir(tmp_path / "missing")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(DataError, match=DATA_DIR_ENV):
        resolve_data_dir(None)


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _split_folder(tmp_path)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert load_texts("wikitext2") == ["test row"]


def test_real_wikitext2(shared_data_dir: Path) -> None:
    rows = load_texts("wikitext2", data_dir=shared_data_dir, offline=True)
    assert len(rows) == 2891
    assert rows[0] == " = Robert Boulter = "


# ------------------------------------------------------------------------------------------------ tokens


def test_join_texts() -> None:
    assert join_texts(["a", "b"]) == "a\n\nb"


def test_tokenize_corpus_chunks_match_whole_text(tokenizer: PreTrainedTokenizerFast) -> None:
    rows = ROWS * 7
    whole = torch.tensor(tokenizer(join_texts(rows))["input_ids"])
    assert torch.equal(tokenize_corpus(rows, tokenizer), whole)
    assert torch.equal(tokenize_corpus(rows, tokenizer, chunk_chars=40), whole)
    assert tokenize_corpus(rows, tokenizer).dtype == torch.long


def test_tokenize_corpus_single_bos() -> None:
    tok = _byte_bpe(add_bos=True)
    ids = tokenize_corpus(ROWS * 5, tok, chunk_chars=30)
    assert ids[0].item() == tok.bos_token_id
    assert (ids == tok.bos_token_id).sum().item() == 1
    assert torch.equal(ids, torch.tensor(tok(join_texts(ROWS * 5))["input_ids"]))


def test_pack_sequences() -> None:
    ids = torch.arange(100)
    first = pack_sequences(ids, 8, 10, seed=0)
    assert first.shape == (8, 10) and first.dtype == torch.long
    assert torch.equal(first, pack_sequences(ids, 8, 10, seed=0))
    assert not torch.equal(first, pack_sequences(ids, 8, 10, seed=1))
    assert torch.equal(first - first[:, :1], torch.arange(10).expand(8, 10))  # contiguous windows
    many = pack_sequences(ids, 50, 10, seed=3)  # more than the 10 disjoint windows
    assert many.shape == (50, 10) and torch.equal(many, pack_sequences(ids, 50, 10, seed=3))
    assert pack_sequences(ids, 2, 100, seed=0).tolist() == [list(range(100))] * 2
    with pytest.raises(DataError, match="fewer than seq_len"):
        pack_sequences(ids, 1, 101, seed=0)


def test_calibration_batch_falls_back_to_present_split(
    tmp_path: Path, tokenizer: PreTrainedTokenizerFast, caplog: pytest.LogCaptureFixture
) -> None:
    _write(tmp_path / "wikitext2" / "wiki.test.raw", "\n".join(ROWS * 10) + "\n")
    with caplog.at_level(logging.WARNING, logger=data.__name__):
        batch = calibration_batch("wikitext2", tokenizer, 4, 16, seed=0, data_dir=tmp_path, offline=True)
        again = calibration_batch("wikitext2", tokenizer, 4, 16, seed=0, data_dir=tmp_path, offline=True)
    assert batch.shape == (4, 16) and torch.equal(batch, again)
    warnings = [r.getMessage() for r in caplog.records if "wiki.test.raw" in r.getMessage()]
    assert len(warnings) == 1 and "train" in warnings[0]


def test_calibration_batch_without_any_data(tmp_path: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    with pytest.raises(DataError, match="--data-dir"):
        calibration_batch("wikitext2", tokenizer, 4, 16, seed=0, data_dir=tmp_path, offline=True)


def test_calibration_mixture_shares_the_windows_between_sources(tmp_path: Path,
                                                                tokenizer: PreTrainedTokenizerFast) -> None:
    """``a+b`` draws each source's share as that source alone would (seed offset by its position)."""
    _write(tmp_path / "wikitext2" / "wiki.test.raw", "\n".join(ROWS * 10) + "\n")
    _write(tmp_path / "notes.txt", "\n".join(reversed(ROWS * 10)) + "\n")
    notes = str(tmp_path / "notes.txt")
    mixed = calibration_batch(f"wikitext2+{notes}", tokenizer, 5, 16, seed=4, data_dir=tmp_path, offline=True)
    wiki = calibration_batch("wikitext2", tokenizer, 3, 16, seed=4, data_dir=tmp_path, offline=True)
    other = calibration_batch(notes, tokenizer, 2, 16, seed=5, data_dir=tmp_path, offline=True)
    assert torch.equal(mixed, torch.cat([wiki, other]))


def test_the_default_method_calibrates_on_wikitext_and_c4_the_paper_on_wikitext() -> None:
    from sharvet.cli import build_parser, calibration_spec

    parser = build_parser()
    assert calibration_spec(parser.parse_args(["compress", "-o", "x"])).source == "wikitext2+c4"
    assert calibration_spec(parser.parse_args(["compress", "--method", "sharvet", "-o", "x"])).source == "wikitext2"
    assert calibration_spec(parser.parse_args(["compress", "--method", "sharvet", "--calib-data", "c4",
                                               "-o", "x"])).source == "c4"
    assert calibration_spec(parser.parse_args(["similarity", "--plot", "x.png"])).source == "wikitext2"


def test_calibration_mixture_leaves_out_what_the_data_dir_lacks(tmp_path: Path, tokenizer: PreTrainedTokenizerFast,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    _write(tmp_path / "wikitext2" / "wiki.test.raw", "\n".join(ROWS * 10) + "\n")
    with caplog.at_level(logging.WARNING, logger=data.__name__):
        mixed = calibration_batch("wikitext2+c4", tokenizer, 4, 16, seed=0, data_dir=tmp_path)
    assert torch.equal(mixed, calibration_batch("wikitext2", tokenizer, 4, 16, seed=0, data_dir=tmp_path))
    assert any("c4 not in" in r.getMessage() for r in caplog.records)


def test_a_calibration_spec_left_open_takes_the_methods_text() -> None:
    from sharvet.api import CalibrationSpec

    assert CalibrationSpec().for_method("sharvet-plus").source == "wikitext2+c4"
    assert CalibrationSpec().for_method("basis-sharing").source == "wikitext2"
    assert CalibrationSpec("c4").for_method("sharvet-plus").source == "c4"
