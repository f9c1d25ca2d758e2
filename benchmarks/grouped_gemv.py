"""Benchmark (issue 17): the matmuls of one decode token, dense against compressed, cuBLAS against grouped kernels.

Every linear module of a published shape at ``--ratio`` (the SharVeT planner's groups and ranks, random weights,
the inference form's padding), run for one token as one CUDA graph per variant, so that only the kernels count:

- ``dense``: one GEMV per module (the dense model's weights);
- ``cublas``: each compressed module's two GEMVs and its lambda multiply, as ``fuse="never"`` runs them;
- ``grouped NxKxW``: ``fuse="grouped"``'s two Triton launches per layer input, for each tile size in ``--tiles``
  (``FIRST/SECOND`` gives each stage its own, e.g. ``4x512x4/8x512x4``).

Prints microseconds per token, weight bytes read, the bandwidth that implies, and the speedup over dense beside
the bytes bound (dense bytes / compressed bytes). Attention, norms and the LM head are left out: this isolates what
the grouped kernels change; ``sharvet bench --ratios R:grouped`` measures the whole step.

    python benchmarks/grouped_gemv.py --shape llama3-8b --ratio 0.5 --tiles 8x512x4,16x256x4,4x1024x4 --out g.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sharvet.inference import grouped  # noqa: E402
from sharvet.inference.form import prepare  # noqa: E402
from sharvet.inference.measure import graph_seconds  # noqa: E402
from sharvet.inference.records import environment  # noqa: E402
from sharvet.inference.shapes import compressed_random, plan_for, random_model, shape_config  # noqa: E402
from sharvet.models import adapter_for  # noqa: E402
from sharvet.modules import SharedBasisLinear  # noqa: E402


def inputs_by_key(adapter, tokens: int, device, dtype) -> dict[str, torch.Tensor]:
    """Random tokens per layer input (hidden size, or the MLP's width for down)."""
    return {k: torch.randn(tokens, adapter.shape(adapter.first_module_for_input(k))[0], device=device, dtype=dtype)
            for k in adapter.input_keys()}


def layer_groups(adapter) -> list[tuple[str, list[SharedBasisLinear]]]:
    """(input key, the modules reading it) for every layer, in the order the layer runs them."""
    by_input = adapter.types_by_input()
    return [(k, [adapter.get_module(layer, t) for t in types])
            for layer in range(adapter.num_layers) for k, types in by_input.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="llama3-8b")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--tiles", default="8x512x4,16x256x4,4x1024x4,8x512x4x4",
                   help="rows x columns x warps [x first-stage split] per program (sharvet.inference.grouped)")
    p.add_argument("--tokens", default="1,16", help="tokens per decode step (a batch of sequences), comma list")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    device, dtype = torch.device(a.device), torch.bfloat16 if a.device == "cuda" else torch.float32
    config = shape_config(a.shape)
    dense = random_model(config, dtype, device, seed=0)
    dense_adapter = adapter_for(dense)
    xs = {m: inputs_by_key(dense_adapter, m, device, dtype) for m in map(int, a.tokens.split(","))}
    weights = [(t.input_key, dense_adapter.get_module(layer, t.name).weight)
               for layer in range(dense_adapter.num_layers) for t in dense_adapter.module_types]
    dense_bytes = sum(w.numel() * w.element_size() for _, w in weights)
    rows = [dict(variant="dense", tokens=m, bytes=dense_bytes,
                 seconds=graph_seconds(lambda: [F.linear(x[k], w) for k, w in weights], device, a.repeats))
            for m, x in xs.items()]
    plan = plan_for(dense, a.ratio, device)
    weights.clear()  # the dense model's memory back before the compressed one is built
    del dense
    model = prepare(compressed_random(config, plan, dtype, device, seed=0), fuse="never")
    adapter = adapter_for(model)
    groups = layer_groups(adapter)
    # bytes read per step: a basis shared by a group is read again in each layer that uses it (as
    # sharvet.inference.traffic counts), not once as it is stored
    compressed_bytes = sum(t.numel() * t.element_size() for _, ms in groups for m in ms
                           for t in (m.basis, m.v, m.scale) if t is not None)
    for m, x in xs.items():
        rows.append(dict(variant="cublas", tokens=m, bytes=compressed_bytes,
                         seconds=graph_seconds(lambda: [mod(x[k]) for k, ms in groups for mod in ms], device,
                                               a.repeats)))
    if grouped.available() and (device.type == "cuda" or grouped.INTERPRET):
        for tile in a.tiles.split(","):
            grouped.TILES = grouped.parse_stage_tiles(tile)
            stages = [(k, grouped.GroupedStages(ms)) for k, ms in groups]
            for m, x in xs.items():
                run = lambda: [g.part(x[k], i) for k, g in stages for i in range(len(g.parts))]  # noqa: E731
                rows.append(dict(variant=f"grouped {tile}", tokens=m, bytes=compressed_bytes,
                                 seconds=graph_seconds(run, device, a.repeats)))
    dense_s = {r["tokens"]: r["seconds"] for r in rows if r["variant"] == "dense"}
    bound = dense_bytes / compressed_bytes
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{a.shape} ratio {a.ratio}, the linear modules of one decode step, {device} ({gpu})")
    print("| variant | tokens | us per step | weight MB | TB/s | speedup vs dense | bytes bound |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        r.update(us=round(r["seconds"] * 1e6, 1), tb_s=round(r["bytes"] / r["seconds"] / 1e12, 3),
                 speedup=round(dense_s[r["tokens"]] / r["seconds"], 3),
                 bound=round(bound, 3) if r["variant"] != "dense" else 1.0)
        print(f"| {r['variant']} | {r['tokens']} | {r['us']} | {r['bytes'] / 1e6:.1f} | {r['tb_s']} | {r['speedup']} "
              f"| {r['bound']} |")
    if a.out:
        # the kernels' settings beyond the tile (PDL, read-ahead) come from the environment: the record says which
        Path(a.out).write_text(json.dumps(dict(shape=a.shape, ratio=a.ratio, rows=rows, command=" ".join(sys.argv),
                                               kernels=grouped.describe(), **environment(device, dtype)), indent=2))


if __name__ == "__main__":
    main()
