"""Grouping report (Figure 4) on synthetic block-structured similarity, where the right answer is known."""
from __future__ import annotations

import json

import pytest
import torch

from sharvet.grouping_report import (GroupingReport, StrategyEntry, grouping_report, paper_entries,
                                     plot_grouping_report)
from sharvet.similarity import TypeSimilarity

IN, OUT = 0.9, 0.2


def _blocks(labels: list[int], seed: int = 0) -> TypeSimilarity:
    """S = 0.9 within a block, 0.2 across, 1 on the diagonal, plus tiny symmetric noise."""
    lab = torch.tensor(labels)
    s = torch.where(lab[:, None] == lab[None, :], IN, OUT).double()
    noise = torch.rand(len(labels), len(labels), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    s = s + 0.01 * (noise + noise.T) / 2
    s.fill_diagonal_(1.0)
    return TypeSimilarity(joint=s, structural=s, functional=None, cosine=s, inv_distance=s)


# "q": 3 contiguous blocks of 4 layers; "down": the same blocks scattered over depth (SEQ cannot find them)
CONTIGUOUS = [0] * 4 + [1] * 4 + [2] * 4
SCATTERED = [0, 1, 2, 0, 2, 1, 1, 0, 2, 2, 0, 1]
SIMS = {"q": _blocks(CONTIGUOUS), "down": _blocks(SCATTERED, seed=1)}


@pytest.fixture(scope="module")
def report() -> GroupingReport:
    return grouping_report(SIMS, paper_entries(3) + [StrategyEntry("singletons", "consecutive", 12)], seed=0)


def _mean(report: GroupingReport, label: str, type_name: str | None = None) -> float:
    vals = report.pooled_pairs(label) if type_name is None else report.results[label][type_name].pairs
    return sum(vals) / len(vals)


def test_spectral_recovers_blocks_and_beats_position_strategies(report: GroupingReport) -> None:
    for t, labels in (("q", CONTIGUOUS), ("down", SCATTERED)):
        expected = sorted([[i for i, b in enumerate(labels) if b == blk] for blk in range(3)])
        assert sorted(report.results["SharVeT"][t].groups) == expected
    assert _mean(report, "SharVeT") == pytest.approx(IN, abs=0.02)
    assert min(report.pooled_pairs("SharVeT")) > 0.85  # no outliers
    assert _mean(report, "CYCLE") < IN - 0.2
    assert _mean(report, "REV") < IN - 0.2
    # SEQ is right when blocks are contiguous, wrong when they are scattered
    assert _mean(report, "SEQ", "q") == pytest.approx(IN, abs=0.02)
    assert _mean(report, "SEQ", "down") < IN - 0.2


def test_pair_counts_and_group_means(report: GroupingReport) -> None:
    for per_type in report.results.values():
        for tg in per_type.values():
            assert len(tg.pairs) == sum(len(g) * (len(g) - 1) // 2 for g in tg.groups)
            assert len(tg.group_means) == len(tg.groups)
            for g, m in zip(tg.groups, tg.group_means):
                assert (m is None) == (len(g) == 1)
    # k == L: every group is one layer, so nothing to summarise
    assert report.pooled_pairs("singletons") == []
    assert all(m is None for m in report.results["singletons"]["q"].group_means)


def test_to_dict_is_json_and_markdown_has_rows(report: GroupingReport) -> None:
    d = json.loads(json.dumps(report.to_dict()))
    spec = d["strategies"][0]
    assert spec["label"] == "SharVeT" and spec["k"] == 3
    assert spec["types"]["q"]["summary"]["pairs"] == 3 * 6
    assert spec["pooled"]["pairs"] == 2 * 3 * 6
    assert spec["pooled"]["p5"] <= spec["pooled"]["median"] <= 1.0
    assert d["strategies"][-1]["pooled"] == {"mean": None, "median": None, "min": None, "p5": None, "pairs": 0}
    md = report.to_markdown().splitlines()
    assert len(md) == 2 + len(report.entries)
    assert "q mean" in md[0] and "down mean" in md[0]
    assert md[2].startswith("| SharVeT | 3 | 0.9")


def test_plot_written(report: GroupingReport, tmp_path) -> None:
    out = plot_grouping_report(report, tmp_path / "fig" / "fig4.png")
    assert out.is_file() and out.stat().st_size > 1000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown grouping 'nope'"):
        grouping_report(SIMS, [StrategyEntry("X", "nope", 3)])
    with pytest.raises(ValueError, match=r"outside 1\.\.12"):
        grouping_report(SIMS, [StrategyEntry("X", "spectral", 13)])
    with pytest.raises(ValueError, match=r"outside 1\.\.12"):
        grouping_report(SIMS, [StrategyEntry("X", "cycle", 0)])
    with pytest.raises(ValueError, match="unique"):
        grouping_report(SIMS, [StrategyEntry("X", "cycle", 3), StrategyEntry("X", "spectral", 3)])
