"""Checkpoints larger than one shard are written and read as Hugging Face's sharded layout (issue 16).

A tiny model saved with a ``max_shard_bytes`` of a few KB gives many shards; every reader (load, verify,
check_shapes, is_checkpoint, the integrity record, plain transformers through the modeling file) must accept
them, and a model smaller than one shard must still be the single ``model.safetensors`` of before.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_hub_export import remote_logits
from tiny import tiny_gpt2, tiny_llama, tokens

from sharvet import checkpoint
from sharvet.calibration import collect_stats
from sharvet.cli import main
from sharvet.config import CompressionConfig
from sharvet.errors import CheckpointError, EXIT_USER
from sharvet.integrity import MANIFEST, IntegrityError
from sharvet.models import adapter_for
from sharvet.pipeline import compress, plan_of

MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}  # GPT-2 ties its embeddings: an alias outside the groups
#: below the embedding's 32 KB: every shard holds a few tensors, the embedding one alone
SHARD = 16_000


def _compressed(family: str) -> torch.nn.Module:
    model = MODELS[family]()
    stats = collect_stats(adapter_for(model), tokens(), progress=False)
    compress(model, stats, CompressionConfig(ratio=0.6, k=2), progress=False)
    return model


def _shared_bases_are_one_parameter(model: torch.nn.Module) -> int:
    """Assert every multi-layer group's members hold one basis Parameter; the number of such groups."""
    adapter = adapter_for(model)
    groups = [g for g in plan_of(model).groups if len(g.layers) > 1]
    for g in groups:
        bases = [adapter.get_module(layer, g.type).basis for layer in g.layers]
        assert all(b is bases[0] for b in bases), g
    return len(groups)


@pytest.fixture(scope="module", params=list(MODELS))
def sharded(request, tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    model = _compressed(request.param)
    return model, checkpoint.save(model, tmp_path_factory.mktemp("shards") / "ck", max_shard_bytes=SHARD)


@pytest.fixture
def damaged(sharded, tmp_path) -> tuple[Path, str]:
    """A copy of the sharded checkpoint free to damage, and the name of a shard in the middle."""
    ck = Path(shutil.copytree(sharded[1], tmp_path / "ck"))
    shards = sorted(set(json.loads((ck / checkpoint.INDEX).read_text())["weight_map"].values()))
    return ck, shards[len(shards) // 2]


def _one_error_line(capsys, *needles: str) -> None:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sharvet: error")]
    assert len(err) == 1, err
    assert all(n in err[0] for n in needles), err[0]


def test_a_model_over_the_shard_size_is_written_in_shards(sharded):
    model, ck = sharded
    index = json.loads((ck / checkpoint.INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert not (ck / checkpoint.WEIGHTS).exists()
    assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert sorted(p.name for p in ck.glob("model-*.safetensors")) == shards
    tensors, aliases = checkpoint.dedupe_state_dict(model)
    assert index["metadata"]["format"] == checkpoint.FORMAT and json.loads(index["metadata"]["aliases"]) == aliases
    assert aliases and index["weight_map"].keys() == tensors.keys()  # every shared tensor stored once
    for shard in shards:
        with safe_open(str(ck / shard), "pt") as f:
            assert f.metadata() == {"format": checkpoint.FORMAT}
            sizes = [tensors[k].nbytes for k in f.keys()]
        assert sum(sizes) <= SHARD or len(sizes) == 1
    manifest = json.loads((ck / MANIFEST).read_text())["files"]
    assert {checkpoint.INDEX, *shards} <= manifest.keys()


def test_the_writer_copies_nothing_of_a_host_model_up_front(sharded):
    """The deduplicated state dict is the model's own tensors: only a shard at a time is ever copied."""
    model, _ = sharded
    tensors, _ = checkpoint.dedupe_state_dict(model)
    own = {t.data_ptr() for t in [*model.parameters(), *model.buffers()]}
    assert all(t.data_ptr() in own for t in tensors.values())


def test_shards_load_back_identically_with_shared_bases_shared(sharded):
    model, ck = sharded
    loaded = checkpoint.load(ck)
    ids = tokens(2, 16, seed=1)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert _shared_bases_are_one_parameter(loaded) >= 1
    want, have = model.state_dict(), loaded.state_dict()
    assert want.keys() == have.keys() and all(torch.equal(want[k], have[k]) for k in want)
    checkpoint.check_shapes(ck)
    assert checkpoint.is_checkpoint(ck)


def _header_and_data(path: Path) -> tuple[dict, bytes]:
    """A safetensors file's parsed header (its metadata keys come in no fixed order) and its data bytes."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def test_a_small_model_is_still_the_single_file_of_before(tmp_path):
    """The header and bytes one ``save_file`` of the deduplicated state dict wrote before shards existed."""
    model = _compressed("gpt2")
    ck = checkpoint.save(model, tmp_path / "ck")
    assert not (ck / checkpoint.INDEX).exists() and not list(ck.glob("model-*"))
    tensors, aliases = checkpoint.dedupe_state_dict(model)
    save_file(tensors, str(tmp_path / "before.safetensors"),
              metadata={"format": checkpoint.FORMAT, "aliases": json.dumps(aliases)})
    assert _header_and_data(ck / checkpoint.WEIGHTS) == _header_and_data(tmp_path / "before.safetensors")


def test_integrity_catches_a_modified_shard(damaged):
    ck, shard = damaged
    data = bytearray((ck / shard).read_bytes())
    data[-8:] = bytes(255 - b for b in data[-8:])  # weights changed, header intact
    (ck / shard).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=f"{shard} is damaged"):
        checkpoint.load(ck)


@pytest.mark.parametrize("verify", [True, False])
def test_a_missing_shard_fails_with_one_line_naming_it(damaged, capsys, verify):
    ck, shard = damaged
    (ck / shard).unlink()
    with pytest.raises(CheckpointError, match=f"{shard} is missing from the checkpoint"):
        checkpoint.load(ck, verify=verify)
    assert main(["info", str(ck), *([] if verify else ["--no-verify"])]) == EXIT_USER
    _one_error_line(capsys, shard, "missing")


def test_a_damaged_index_fails_with_one_line_naming_it(damaged, capsys):
    ck, _ = damaged
    (ck / checkpoint.INDEX).write_text("{not json")
    assert main(["info", str(ck), "--no-verify"]) == EXIT_USER
    _one_error_line(capsys, checkpoint.INDEX, "damaged")


def test_a_changed_rank_is_caught_in_a_sharded_checkpoint_without_record(damaged, capsys):
    ck, _ = damaged
    (ck / MANIFEST).unlink()
    config = json.loads((ck / "config.json").read_text())
    config["sharvet"]["groups"][0]["rank"] -= 1
    (ck / "config.json").write_text(json.dumps(config))
    assert main(["info", str(ck)]) == EXIT_USER
    _one_error_line(capsys, checkpoint.INDEX, "does not match the plan")


def test_only_sharvets_shards_make_a_checkpoint(damaged, tmp_path):
    """A sharded folder that lost its config section is still recognised; a plain sharded model is not."""
    ck, _ = damaged
    (ck / MANIFEST).unlink()
    config = json.loads((ck / "config.json").read_text())
    config.pop("sharvet")
    (ck / "config.json").write_text(json.dumps(config))
    assert checkpoint.is_checkpoint(ck)
    tiny_llama(2).save_pretrained(tmp_path / "plain", max_shard_size=SHARD)
    assert (tmp_path / "plain" / checkpoint.INDEX).is_file()
    assert not checkpoint.is_checkpoint(tmp_path / "plain")


def test_plain_transformers_loads_the_shards_with_sharvets_logits(sharded, tmp_path):
    """The modeling file needs no change: transformers reads the index, and the aliases are declared tied."""
    model, ck = sharded
    ids = tokens(2, 16, seed=4)
    remote = remote_logits([str(shutil.copytree(ck, tmp_path / "downloaded"))], ids, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(remote["0"], model(ids).logits, rtol=0, atol=1e-6)
