"""Decode speed of 4-bit weights through PyTorch's int4 kernel (tinygemm), dense and factorised (issue 17 item 3).

Two measurements, both batch 1, bfloat16 activations:

* ``matvec``: one token through one module of LLaMA-3-8B's shapes (q 4096x4096, gate 14336x4096, down
  4096x14336), random weights: dense bf16 ``F.linear``; dense 4-bit; factorised at ``--ratio`` (rank
  ``ratio * m n / (m + n)``, one layer's U and V, no sharing) in bf16; and factorised 4-bit. Timed as CUDA-graph
  replays (no launch overhead) with CUDA events; each row prints its bytes-read bound beside it.
* ``generate``: greedy decoding of ``--new-tokens`` tokens by ``transformers.generate`` for the models a
  Table 11 run builds (``table11_smollm2.decode_rows``): SmolLM2-135M is small enough that Python and launch
  overhead, not weight bytes, set this number.

Needs CUDA for the tinygemm kernel's GPU build; on the CPU it runs the CPU build (slow, for checking only).
The ``matvec`` part needs no model and runs on its own::

    python benchmarks/int4_decode.py --ratios 0.5,0.75 --json int4-matvec.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sharvet.quantization import QuantizedTensor
from sharvet.inference.measure import graph_seconds
from sharvet.quantization.int4 import Int4Weight

SHAPES_8B = {"q": (4096, 4096), "gate": (14336, 4096), "down": (4096, 14336)}


def matvec_rows(device: str, ratio: float, reps: int = 50) -> list[dict]:
    """One token through each 8B module: dense / factorised, bf16 / int4 (random weights)."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for name, (d_out, d_in) in SHAPES_8B.items():
        rank = int(ratio * d_out * d_in / (d_out + d_in))
        w = torch.randn(d_out, d_in, generator=g) / d_in**0.5
        u, v = torch.randn(rank, d_in, generator=g) / d_in**0.5, torch.randn(d_out, rank, generator=g) / rank**0.5
        x = torch.randn(1, d_in, generator=g).to(device, torch.bfloat16)
        wb, ub, vb = (t.to(device, torch.bfloat16) for t in (w, u, v))
        w4, u4, v4 = (Int4Weight(QuantizedTensor(t.to(device), 4, 128)) for t in (w, u, v))
        bf16_bytes, int4 = 2 * d_out * d_in, lambda n, k: n * k / 2 + 4 * n * -(-k // 128)
        cases = {
            "dense bf16": (lambda x: F.linear(x, wb), bf16_bytes),
            "dense int4": (w4.linear, int4(d_out, d_in)),
            f"factorised {ratio} bf16": (lambda x: F.linear(F.linear(x, ub), vb), 2 * rank * (d_in + d_out)),
            f"factorised {ratio} int4": (lambda x: v4.linear(u4.linear(x)), int4(rank, d_in) + int4(d_out, rank)),
        }
        base = None
        for case, (fn, nbytes) in cases.items():
            seconds = graph_seconds(lambda: fn(x), x.device, reps, inner=10)
            base = base or (seconds, nbytes)
            rows.append({"shape": f"8B {name} {d_out}x{d_in}", "case": case, "ratio": ratio,
                         "rank": rank if "fact" in case else None,
                         "us": round(seconds * 1e6, 2), "speedup_vs_dense_bf16": round(base[0] / seconds, 3),
                         "bytes": int(nbytes), "bytes_bound": round(base[1] / nbytes, 3)})
            print(rows[-1], flush=True)
    return rows


@torch.no_grad()
def generate_speed(model, device: str, new_tokens: int, prompt: int = 32) -> dict:
    """Greedy tokens/s at batch 1 after a warm-up (``model`` already on ``device`` in its run dtype)."""
    vocab = model.config.vocab_size
    ids = torch.randint(vocab // 10, vocab, (1, prompt), generator=torch.Generator().manual_seed(0)).to(device)
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    model.generate(ids, max_new_tokens=8, min_new_tokens=8, **kwargs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"new_tokens": new_tokens, "seconds": round(seconds, 3), "tokens_per_s": round(new_tokens / seconds, 1)}


def table(rows: list[dict]) -> str:
    """The matvec rows as a Markdown table: time, speedup over dense bf16, and the bytes bound beside it."""
    lines = ["| shape | case | rank | us | speedup vs dense bf16 | bytes bound |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['shape']} | {r['case']} | {r['rank'] or '-'} | {r['us']:.2f} | "
              f"{r['speedup_vs_dense_bf16']:.2f}x | {r['bytes_bound']:.2f}x |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description="one token through LLaMA-3-8B-shaped modules: bf16 or int4, dense or "
                                            "factorised")
    p.add_argument("--ratios", default="0.5", help="comma-separated factorisation ratios")
    p.add_argument("--reps", type=int, default=50, help="timed CUDA-graph replays (10 calls each) per case")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="write the rows here")
    a = p.parse_args(argv)
    rows = [r for ratio in a.ratios.split(",") for r in matvec_rows(a.device, float(ratio), a.reps)]
    print(table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                            "device": torch.cuda.get_device_name() if a.device.startswith("cuda")
                                            else "cpu", "torch": torch.__version__, "rows": rows}, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
