"""Tests for sharvet.evaluation.perplexity against a token-by-token hand computation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sharvet.data import load_texts, tokenize_corpus
from sharvet.evaluation import evaluation_tokens, perplexity

N_TOKENS = 50
CONTEXT = 16


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 100, (N_TOKENS,), generator=torch.Generator().manual_seed(1))


def _hand_nll(model: LlamaForCausalLM, ids: torch.Tensor, context: int, stride: int) -> tuple[float, int]:
    """Sum of -log p(token t | its window's earlier tokens) over targets, and their count, one token at a time.

    Windows start at 0, stride, 2*stride, ... up to the first that reaches the end; token t is scored by the first
    window that holds it with at least one token before it.
    """
    begins = []
    for begin in range(0, len(ids), stride):
        begins.append(begin)
        if begin + context >= len(ids):
            break
    total, count = 0.0, 0
    with torch.no_grad():
        for t in range(1, len(ids)):
            owner = next((b for b in begins if b < t < b + context), None)
            if owner is None:
                continue
            logits = model(ids[None, owner:t]).logits[0, -1].double()
            total -= torch.log_softmax(logits, dim=-1)[ids[t]].item()
            count += 1
    return total, count


@pytest.mark.parametrize(("stride", "expected_tokens"), [(8, N_TOKENS - 1), (16, N_TOKENS - 4)])
def test_matches_hand_computation(
    model: LlamaForCausalLM, ids: torch.Tensor, stride: int, expected_tokens: int
) -> None:
    result = perplexity(model, ids, context=CONTEXT, stride=stride, progress=False)
    hand_nll, hand_count = _hand_nll(model, ids, CONTEXT, stride)
    # stride < context scores every token after the first once; stride == context skips each window's first token
    assert result.n_tokens == hand_count == expected_tokens
    assert result.n_windows == {8: 6, 16: 4}[stride]
    assert result.nll_sum == pytest.approx(hand_nll, rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(hand_nll / hand_count), rel=1e-5)
    assert (result.context, result.stride) == (CONTEXT, stride)


@pytest.mark.parametrize("stride", [8, 16, 5])
def test_batch_size_does_not_change_result(model: LlamaForCausalLM, ids: torch.Tensor, stride: int) -> None:
    one = perplexity(model, ids, context=CONTEXT, stride=stride, batch_size=1, progress=False)
    three = perplexity(model, ids, context=CONTEXT, stride=stride, batch_size=3, progress=False)
    assert one.n_tokens == three.n_tokens and one.n_windows == three.n_windows
    assert math.isclose(one.nll_sum, three.nll_sum, rel_tol=1e-5)
    assert math.isclose(one.ppl, three.ppl, rel_tol=1e-5)


def test_default_stride_and_training_flag_restored(model: LlamaForCausalLM, ids: torch.Tensor) -> None:
    model.train()
    try:
        result = perplexity(model, ids, context=CONTEXT, progress=False)
        assert model.training
    finally:
        model.eval()
    assert result.stride == CONTEXT


def test_context_longer_than_corpus(model: LlamaForCausalLM, ids: torch.Tensor) -> None:
    result = perplexity(model, ids, context=64, progress=False)
    assert (result.n_windows, result.n_tokens) == (1, N_TOKENS - 1)


def test_rejects_stride_above_context(model: LlamaForCausalLM, ids: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, ids, context=8, stride=9, progress=False)


def test_evaluation_tokens_from_local_files(tmp_path: Path) -> None:
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2, "c": 3}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok)
    (tmp_path / "wikitext2").mkdir()
    (tmp_path / "wikitext2" / "wiki.test.raw").write_text(" a b \n\n c a \n")
    (tmp_path / "c4").mkdir()
    (tmp_path / "c4" / "c4-validation.00000-of-00008.json").write_text('{"text": "b b"}\n{"text": "c"}\n')
    assert evaluation_tokens("wikitext2", tokenizer, tmp_path, offline=True).tolist() == [1, 2, 3, 1]
    assert evaluation_tokens("c4", tokenizer, tmp_path, offline=True).tolist() == [2, 2, 3]
    texts = load_texts("c4", split="validation", data_dir=tmp_path, offline=True)
    assert torch.equal(evaluation_tokens("c4", tokenizer, tmp_path, offline=True), tokenize_corpus(texts, tokenizer))
