"""Fine-tuning data: the fixed C4 split, teacher-generated text, mixing sources, the repetition warning."""
from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path

import pytest
import torch

from sharvet import training_data
from sharvet.data import load_texts
from sharvet.data_splits import FIXED_SPLITS
from sharvet.training_data import teacher_sequences, training_ids, warn_if_repeated
from tiny import tiny_llama

C4_FILE = FIXED_SPLITS["c4"][0]


class _Tokenizer:
    """What the data layer and the sampler use of a tokenizer: characters as tokens, ids 0-2 special."""

    all_special_ids = [0, 1, 2]
    eos_token_id = 2
    bos_token_id = None

    def __len__(self) -> int:
        return 128

    def __call__(self, text, add_special_tokens=True, verbose=False):
        return {"input_ids": [3 + ord(c) % 125 for c in text]}


def _c4_folder(tmp_path: Path, n_docs: int) -> Path:
    (tmp_path / "c4").mkdir()
    with gzip.open(tmp_path / "c4" / C4_FILE, "wt") as f:
        for i in range(n_docs):
            f.write(json.dumps({"text": f"document {i} " + "x" * 40}) + "\n")
    return tmp_path


def test_c4_split_keeps_training_and_held_out_documents_apart(tmp_path, monkeypatch):
    monkeypatch.setitem(FIXED_SPLITS, "c4", (C4_FILE, 3))
    root = _c4_folder(tmp_path, 5)
    train = load_texts("c4", split="train", data_dir=root)
    held = load_texts("c4", split="validation", data_dir=root)
    assert [t.split()[1] for t in train] == ["0", "1", "2"] and [t.split()[1] for t in held] == ["3", "4"]
    assert load_texts("c4", split="test", data_dir=root) == held  # evaluation reads the held-out documents


@pytest.mark.skipif(not (Path(os.environ.get("SHARVET_DATA_DIR", "/nonexistent")) / "c4" / C4_FILE).is_file(),
                    reason="needs the shared C4 subset")
def test_the_shared_c4_subset_splits_1000_and_1000():
    train = load_texts("c4", split="train")
    held = load_texts("c4", split="validation")
    assert len(train) == len(held) == 1000 and not set(train) & set(held)


def test_repetition_warns_in_one_line(caplog):
    with caplog.at_level(logging.WARNING, logger="sharvet.training_data"):
        assert not warn_if_repeated("wikitext2", 10_000, 4, 1024)
        assert warn_if_repeated("wikitext2", 1_000, 4, 1024)
    assert len(caplog.records) == 1 and "\n" not in caplog.records[0].getMessage()
    assert "4.1 times" in caplog.records[0].getMessage()


def test_teacher_text_is_seeded_cached_and_never_starts_with_a_special_token(tmp_path):
    model, tok = tiny_llama(layers=2), _Tokenizer()
    a = teacher_sequences(model, tok, 5, 9, seed=3, model_id="tiny", batch_size=2, cache_dir=tmp_path)
    assert a.shape == (5, 9) and a.dtype == torch.long
    assert not set(a[:, 0].tolist()) & set(tok.all_special_ids)
    assert len(list(tmp_path.glob("teacher-text-*.safetensors"))) == 1
    other = tiny_llama(layers=2, seed=1)  # a different model: only the cache can return the same ids
    assert torch.equal(teacher_sequences(other, tok, 5, 9, seed=3, model_id="tiny", batch_size=2, cache_dir=tmp_path), a)
    fresh = teacher_sequences(model, tok, 5, 9, seed=3, model_id="tiny", batch_size=2)  # no cache: same seed
    assert torch.equal(fresh, a)
    assert not torch.equal(teacher_sequences(model, tok, 5, 9, seed=4, model_id="tiny"), a)


def test_teacher_fills_what_the_text_sources_cannot(tmp_path, monkeypatch):
    monkeypatch.setitem(FIXED_SPLITS, "c4", (C4_FILE, 3))
    root = _c4_folder(tmp_path, 6)  # 3 training documents of ~52 characters: 3 whole windows of 40
    tok = _Tokenizer()
    text = training_data.corpus_ids("c4", tok, root)
    ids = training_ids("c4+teacher", tok, 10, 40, 0, data_dir=root, teacher=tiny_llama(layers=2), teacher_id="t")
    whole = text.numel() // 40
    assert ids.shape == (10, 40) and whole == 3  # fewer than its share of 5: the teacher gives 7
    assert torch.equal(ids[:whole], text[: whole * 40].view(whole, 40))  # every token once, in order
    with pytest.raises(ValueError, match="original model"):
        training_ids("teacher", tok, 2, 8, 0)


def test_by_default_every_whole_window_once_and_missing_sources_left_out(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(FIXED_SPLITS, "c4", (C4_FILE, 3))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # wikitext2 is not in the folder: no hub either
    root = _c4_folder(tmp_path, 6)
    tok = _Tokenizer()
    text = training_data.corpus_ids("c4", tok, root)
    with caplog.at_level(logging.WARNING, logger="sharvet.training_data"):
        ids = training_ids("wikitext2+c4", tok, None, 40, 0, data_dir=root, cache_dir=None)
    assert torch.equal(ids, text[: 3 * 40].view(3, 40))
    assert any("wikitext2 has no data here" in r.getMessage() for r in caplog.records)
    with pytest.raises(Exception, match="wikitext2"):
        training_ids("wikitext2", tok, None, 40, 0, data_dir=root)


def test_text_sources_share_equally_and_warn_when_they_repeat(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(FIXED_SPLITS, "c4", (C4_FILE, 4))
    root = _c4_folder(tmp_path, 6)
    with caplog.at_level(logging.WARNING, logger="sharvet.training_data"):
        ids = training_ids("c4", _Tokenizer(), 50, 40, 0, data_dir=root)
    assert ids.shape == (50, 40)
    assert any("distinct" in r.getMessage() for r in caplog.records)


def test_teacher_text_never_samples_the_end_of_text():
    model, tok = tiny_llama(layers=2), _Tokenizer()
    eos = torch.tensor([tok.eos_token_id])  # make the end of text by far the likeliest next token
    model.lm_head.register_forward_hook(lambda module, args, out: out.index_fill(-1, eos, 1e4))
    ids = teacher_sequences(model, tok, 4, 12, seed=0, model_id="tiny")
    assert tok.eos_token_id not in ids[:, 1:].tolist()
