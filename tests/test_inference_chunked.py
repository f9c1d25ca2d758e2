"""A long prefill's compressed modules run as one operator over chunks of tokens (sharvet.inference.chunked)."""
from __future__ import annotations

import pytest
import torch

from sharvet.inference import chunked, grouped
from sharvet.modules import SharedBasisLinear

from test_inference import compressed, converted


def _module(scaled: bool, bias: bool) -> SharedBasisLinear:
    g = torch.Generator().manual_seed(0)
    basis = torch.nn.Parameter(torch.randn(8, 24, generator=g), requires_grad=False)
    return SharedBasisLinear(basis, torch.randn(16, 8, generator=g),
                             scale=torch.rand(24, generator=g) + 0.5 if scaled else None,
                             bias=torch.randn(16, generator=g) if bias else None)


@pytest.mark.parametrize("scaled,bias,chunk", [(True, True, 64), (False, False, 64), (True, True, 0)])
def test_the_operator_gives_the_modules_forward_over_uneven_chunks(scaled, bias, chunk):
    """130 tokens in chunks of 64 (the last one short) or all at once (0), batch dims kept; its fake gives the same
    shapes."""
    module = _module(scaled, bias)
    x = torch.randn(2, 65, 24)
    out = chunked.chunked_two_stage(x, module.basis, module.scale, module.v, module.bias, chunk)
    assert out.shape == (2, 65, 16)
    torch.testing.assert_close(out, module(x))
    torch.library.opcheck(chunked.chunked_two_stage, (x, module.basis, module.scale, module.v, module.bias, chunk))


def test_sigma_must_be_absorbed_first():
    module = _module(True, False)
    module.sigma = torch.nn.Parameter(torch.ones(8), requires_grad=False)
    with pytest.raises(ValueError, match="sigma absorbed"):
        chunked.chunked_forward(module, torch.randn(3, 24))


def test_only_steps_longer_than_a_chunk_take_the_operator(monkeypatch):
    """The grouped form with chunks of 16 tokens: a 64-token forward runs every compressed module through the
    operator with the reference's logits; a 16-token one and a forward with chunking off (0) never do."""
    model, ids = compressed()
    fast = converted(model, "grouped")
    calls: list[int] = []
    forward = chunked.chunked_forward
    monkeypatch.setattr(grouped, "chunked_forward", lambda m, x: calls.append(x.shape[-2]) or forward(m, x))
    monkeypatch.setattr(chunked, "CHUNK", 16)
    monkeypatch.setattr(chunked, "PIECE", 16)
    long, short = ids[:4, :16], ids[:1, :16]  # 64 and 16 tokens
    torch.testing.assert_close(fast(long).logits, model(long).logits, atol=2e-5, rtol=1e-5)
    assert len(calls) == 7 * 4  # every module of every layer
    calls.clear()
    fast(short)
    assert calls == []
    monkeypatch.setattr(chunked, "PIECE", 0)  # one operator, unsplit: the same logits
    torch.testing.assert_close(fast(long).logits, model(long).logits, atol=2e-5, rtol=1e-5)
    assert len(calls) == 7 * 4 and chunked.describe() == "steps of more than 16 tokens as one operator, unsplit"
    calls.clear()
    monkeypatch.setattr(chunked, "CHUNK", 0)
    fast(long)
    assert calls == []
    assert chunked.describe() == ""  # off: the records' kernel settings read as before
