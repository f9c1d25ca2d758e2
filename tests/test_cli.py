"""The ``sharvet`` command line end to end on a tiny saved model, and its one-line errors."""
from __future__ import annotations

import json

import pytest

from sharvet import load
from sharvet.cli import main


def test_compress_refine_info_eval(model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "ck"
    args = [str(model_dir), "-o", str(out), "--ratio", "0.6", "--k", "2", "--data-dir", str(data_dir),
            "--calib-samples", "4", "--calib-seq-len", "32", "--cache-dir", "none", "--no-progress"]
    assert main(["compress", *args]) == 0
    printed = capsys.readouterr().out
    assert "linear modules" in printed
    stages = ("load", "calibration", "planning", "decomposition")
    assert all(f"{stage} " in printed.split("wrote ")[1] for stage in stages)
    refined = tmp_path / "refined"
    assert main(["refine", str(out), "-o", str(refined), "--data-dir", str(data_dir), "--train-samples", "4",
                 "--train-seq-len", "32", "--epochs", "1", "--batch-size", "2", "--device", "cpu",
                 "--no-progress"]) == 0
    model = load(refined)
    assert model.config.sharvet["layout"]["sigma"] is False  # absorbed
    assert (tmp_path / "refined-refine-run" / "history.jsonl").exists()
    assert main(["info", str(refined)]) == 0
    assert "Groups and ranks" in capsys.readouterr().out
    result = tmp_path / "eval.json"
    assert main(["eval", str(refined), "--ppl", "wikitext2", "--context", "32", "--data-dir", str(data_dir),
                 "--json", str(result), "--no-progress"]) == 0
    row = json.loads(result.read_text())["perplexity"]["wikitext2"]
    assert row["status"] == "ok" and 1 < row["ppl"] < 1000 and row["n_tokens"] > 0


def test_cka_matmul_flag_reaches_the_saved_plan(model_dir, data_dir, tmp_path):
    out = tmp_path / "ck"
    assert main(["compress", str(model_dir), "-o", str(out), "--ratio", "0.6", "--k", "2", "--data-dir",
                 str(data_dir), "--calib-samples", "4", "--calib-seq-len", "32", "--cache-dir", "none", "--no-progress",
                 "--cka-matmul", "split-tf32"]) == 0
    assert load(out).config.sharvet["settings"]["similarity"]["cka_matmul"] == "split-tf32"


@pytest.mark.parametrize("argv, message", [
    (["compress", "-o", "X", "--ratio", "0"], "--ratio must be in (0, 1]"),
    (["compress", "-o", "X", "--ratio", "1.5"], "--ratio must be in (0, 1]"),
    (["compress", "-o", "X", "--grouping", "kmeans"], "unknown grouping"),
    (["compress", "-o", "X", "--mu", "2"], "--mu must be in [0, 1]"),
    (["compress", "missing/model/dir", "-o", "X"], "model path not found"),
    (["compress", "nothere.gguf", "-o", "X"], "GGUF file not found"),
    (["compress", "-o", "X", "--data-dir", "/no/such/dir"], "not an existing directory"),
    (["info", "/"], "not a sharvet checkpoint"),
    (["refine", "/", "-o", "X"], "not a sharvet checkpoint"),
])
def test_bad_input_fails_fast_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_k_larger_than_layers(model_dir, capsys):
    assert main(["compress", str(model_dir), "-o", "X", "--k", "9"]) == 2
    assert "larger than the number of layers (4)" in capsys.readouterr().err


def test_damaged_checkpoint_is_reported(model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "ck"
    assert main(["compress", str(model_dir), "-o", str(out), "--ratio", "0.5", "--k", "2", "--data-dir", str(data_dir),
                 "--calib-samples", "2", "--calib-seq-len", "16", "--cache-dir", "none", "--no-progress"]) == 0
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    from sharvet.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="damaged"):
        load(out)
    assert main(["compress", str(model_dir), "-o", str(out), "--no-progress"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_grouping_report_command(model_dir, data_dir, tmp_path, capsys):
    plot, numbers = tmp_path / "fig4.png", tmp_path / "fig4.json"
    assert main(["grouping", str(model_dir), "--plot", str(plot), "--json", str(numbers), "--k", "2",
                 "--data-dir", str(data_dir), "--calib-samples", "4", "--calib-seq-len", "32", "--cache-dir", "none",
                 "--no-progress"]) == 0
    assert "SharVeT" in capsys.readouterr().out
    assert plot.stat().st_size > 1000
    labels = [s["label"] for s in json.loads(numbers.read_text())["strategies"]]
    assert labels == ["SharVeT", "SEQ", "CYCLE", "REV", "R"]
    assert main(["grouping", str(model_dir), "--plot", str(plot), "--strategies", "X=kmeans"]) == 2


@pytest.mark.parametrize("method", ["seq", "fips"])
def test_baseline_compress_refines_with_lora_by_default(method, model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / method
    assert main(["compress", str(model_dir), "-o", str(out), "--method", method, "--ratio", "0.5",
                 "--data-dir", str(data_dir), "--calib-samples", "4", "--calib-seq-len", "32", "--cache-dir", "none",
                 "--fips-steps", "2", "--fips-tokens", "64", "--refine", "--train-samples", "4", "--train-seq-len", "32",
                 "--epochs", "1", "--batch-size", "2", "--device", "cpu", "--no-progress"]) == 0
    assert "realised ratio" in capsys.readouterr().out
    assert (out / "lora" / "adapter_config.json").exists()


def test_lora_in_budget_lowers_the_ratio_by_the_adapters_share(model_dir, data_dir, tmp_path, capsys):
    from sharvet.accounting import lora_share
    from sharvet.loading import config_module_shapes

    out = tmp_path / "bs"
    common = [str(model_dir), "-o", str(out), "--method", "basis-sharing", "--ratio", "0.6", "--data-dir",
              str(data_dir), "--calib-samples", "4", "--calib-seq-len", "32", "--cache-dir", "none", "--device", "cpu",
              "--no-progress", "--lora-in-budget"]
    assert main(["compress", *common]) == 2  # no refinement, no adapters to count
    assert "--lora-in-budget needs --refine" in capsys.readouterr().err
    assert main(["compress", *common, "--refine", "--train-samples", "4", "--train-seq-len", "32", "--epochs", "1",
                 "--batch-size", "2"]) == 0
    share = lora_share(config_module_shapes(str(model_dir)), 8)
    plan = load(out).config.sharvet
    assert plan["ratio"] == pytest.approx(0.6 - share, abs=1e-6)
    model = load(out)
    adapters = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    linear = model.config.num_hidden_layers * sum(s.parameters for s in config_module_shapes(str(model_dir)).values())
    assert adapters == pytest.approx(share * linear, rel=1e-9)  # what was taken off the ratio is what was added
