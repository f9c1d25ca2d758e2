"""benchmarks/scale.py: published shapes build real configs; full-model figures are extrapolated per layer."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import scale  # noqa: E402


def record(layers: int, wall: float, gpu: float, shape: str = "llama3-70b") -> dict:
    return {"shape": shape, "layers": layers, "ratio": 0.7, "phase": "compress", "gpus": 1, "wall_s": wall,
            "peak_gpu_gib": gpu, "peak_host_gib": 10.0, "tokens_per_s": None}


def test_full_model_is_extrapolated_from_the_per_layer_cost():
    rows = [record(4, 100.0, 12.0), record(8, 180.0, 14.0), record(32, 50.0, 9.0, shape="llama3-8b")]
    (est,) = scale.extrapolate(rows)  # the 8B shape was run once: nothing to fit
    assert est["layers"] == 80 and est["extrapolated_from"] == [4, 8]
    assert est["wall_s"] == pytest.approx(180 + 20 * 72) and est["peak_gpu_gib"] == pytest.approx(14 + 0.5 * 72)
    assert est["peak_host_gib"] == pytest.approx(10.0)
    text = scale.table(rows)
    assert "llama3-70b (extrapolated)" in text and "1620.0" in text


def test_similarity_time_is_extrapolated_by_layer_pairs():
    lo, hi = record(4, 100.0, 12.0), record(8, 200.0, 14.0)
    lo["stage_seconds"] = {"load": 1.0, "calibration": 30.0, "planning": 6.0, "decomposition": 40.0}  # rest 23
    hi["stage_seconds"] = {"load": 1.0, "calibration": 50.0, "planning": 28.0, "decomposition": 80.0}  # rest 41
    (est,) = scale.extrapolate([lo, hi])
    pairs = 80 * 79 / 2  # 6 pairs at 4 layers, 28 at 8: 1 s a pair
    expect = {"load": 1.0, "calibration": 50 + 5 * 72, "planning": 28 + (pairs - 28), "decomposition": 80 + 10 * 72,
              "rest": 41 + 4.5 * 72}
    assert est["stage_seconds"] == pytest.approx(expect)
    assert est["wall_s"] == pytest.approx(sum(expect.values()))
    lo["rc"] = 1  # a failed run is not fitted
    assert scale.extrapolate([lo, hi]) == []


@pytest.mark.parametrize("shape", ["llama3-8b", "qwen2.5-7b", "llama3-70b"])
def test_published_shapes_have_the_published_parameter_counts(shape):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**dict(scale.SHAPES[shape], tie_word_embeddings=False))
    with torch.device("meta"):
        n = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    published = {"llama3-8b": 8.03e9, "qwen2.5-7b": 7.62e9, "llama3-70b": 70.6e9}[shape]
    assert n == pytest.approx(published, rel=0.01)


@pytest.mark.slow
def test_tiny_shape_runs_the_real_commands_and_records_them(tmp_path, shared_data_dir, capsys):
    """SmolLM2's tokenizer comes from the bundled GGUF, hence slow; about two minutes on 2 cores."""
    out = tmp_path / "summary.json"
    scale.main(["--shape", "tiny", "--layers", "2", "--calib-samples", "4", "--calib-seq-len", "64",
                "--refine-steps", "2", "--device", "cpu", "--data-dir", str(shared_data_dir),
                "--work", str(tmp_path / "work"), "--out", str(out), "--refine-setups", "1,2-fsdp"])
    compress, refine, sharded = json.loads(out.read_text())
    assert (sharded["gpus"], sharded["sharding"], sharded["rc"]) == (2, "fsdp", 0) and "--fsdp" in sharded["command"]
    fields = {"shape", "layers", "ratio", "phase", "gpus", "wall_s", "peak_gpu_gib", "peak_host_gib", "tokens_per_s",
              "date", "command"}
    assert fields <= set(compress) and fields <= set(refine)
    assert (compress["phase"], refine["phase"], compress["layers"]) == ("compress", "refine", 2)
    assert compress["command"].startswith("sharvet compress ") and "--stream on" in compress["command"]
    assert compress["stats_disk_gib"] > 0 and compress["peak_host_gib"] > 0.1 and refine["tokens_per_s"] > 0
    assert (tmp_path / "work" / "tiny-L2" / "model" / "model.safetensors.index.json").exists()
    assert not (tmp_path / "work" / "tiny-L2" / "calib").exists()  # statistics and checkpoints removed
    assert "tiny   2" in capsys.readouterr().out


def test_the_random_model_takes_a_tokenizer_folder(tmp_path):
    """``--tokenizer``: a folder (or .gguf) instead of the bundled model, so a GPU machine needs only 3 MB of it."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    words = ["<unk>", "a", "b", "c"]
    fast = PreTrainedTokenizerFast(tokenizer_object=_word_level(words), unk_token="<unk>")
    fast.save_pretrained(tmp_path / "tok")
    folder = scale.build_model("tiny", 1, tmp_path / "model", tokenizer=str(tmp_path / "tok"))
    assert AutoTokenizer.from_pretrained(folder)("a b c")["input_ids"] == fast("a b c")["input_ids"]


def _word_level(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok
