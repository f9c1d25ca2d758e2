"""Truncated SVD: the Gram-matrix route where it is exact enough, LAPACK's SVD elsewhere."""
from __future__ import annotations

import pytest
import torch

from sharvet.decomposition import svd


def with_spectrum(rows: int, cols: int, values: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, len(values), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, len(values), generator=g, dtype=torch.float64))
    return (u * values) @ v.T


@pytest.fixture
def svd_calls(monkeypatch) -> list[tuple[int, ...]]:
    calls: list[tuple[int, ...]] = []
    real = svd._svd

    def counting(mat):
        calls.append(tuple(mat.shape))
        return real(mat)

    monkeypatch.setattr(svd, "_svd", counting)
    return calls


@pytest.mark.parametrize("shape", [(40, 120), (120, 40), (50, 50)])
def test_well_conditioned_groups_take_the_gram_route_and_match_lapack(shape, svd_calls) -> None:
    mat = with_spectrum(*shape, torch.logspace(0, -2.5, min(shape), dtype=torch.float64))
    rank = 30
    u, s, vh = svd._truncate(mat, rank)
    assert svd_calls == []
    ref = torch.linalg.svdvals(mat)[:rank]
    torch.testing.assert_close(s, ref, rtol=1e-10, atol=0)
    err = torch.linalg.norm(mat - (u * s) @ vh)  # Eckart-Young: the optimum is the norm of the dropped tail
    assert err == pytest.approx(float(torch.linalg.svdvals(mat)[rank:].norm()), rel=1e-9)
    torch.testing.assert_close(u.T @ u, torch.eye(rank, dtype=torch.float64), atol=1e-9, rtol=0)


def test_ill_conditioned_or_rank_deficient_groups_fall_back_to_lapack(svd_calls) -> None:
    ill = with_spectrum(40, 120, torch.logspace(0, -8, 40, dtype=torch.float64))
    u, s, vh = svd._truncate(ill, 35)
    assert svd_calls == [(120, 40)]  # wide: factored as its transpose
    torch.testing.assert_close(s, torch.linalg.svdvals(ill)[:35], rtol=1e-9, atol=0)
    deficient = with_spectrum(60, 30, torch.ones(10, dtype=torch.float64))
    svd._truncate(deficient, 20)
    assert svd_calls[-1] == (60, 30)


def test_float32_always_uses_lapack(svd_calls) -> None:
    mat = with_spectrum(40, 120, torch.linspace(1, 0.5, 40, dtype=torch.float64)).float()
    svd._truncate(mat, 10)
    assert svd_calls == [(120, 40)]
