"""A checkpoint folder loads with plain transformers, where sharvet is not installed, with sharvet's logits.

Every group kind is saved, copied elsewhere (as a download would), and loaded by
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` in a subprocess started with
``python -I -S``: only the site-packages directories are put back on its path, so the editable install's
finder (a ``.pth`` hook) never runs and ``import sharvet`` fails there (the script checks).
"""
from __future__ import annotations

import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import tiny_gpt2, tiny_llama, tokens

import sharvet
from sharvet import checkpoint
from sharvet.calibration import collect_stats
from sharvet.config import CompressionConfig
from sharvet.decomposition.sparse import FipsConfig
from sharvet.errors import CheckpointError
from sharvet.export import MODELING_FILE, modeling_code
from sharvet.models import adapter_for
from sharvet.pipeline import compress
from sharvet.refinement.lora import attach_lora, save_lora

MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}
#: (method, family): every group kind -- basis with sigma and lambda (sharvet), basis without them
#: (basis-sharing, on GPT-2's biased Conv1D modules), whole shared matrices (seq), sparse projections (fips)
CASES = [("sharvet", "llama"), ("basis-sharing", "gpt2"), ("seq", "llama"), ("fips", "llama"), ("fips", "gpt2")]

REMOTE = textwrap.dedent("""
    import os
    import sys
    sys.path[:0] = sys.argv[3:]
    try:
        import sharvet
    except ImportError:
        pass
    else:
        raise SystemExit("sharvet is importable: this environment does not prove anything")
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    ids = load_file(sys.argv[2])["ids"]
    out = {}
    for i, spec in enumerate(sys.argv[1].split(",")):
        folder, _, dtype = spec.partition("@")
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True,
                                                     dtype=getattr(torch, dtype or "float32")).eval()
        assert type(model).__name__ == "SharvetForCausalLM", type(model)
        with torch.no_grad():
            out[str(i)] = model(ids).logits
        if not os.path.isdir(os.path.join(folder, "lora")):  # re-published with transformers' own save_pretrained
            model.save_pretrained(folder + "-resaved")
            again = AutoModelForCausalLM.from_pretrained(folder + "-resaved", trust_remote_code=True).eval()
            with torch.no_grad():
                out[f"{i}-resaved"] = again(ids).logits
    save_file(out, sys.argv[2] + ".out")
""")


def _perturbed(model: torch.nn.Module) -> None:
    """Move every stored number off its initial value (lambda starts at 1, LoRA's B at 0), sharing kept."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)


def _compressed(method: str, family: str) -> torch.nn.Module:
    model = MODELS[family]()
    ids = tokens()
    stats = collect_stats(adapter_for(model), ids, progress=False)
    cfg = CompressionConfig.preset(method, ratio=0.5, fips=FipsConfig(steps=2, lr=1e-3, batch_tokens=64, tokens=64))
    compress(model, stats, cfg, calibration_ids=ids, progress=False)
    _perturbed(model)
    return model


def remote_logits(folders: list[str], ids: torch.Tensor, work: Path) -> dict[str, torch.Tensor]:
    """Logits of each folder (``FOLDER@bfloat16``: in that dtype) loaded by plain transformers in a Python that
    cannot import sharvet (``"i"``), and of the model re-saved by transformers and loaded again (``"i-resaved"``)."""
    script, ids_file = work / "remote.py", work / "ids.safetensors"
    script.write_text(REMOTE)
    save_file({"ids": ids}, str(ids_file))
    source = Path(sharvet.__file__).resolve().parents[1]
    paths = [p for p in site.getsitepackages() if not Path(p).resolve().is_relative_to(source)]
    env = {"HF_MODULES_CACHE": str(work / "modules"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    run = subprocess.run([sys.executable, "-I", "-S", str(script), ",".join(folders), str(ids_file), *paths],
                         capture_output=True, text=True, env=env, cwd=work, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return load_file(str(ids_file) + ".out")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For each case and a LoRA-refined checkpoint: (sharvet.load's logits, plain transformers' logits)."""
    work = tmp_path_factory.mktemp("hub")
    ids = tokens(2, 16, seed=4)
    folders, names = [], []
    for method, family in CASES:
        folders.append(checkpoint.save(_compressed(method, family), work / f"{method}-{family}"))
        names.append(f"{method}-{family}")
    lora = attach_lora(_compressed("sharvet", "llama"), rank=2)
    _perturbed(lora)
    folders.append(save_lora(lora, work / "lora"))
    names.append("lora")
    published = [str(shutil.copytree(f, work / "downloaded" / f.name)) for f in folders]  # as a download would
    remote = remote_logits(published + [f"{published[-1]}@bfloat16"], ids, work)
    with torch.no_grad():
        local = [sharvet.load(f)(ids).logits for f in folders] + [
            sharvet.load(folders[-1], dtype=torch.bfloat16)(ids).logits]
        unrefined = checkpoint.load(work / "lora")(ids).logits
    result = {name: (local[i], remote[str(i)]) for i, name in enumerate(names + ["lora-bfloat16"])}
    result.update({f"{name}-resaved": (remote[str(i)], remote[f"{i}-resaved"]) for i, name in enumerate(names[:-1])})
    result["lora-unrefined"] = (unrefined, result["lora"][1])
    return result


@pytest.mark.parametrize("case", [f"{m}-{f}" for m, f in CASES])
def test_plain_transformers_gives_sharvets_logits(loaded, case):
    local, remote = loaded[case]
    torch.testing.assert_close(remote, local, rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", [f"{m}-{f}" for m, f in CASES])
def test_a_model_resaved_by_transformers_loads_the_same(loaded, case):
    loaded_once, resaved = loaded[f"{case}-resaved"]
    torch.testing.assert_close(resaved, loaded_once, rtol=0, atol=0)


@pytest.mark.parametrize("case", ["lora", "lora-bfloat16"])
def test_lora_adapters_are_applied_by_the_modeling_file(loaded, case):
    local, remote = loaded[case]
    assert remote.dtype == local.dtype
    torch.testing.assert_close(remote, local, rtol=0, atol=1e-6)


def test_the_lora_case_would_catch_ignored_adapters(loaded):
    unrefined, remote = loaded["lora-unrefined"]
    assert not torch.allclose(remote, unrefined, atol=1e-4)


def test_the_folder_carries_its_modeling_file_under_the_integrity_record(tmp_path):
    out = checkpoint.save(_compressed("sharvet", "gpt2"), tmp_path / "ck")
    config = checkpoint.read_config(out)
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_sharvet.SharvetForCausalLM"
    assert config["model_type"] == "gpt2"  # sharvet's own loader still reads the original architecture
    text = (out / MODELING_FILE).read_text()
    assert text == modeling_code("gpt2") and 'BASE_MODEL_TYPE = "gpt2"' in text
    assert "import sharvet" not in text and "from sharvet" not in text
    (out / MODELING_FILE).write_text(text + "\n# edited\n")
    with pytest.raises(CheckpointError, match=MODELING_FILE):
        sharvet.load(out)
