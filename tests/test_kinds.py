"""The group-kind registry: a new method family in one file, and plans that load across versions."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from tiny import tiny_gpt2, tiny_llama, tokens
from toy_kind import OWN_RANK, OwnRankKind

from sharvet import checkpoint, kinds
from sharvet.calibration import collect_stats
from sharvet.config import CompressionConfig
from sharvet.kinds.base import PlanConfig
from sharvet.methods import METHODS
from sharvet.models import adapter_for
from sharvet.pipeline import compress
from sharvet.plan import CompressionPlan
from sharvet.summary import render

PLANS_V1 = Path(__file__).with_name("plans_v1.json")


def test_a_new_kind_is_one_file_and_one_registration(monkeypatch, tmp_path):
    monkeypatch.setattr(kinds, "KINDS", dict(kinds.KINDS))  # the registration ends with the test
    monkeypatch.setitem(METHODS, "own-rank", OWN_RANK)
    kinds.register(OwnRankKind())

    model = tiny_llama()
    ids = tokens()
    adapter = adapter_for(model)
    original = adapter.weight(2, "up").clone()
    result = compress(model, None, CompressionConfig.preset("own-rank", ratio=0.5), progress=False)
    assert {g.kind for g in result.plan.groups} == {"own-rank"}
    assert all(len(g.layers) == 1 and g.rank >= 1 for g in result.plan.groups)
    assert result.report.linear_compressed == result.plan.settings.budget.planned  # priced what was built
    assert 0.45 < result.report.linear_ratio <= 0.5
    group = next(g for g in result.plan.groups if g.members == [(2, "up")])
    s = torch.linalg.svdvals(original.double())
    error = (original - adapter.weight(2, "up")).double().norm() ** 2
    torch.testing.assert_close(error, s[group.rank:].pow(2).sum())  # the best rank-r approximation
    logits = model(ids).logits
    assert "own rank" in render(result.plan)

    out = checkpoint.save(model, tmp_path / "own-rank")
    torch.testing.assert_close(checkpoint.load(out)(ids).logits, logits, rtol=0, atol=0)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="unknown group kind 'own-rank'"):
        checkpoint.load(out)  # loading installs through the registry


def test_the_config_has_what_kinds_read():
    """Kinds type the config by a protocol (they sit below it): the config must keep its side of it."""
    fields = {f.name: f.type for f in dataclasses.fields(CompressionConfig)}
    assert {name: fields.get(name) for name in PlanConfig.__annotations__} == PlanConfig.__annotations__
    assert CompressionConfig(k=None).groups_per_type(7) == 3


@pytest.mark.parametrize("name", ["sharvet", "fips", "cycle"])
def test_plans_written_before_typed_settings_load_and_write_back_unchanged(name):
    """``plans_v1.json``: ``model.config.sharvet`` of three tiny compressions by the untyped-dict code."""
    old = json.loads(PLANS_V1.read_text())[name]
    plan = CompressionPlan.from_dict(old)
    assert json.dumps(plan.to_dict()) == json.dumps(old)  # same keys, same order, same values
    s = plan.settings
    assert s.budget.planned == old["settings"]["budget"]["planned"] and s.model_id == "tiny"
    assert s.parameters.linear_ratio == old["settings"]["parameters"]["linear_ratio"]
    assert s.config.method == name and s.config.shared_types == tuple(old["settings"]["shared_types"])
    assert ("fips_reconstruction" in s.records) == (name == "fips")


def test_a_compression_writes_the_settings_layout_of_format_1():
    old = json.loads(PLANS_V1.read_text())["cycle"]["settings"]
    model = tiny_gpt2()
    stats = collect_stats(adapter_for(model), tokens(), progress=False)
    result = compress(model, stats, CompressionConfig.preset("cycle", ratio=0.5), progress=False)
    result.plan.settings.model_id, result.plan.settings.wall_time_s = "tiny", 1.5
    new = json.loads(json.dumps(result.plan.to_dict()))["settings"]
    # added after format 1 was fixed, optional and after wall_time_s: readers of format 1 keep it as a record
    assert list(new).index("stage_seconds") == list(new).index("wall_time_s") + 1
    del new["stage_seconds"]
    assert list(new) == list(old) and new == old


def test_unknown_format_version_is_refused():
    old = json.loads(PLANS_V1.read_text())["cycle"]
    with pytest.raises(ValueError, match="unsupported sharvet format version 2"):
        CompressionPlan.from_dict({**old, "format_version": 2})
