"""Refinement across processes (CPU, gloo): FSDP ends where DDP does, and DDP where one process does."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sharvet.refinement import sharding

from tiny import tiny_llama

WORKER = Path(__file__).with_name("fsdp_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, mode: str) -> dict[str, torch.Tensor]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    procs = "1" if mode == "single" else "2"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", procs, "--master_port",
                    str(free_port()), str(WORKER), str(out), mode], check=True, env=env, capture_output=True,
                   timeout=300)
    return load_file(str(out / "result.safetensors"))


@pytest.mark.slow
def test_fsdp_refinement_matches_ddp(tmp_path):
    fsdp, ddp = launch(tmp_path / "fsdp", "fsdp"), launch(tmp_path / "ddp", "ddp")
    assert fsdp.keys() == ddp.keys() and len(fsdp) > 1
    for name in fsdp:
        torch.testing.assert_close(fsdp[name], ddp[name], rtol=1e-5, atol=1e-6)
    scales = [t for name, t in fsdp.items() if name.endswith(".scale")]
    assert scales and any(not torch.all(t == 1) for t in scales)  # lambda trained away from its start


@pytest.mark.slow
def test_two_processes_end_where_one_does(tmp_path):
    """Two processes of 2 sequences a step (DDP) train as one process of 4: same data, averaged gradients."""
    ddp, single = launch(tmp_path / "ddp", "ddp"), launch(tmp_path / "single", "single")
    assert ddp.keys() == single.keys()
    for name in ddp:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-5)


def test_shared_parameters_and_layer_classes():
    model = tiny_llama(3)
    model.model.layers[2].mlp.up_proj.weight = model.model.layers[0].mlp.up_proj.weight
    assert [p is model.model.layers[0].mlp.up_proj.weight for p in sharding.shared_parameters(model)] == [True]
    assert {c.__name__ for c in sharding.layer_classes(model)} == {"LlamaDecoderLayer"}
