"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

# No test reaches the Hugging Face hub: a corpus missing from a test's data folder fails at once, as offline, instead
# of after the hub client's retries (~23 s each where the hub is unreachable, as on CI: some 4 minutes a run). Set
# before transformers and huggingface_hub are imported, which read it then. Tests of the hub path mock it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tiny import tiny_llama


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The project's shared data folder: ``$SHARVET_DATA_DIR`` or ``<repo>/../shared/data``; skip if absent."""
    env = os.environ.get("SHARVET_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} not found (set SHARVET_DATA_DIR to run this test)")
    return path


WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "house", "and", "big", "red", "blue", "."]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny LLaMA saved as an original model folder, with a word-level tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-model")
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="[UNK]").save_pretrained(folder)
    tiny_llama(4).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A data folder whose WikiText-2 test file is random sentences over the tiny tokenizer's words."""
    folder = tmp_path_factory.mktemp("data")
    (folder / "wikitext2").mkdir()
    g = torch.Generator().manual_seed(0)
    rows = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (40,), generator=g).tolist()) for _ in range(60)]
    (folder / "wikitext2" / "wiki.test.raw").write_text("\n".join(rows) + "\n")
    return folder
