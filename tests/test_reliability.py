"""No silent wrong results (issue 14): every fault is refused with one line and a documented exit code.

Each test is one row of docs/reliability.md. CK is a checkpoint of the tiny model compressed at ratio 0.5.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sharvet import load
from sharvet.cli import main
from sharvet.errors import EXIT_NON_FINITE, EXIT_NOT_RUN, EXIT_USER
from sharvet.integrity import MANIFEST


def _compress_args(model_dir: Path, data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["compress", str(model_dir), "-o", str(out), "--ratio", "0.5", "--data-dir", str(data_dir),
            "--calib-samples", "2", "--calib-seq-len", "16", "--cache-dir", "none", "--no-progress", *extra]


@pytest.fixture(scope="module")
def good_ck(model_dir, data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("good") / "ck"
    assert main(_compress_args(model_dir, data_dir, out, "--k", "2")) == 0
    return out


@pytest.fixture
def ck(good_ck, tmp_path) -> Path:
    """A fresh copy of the good checkpoint, free to damage."""
    return Path(shutil.copytree(good_ck, tmp_path / "ck"))


def _eval(ck: Path, data_dir: Path, *extra: str) -> int:
    return main(["eval", str(ck), "--ppl", "wikitext2", "--context", "16", "--data-dir", str(data_dir),
                 "--no-progress", *extra])


def _one_error_line(capsys, *needles: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sharvet: error")]
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


def _write_config(ck: Path, edit) -> None:
    config = json.loads((ck / "config.json").read_text())
    edit(config)
    (ck / "config.json").write_text(json.dumps(config))


def test_good_checkpoint_evaluates(ck, data_dir, capsys):
    assert _eval(ck, data_dir) == 0
    assert main(["info", str(ck)]) == 0
    assert "every file matches its recorded sha256" in capsys.readouterr().out


@pytest.mark.parametrize("manifest", [True, False])
def test_config_without_sharvet_section_is_refused(ck, data_dir, capsys, manifest):
    """Case 1: never evaluated as an original model full of random weights."""
    if not manifest:
        (ck / MANIFEST).unlink()
    _write_config(ck, lambda c: c.pop("sharvet"))
    assert _eval(ck, data_dir) == EXIT_USER
    _one_error_line(capsys, "config.json")


def test_corrupted_weight_bytes_are_refused(ck, data_dir, capsys):
    """Case 2: bytes overwritten inside the file, header intact."""
    weights = ck / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4096:] = torch.randn(1024).numpy().tobytes()
    weights.write_bytes(bytes(data))
    assert _eval(ck, data_dir) == EXIT_USER
    _one_error_line(capsys, "model.safetensors", "damaged")
    assert main(["info", str(ck)]) == EXIT_USER
    _one_error_line(capsys, "model.safetensors")


def test_nan_weights_with_no_verify_give_a_non_finite_error(ck, data_dir, capsys):
    tensors = load_file(ck / "model.safetensors")
    meta = json.loads((ck / MANIFEST).read_text())  # keep the file sharvet's: copy its metadata
    from safetensors import safe_open

    with safe_open(str(ck / "model.safetensors"), framework="pt") as f:
        metadata = f.metadata()
    name = next(k for k in tensors if k.endswith("basis"))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(ck / "model.safetensors"), metadata=metadata)
    assert meta["files"]["model.safetensors"]
    assert _eval(ck, data_dir, "--no-verify") == EXIT_NON_FINITE
    _one_error_line(capsys, "wikitext2", "not finite")


def test_changed_rank_is_refused_by_info(ck, capsys):
    def shrink(config):
        config["sharvet"]["groups"][0]["rank"] -= 1
    _write_config(ck, shrink)
    assert main(["info", str(ck)]) == EXIT_USER
    _one_error_line(capsys, "config.json")
    (ck / MANIFEST).unlink()  # a checkpoint from before integrity records: the shapes still give it away
    assert main(["info", str(ck)]) == EXIT_USER
    _one_error_line(capsys, "does not match the plan")


def test_refine_that_diverges_writes_nothing_and_keeps_the_good_checkpoint(ck, data_dir, tmp_path, capsys):
    """Case 3: lr 1e6 goes to inf/nan; exit 4, and --overwrite never replaces a good model with a NaN one."""
    out = tmp_path / "refined"
    shutil.copytree(ck, out)
    before = (out / "model.safetensors").read_bytes()
    code = main(["refine", str(ck), "-o", str(out), "--overwrite", "--lr", "1e6", "--data-dir", str(data_dir),
                 "--train-samples", "8", "--train-seq-len", "16", "--epochs", "2", "--batch-size", "2",
                 "--grad-clip", "0", "--device", "cpu", "--no-progress"])
    assert code == EXIT_NON_FINITE
    _one_error_line(capsys, "finite")
    assert (out / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("target", ["/proc/x", "FILE/sub", "FILE"])
def test_unwritable_output_fails_before_loading(model_dir, data_dir, tmp_path, capsys, target):
    """Case 4: checked before the model loads (the model path is missing: loading would fail differently)."""
    (tmp_path / "FILE").write_text("x")
    out = target if target.startswith("/") else str(tmp_path / target)
    assert main(["compress", str(tmp_path / "no-model"), "-o", out]) == EXIT_USER
    line = _one_error_line(capsys, "--output")
    assert "no-model" not in line


def test_unwritable_json_fails_before_evaluating(ck, data_dir, capsys):
    assert _eval(ck, data_dir, "--json", "/proc/r.json") == EXIT_USER
    _one_error_line(capsys, "--json")
    assert "perplexity" not in capsys.readouterr().out


def test_failed_json_write_keeps_the_results_on_screen(ck, data_dir, tmp_path, capsys, monkeypatch):
    from sharvet.evaluation import results

    def fail(*_a, **_k):
        raise OSError(28, "No space left on device", str(tmp_path / "r.json"))
    monkeypatch.setattr(results, "write_results", fail)
    assert _eval(ck, data_dir, "--json", str(tmp_path / "r.json")) == EXIT_USER
    captured = capsys.readouterr()
    assert "wikitext2" in captured.out and "printed above" in captured.err


def test_resume_conflict_is_reported_before_loading(ck, data_dir, tmp_path, capsys):
    common = ["refine", str(ck), "--data-dir", str(data_dir), "--train-samples", "4", "--train-seq-len", "16",
              "--epochs", "1", "--batch-size", "2", "--device", "cpu", "--no-progress",
              "--refine-output", str(tmp_path / "run"), "--checkpoint-every", "1"]
    assert main([*common, "-o", str(tmp_path / "a"), "--max-steps", "1"]) == 0
    assert main([*common, "-o", str(tmp_path / "b"), "--resume", "--lr", "5e-3"]) == EXIT_USER
    _one_error_line(capsys, "lr")
    assert main([*common, "-o", str(tmp_path / "c")]) == EXIT_USER
    _one_error_line(capsys, "--resume")


@pytest.mark.parametrize("flag, value", [("--max-tokens", "0"), ("--max-tokens", "-5"), ("--batch-size", "0"),
                                         ("--context", "1")])
def test_numeric_flags_are_validated(ck, data_dir, capsys, flag, value):
    """Case 5: --max-tokens 0 no longer means "no limit"; a negative value no longer cuts from the end."""
    assert _eval(ck, data_dir, flag, value) == EXIT_USER
    _one_error_line(capsys, flag)


def test_truncated_config_is_one_line(ck, data_dir, capsys):
    """Case 6."""
    text = (ck / "config.json").read_text()
    (ck / "config.json").write_text(text[: len(text) // 2])
    assert _eval(ck, data_dir, "--no-verify") == EXIT_USER
    _one_error_line(capsys, "config.json", "not valid JSON")
    assert main(["info", str(ck), "--no-verify"]) == EXIT_USER
    _one_error_line(capsys, "config.json", "not valid JSON")


def test_missing_tokenizer_is_one_line(ck, data_dir, capsys):
    (ck / "tokenizer.json").unlink()
    assert _eval(ck, data_dir) == EXIT_USER
    _one_error_line(capsys, "tokenizer.json")
    assert _eval(ck, data_dir, "--no-verify") == EXIT_USER
    _one_error_line(capsys, "tokenizer")


def test_unknown_perplexity_set_is_an_error(ck, data_dir, capsys):
    assert main(["eval", str(ck), "--ppl", "wikitext3", "--data-dir", str(data_dir)]) == EXIT_USER
    _one_error_line(capsys, "wikitext3")


def test_missing_data_is_not_run_with_its_own_exit_code(ck, data_dir, capsys):
    assert main(["eval", str(ck), "--ppl", "wikitext2,ptb", "--context", "16", "--data-dir", str(data_dir),
                 "--offline", "--no-progress"]) == EXIT_NOT_RUN
    captured = capsys.readouterr()
    assert "wikitext2" in captured.out and "not run" in captured.out and "ptb" in captured.err


def test_stale_partial_folder_is_removed(model_dir, data_dir, tmp_path, capsys):
    """Case 7: what a SIGKILL during the final save left behind is removed by the next save of that folder."""
    out = tmp_path / "ck"
    stale = tmp_path / ".ck.partial-abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"0" * 1024)
    assert main(_compress_args(model_dir, data_dir, out)) == 0
    assert not stale.exists()
    assert str(stale) in capsys.readouterr().err


def test_lora_checkpoint_loads_with_its_adapters(model_dir, data_dir, tmp_path):
    """Issue 17 item 4: a LoRA-refined checkpoint runs as refined everywhere it is loaded."""
    from peft import PeftModel

    from sharvet.checkpoint import load as load_base

    out = tmp_path / "seq"
    assert main(_compress_args(model_dir, data_dir, out, "--method", "seq", "--refine", "--train-samples", "4",
                               "--train-seq-len", "16", "--epochs", "1", "--batch-size", "2", "--lr", "1e-2",
                               "--device", "cpu")) == 0
    model = load(out)
    assert isinstance(model, PeftModel)
    ids = torch.arange(3, 19).unsqueeze(0)
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, load_base(out)(ids).logits)
    (out / "lora" / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match="adapter_model.safetensors"):
        load(out)


def test_unsupported_architecture_is_refused_before_loading(tmp_path, capsys):
    """Issue 16's bad input: one line naming the architecture and what is supported, from config.json alone."""
    from transformers import OPTConfig

    folder = tmp_path / "opt"
    folder.mkdir()
    OPTConfig(hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2).save_pretrained(folder)
    assert main(["compress", str(folder), "-o", str(tmp_path / "out")]) == EXIT_USER  # no weights: not loaded
    _one_error_line(capsys, "unsupported architecture 'opt'", "llama")


def test_refine_keeps_the_checkpoint_precision_for_student_and_teacher(ck, data_dir, tmp_path, monkeypatch):
    """Issue 16: a bfloat16 checkpoint refines in bfloat16 with a bfloat16 teacher (no float32 teacher beside it)."""
    from sharvet import refinement
    from sharvet.checkpoint import load as load_base
    from sharvet.checkpoint import save
    from sharvet.loading import load_tokenizer

    bf16 = save(load_base(ck).to(torch.bfloat16), tmp_path / "bf16", tokenizer=load_tokenizer(ck))
    seen, real = {}, refinement.refine

    def spy(student, teacher, ids, cfg, **kw):
        seen.update(student=next(student.parameters()).dtype, teacher=next(teacher.parameters()).dtype)
        return real(student, teacher, ids, cfg, **kw)
    monkeypatch.setattr(refinement, "refine", spy)
    assert main(["refine", str(bf16), "-o", str(tmp_path / "out"), "--data-dir", str(data_dir), "--train-samples",
                 "4", "--train-seq-len", "16", "--epochs", "1", "--batch-size", "2", "--device", "cpu",
                 "--no-progress"]) == 0
    assert seen == {"student": torch.bfloat16, "teacher": torch.bfloat16}


def test_cache_files_appear_only_whole(tmp_path, monkeypatch):
    """save_whole writes under a name of its own and renames: an existing file is complete, and a write that
    fails leaves neither a file nor its temporary (several processes may fill the same cache at once)."""
    from sharvet import outputs

    path = tmp_path / "cache" / "teacher-text-x.safetensors"
    outputs.save_whole({"ids": torch.arange(6)}, path, metadata={"key": "k"})
    assert torch.equal(load_file(str(path))["ids"], torch.arange(6))

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    other = tmp_path / "cache" / "other.safetensors"
    with pytest.raises(OSError, match="disk full"):
        outputs.save_whole({"ids": torch.arange(6)}, other)
    assert sorted(p.name for p in other.parent.iterdir()) == [path.name]


def test_a_prepared_model_is_not_saved_as_a_checkpoint(good_ck, tmp_path):
    """The inference form (sigma absorbed, ranks padded, modules regrouped) does not load back as its plan: saving it
    fails at once with one clear line instead of writing a checkpoint that fails later."""
    from sharvet.checkpoint import load, save
    from sharvet.inference.form import prepare

    with pytest.raises(ValueError, match="inference form"):
        save(prepare(load(good_ck), fuse="never"), tmp_path / "saved")
    assert not (tmp_path / "saved").exists()
