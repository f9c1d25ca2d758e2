"""GPU timing of similarity's CKA pass at a published shape: float32 products ("ieee") against split TF32.

No data: a ``--shape`` model (benchmarks/scale.py) with ``--layers`` decoder layers of random bf16 weights kept on
the host (as streamed compression keeps them) and random float64 ``X^T X`` statistics on the host (``--tokens``
random inputs per layer with three massive-activation dimensions, mean ~300). Per input key: the whole CKA pass of
every pair (``functional_similarities``: loads and products, as planning runs it) with each ``cka_matmul``, one
pair's products alone (also as plain TF32, which similarity does not use: the price of the split), and the largest
CKA difference of each from float64 products on the same GPU (the hardware's own TF32 rounding). Writes JSON.

    python benchmarks/similarity_cost_gpu.py --shape llama3-70b --layers 3 --out $OUT/similarity_cost.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path

import torch

from scale import SHAPES
from sharvet.calibration import CalibrationStats, InputStats
from sharvet.inference import shapes
from sharvet.inference.measure import elapsed
from sharvet.models import adapter_for
from sharvet.similarity import (CKA_MATMULS, _cka_terms, cuda_matmul_precision, device_budget,
                                functional_similarities, pooled_covariance, split_matmul)

#: pair products timed: similarity's two ways, and plain TF32 (not accurate enough to use; its speed is the bound)
PAIR_MODES = {"ieee": ("ieee", torch.matmul), "split-tf32": ("tf32", split_matmul), "tf32": ("tf32", torch.matmul)}


def random_model(shape: str, layers: int, device: torch.device):
    """The shape's model with random bf16 weights (transformers' initialisation, run on ``device``) on the host."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(**dict(SHAPES[shape], num_hidden_layers=layers, vocab_size=256))
    return shapes.random_model(config, torch.bfloat16, device, 0).cpu()


def random_stats(adapter, tokens: int, device: torch.device) -> CalibrationStats:
    """Per layer and input: float64 ``X^T X`` of random inputs, three dimensions with mean ~300 (massive activations)."""
    gen = torch.Generator(device).manual_seed(1)
    layers = []
    for _ in range(adapter.num_layers):
        per_key = {}
        for key in adapter.input_keys():
            d = adapter.shape(adapter.first_module_for_input(key))[0]
            scale = torch.exp(torch.randn(d, generator=gen, device=device))  # heavy-tailed widths per dimension
            x = torch.randn(tokens, d, generator=gen, device=device, dtype=torch.float64) * scale
            x[:, :3] = 300.0 + 50.0 * torch.randn(tokens, 3, generator=gen, device=device, dtype=torch.float64)
            per_key[key] = InputStats((x.T @ x).cpu(), x.sum(0).cpu(), tokens)
            del x
        layers.append(per_key)
    return CalibrationStats(layers)


def timed(fn, device: torch.device):
    """``fn()`` and the seconds it took on ``device``."""
    box = []
    seconds = elapsed(lambda: box.append(fn()), device)
    return box[0], seconds


def pair_seconds(adapter, types: list[str], stats, key: str, device, mode: str, repeats: int) -> float:
    """One pair's CKA products (layers 0 and 1, every type of ``key``), their operands already on the device."""
    cov = pooled_covariance(stats, key, 0, 1, device, torch.float32)[None]
    precision, mm = PAIR_MODES[mode]
    with cuda_matmul_precision(device, precision):
        operands = {}
        for t in types:
            w = [adapter.weight(layer, t).to(device, torch.float32) for layer in (0, 1)]
            tall = w[0].shape[0] >= w[0].shape[1]
            operands[t] = [mm(x.T, x)[None] if tall else x[None] for x in w] + [tall]

        def products():
            for a, b, tall in operands.values():
                _cka_terms(a, b, cov, (a, b) if tall else None, mm)

        products()  # warm-up (cuBLAS handles, kernel choice)
        _, seconds = timed(lambda: [products() for _ in range(repeats)], device)
    return seconds / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="llama3-70b", choices=sorted(SHAPES))
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda", help="cpu: a quick check of this script (TF32 is CUDA's)")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    device = torch.device(a.device)
    adapter = adapter_for(random_model(a.shape, a.layers, device))
    stats = random_stats(adapter, a.tokens, device)
    budget = device_budget(device)
    rows = {}
    for key, types in adapter.types_by_input().items():
        row = {"types": types, "d_in": adapter.shape(types[0])[0], "pass_seconds": {}, "pair_seconds": {},
               "cka_max_abs_diff_vs_float64": {}}
        ref, row["pass_seconds"]["float64"] = timed(lambda: functional_similarities(
            adapter, types, stats, key, device, torch.float64, budget=budget, progress=False), device)
        for mode in CKA_MATMULS:
            got, row["pass_seconds"][mode] = timed(lambda: functional_similarities(
                adapter, types, stats, key, device, torch.float32, budget=budget, progress=False, cka_matmul=mode),
                device)
            row["cka_max_abs_diff_vs_float64"][mode] = max(float((got[t] - ref[t]).abs().max()) for t in types)
        for mode in PAIR_MODES:
            row["pair_seconds"][mode] = pair_seconds(adapter, types, stats, key, device, mode, a.repeats)
        rows[key] = row
        print(key, json.dumps(row), flush=True)
    total = {m: sum(r["pair_seconds"][m] for r in rows.values()) for m in PAIR_MODES}
    passes = {m: sum(r["pass_seconds"][m] for r in rows.values()) for m in CKA_MATMULS}
    record = {"shape": a.shape, "layers": a.layers, "pairs": a.layers * (a.layers - 1) // 2, "tokens": a.tokens,
              "inputs": rows, "pair_seconds_all_types": total, "pass_seconds_all_inputs": passes,
              "pair_speedup_split": round(total["ieee"] / total["split-tf32"], 2),
              "pass_speedup_split": round(passes["ieee"] / passes["split-tf32"], 2),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
              "torch": torch.__version__,
              "date": datetime.date.today().isoformat(),
              "command": f"python benchmarks/similarity_cost_gpu.py --shape {a.shape} --layers {a.layers}"
                         f" --tokens {a.tokens} --repeats {a.repeats} --device {a.device} --out {a.out}"}
    print(json.dumps({k: v for k, v in record.items() if k.startswith(("pair_", "pass_"))}))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
