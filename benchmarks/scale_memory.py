"""Benchmark: peak host RSS of the calibration pass alone, in memory vs layer-streamed, on the CPU.

A random LLaMA whose statistics dwarf its weights (width 256, intermediate 8192, 8 layers: 4.3 GB of float64
``X^T X``, 0.1 GB of weights), 4 x 64 tokens. Run each path in its own process, since the peak is per process:

    python benchmarks/scale_memory.py memory
    python benchmarks/scale_memory.py streamed
"""
from __future__ import annotations

import resource
import sys
import tempfile
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sharvet.calibration import collect_stats
from sharvet.models import adapter_for
from sharvet.streaming import collect_streamed

GIB_IN_KIB = 2**20


def main(path: str) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=8192, num_hidden_layers=8, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1000)
    adapter = adapter_for(LlamaForCausalLM(config).eval())
    ids = torch.randint(0, 1000, (4, 64))
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / GIB_IN_KIB
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        if path == "memory":
            collect_stats(adapter, ids, batch_size=2, progress=False)
        else:
            collect_streamed(adapter, ids, folder, batch_size=2, device="cpu", progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / GIB_IN_KIB
    print(f"{path}: peak RSS {peak:.2f} GiB (after building the model: {loaded:.2f} GiB), "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "streamed")
