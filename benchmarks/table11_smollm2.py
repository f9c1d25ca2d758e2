"""Benchmark (issue 17 item 3): the paper's Table 11 on SmolLM2-135M -- 4-bit on top of sharing vs 3-bit.

Rows (``--rows``, default all five): ``original`` (floating point), ``rtn4`` and ``rtn3`` (RTN of the dense
model's decoder linear modules, groups of 128), ``sharvet`` (SharVeT at ``--ratio``, default 0.75: the paper's
"25 % sharing") and ``sharvet+rtn4`` (its factors quantised, :mod:`sharvet.quantization`), which at 0.75 x 4
bits matches the 3-bit budget. Also accepted: ``sharvet+rtnB`` for any B, and ``sharvet+rtnB-plain`` (sigma
left in V, no per-component rescaling: the ablation of that choice). Every row is scored by sharvet's
evaluation: WikiText-2 test and the held-out C4 half (sliding-window perplexity, context 1024) and COPA, PIQA,
ARC-Easy, WinoGrande, LAMBADA (lm-eval, 0-shot; ``--limit`` for quick runs). Memory is the exact stored bytes
of each model (:func:`sharvet.quantization.storage_report`: packed codes, float16 scale and zero point per
group, every other number at 2 bytes), for the whole model and for its decoder linear modules alone.

The compressed model is either a checkpoint (``--checkpoint DIR``, e.g. from ``sharvet compress --ratio 0.75
--refine``) or compressed here (the CLI's calibration defaults), then refined with the CLI's default refinement
when ``--refine`` is given; the JSON records which. Models are evaluated in float32 (``--dtype``).

    python benchmarks/table11_smollm2.py --data-dir DATA --device cuda --refine --json results/quant/table11.json
    python benchmarks/table11_smollm2.py --data-dir DATA --device cpu --limit 20 --max-tokens 4096 \
        --calib-samples 8 --json /tmp/t11.json                                  # a quick CPU check
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from sharvet.api import CalibrationSpec, calibrate, calibration_ids, load
from sharvet.config import CompressionConfig
from sharvet.evaluation.results import evaluate, software_versions
from sharvet.loading import LoadedModel, load_original
from sharvet.methods import DEFAULT_METHOD, method
from sharvet.models import adapter_for
from sharvet.pipeline import compress
from sharvet.quantization import quantize_model, storage_report

TASKS = ("copa", "piqa", "arc_easy", "winogrande", "lambada")
HEADS = {"copa": "CP", "piqa": "PQ", "arc_easy": "ARC", "winogrande": "WG", "lambada_openai": "LB"}
DEFAULT_ROWS = "original,rtn4,rtn3,sharvet,sharvet+rtn4"


def parse_row(row: str) -> tuple[bool, int | None, bool]:
    """``(compressed, bits or None, rescale)`` of a row name."""
    base, _, quant = row.partition("+")
    if base not in ("original", "sharvet") and not base.startswith("rtn"):
        raise ValueError(f"unknown row {row!r}")
    if base.startswith("rtn"):
        base, quant = "original", base
    plain = quant.endswith("-plain")
    bits = int(quant.removeprefix("rtn").removesuffix("-plain")) if quant else None
    return base == "sharvet", bits, not plain


def linear_bytes(model: nn.Module) -> int:
    """Stored bytes of the decoder linear modules alone (shared tensors once; lambda and biases included)."""
    adapter = adapter_for(model)
    holder = nn.ModuleList(adapter.get_module(l, t) for l in range(adapter.num_layers) for t in adapter.type_names)
    return storage_report(holder).total_bytes


def compressed_model(a: argparse.Namespace, teacher: LoadedModel) -> tuple[nn.Module, dict]:
    """The SharVeT model: loaded from ``--checkpoint`` or compressed (and with ``--refine`` refined) here."""
    if a.checkpoint:
        model = load(a.checkpoint, device=a.device)
        plan = model.config.sharvet
        return model, {"source": str(Path(a.checkpoint).resolve()), "ratio": plan.get("ratio"),
                       "refined": plan.get("settings", {}).get("refinement") is not None}
    t0 = time.perf_counter()
    spec = CalibrationSpec(data_dir=a.data_dir, samples=a.calib_samples, cache_dir=None).for_method(DEFAULT_METHOD)
    ids = calibration_ids(teacher, spec, seed=0)
    stats = calibrate(teacher, spec, seed=0, device=a.device, progress=False, ids=ids)
    student = copy.deepcopy(teacher.model)
    cfg = CompressionConfig.preset(DEFAULT_METHOD, (), ratio=a.ratio)  # what `sharvet compress --ratio` runs
    result = compress(student, stats, cfg, calibration_ids=ids, device=a.device, progress=False)
    info = {"source": "compressed here", "ratio": a.ratio, "realised_ratio": round(result.report.linear_ratio, 5),
            "calib_samples": a.calib_samples, "compress_s": round(time.perf_counter() - t0, 1), "refined": False}
    if a.refine:
        student, info["refinement"] = refined(a, teacher, student)
        info["refined"] = True
    return student, info


def refined(a: argparse.Namespace, teacher: LoadedModel, student: nn.Module) -> tuple[nn.Module, dict]:
    """The CLI's default refinement (``sharvet compress --refine``: the default method's mode), sigma absorbed."""
    from sharvet.experiment import refined_model
    from sharvet.refinement import add_refine_arguments, refine, refine_config_from_args
    from sharvet.training_data import training_ids

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--seed", type=int, default=0)
    add_refine_arguments(p)
    args = p.parse_args(["--refine-output", a.refine_dir])
    args.device = a.device
    cfg = refine_config_from_args(args, method=method(DEFAULT_METHOD))
    ids = training_ids(args.train_data, teacher.tokenizer, args.train_samples, args.train_seq_len, cfg.seed,
                       data_dir=a.data_dir, teacher=teacher.model, teacher_id="SmolLM2-135M-Instruct")
    t0 = time.perf_counter()
    out = refine(student, teacher.model, ids, cfg)
    return refined_model(out), {"mode": cfg.mode, "preset": cfg.preset, "steps": out.steps,
                                "train_data": args.train_data, "refine_s": round(time.perf_counter() - t0, 1)}


def score(a: argparse.Namespace, name: str, model: nn.Module, tokenizer) -> dict:
    cuda = str(a.device).startswith("cuda")
    r = evaluate(LoadedModel(model, tokenizer, name), ppl=a.ppl.split(",") if a.ppl else (),
                 tasks=a.tasks.split(",") if a.tasks else (), data_dir=a.data_dir, device=a.device,
                 batch_size=16 if cuda else 1, task_batch_size=128 if cuda else 8, max_tokens=a.max_tokens,
                 limit=a.limit, offline=True, progress=False, print_table=False)
    out = {"perplexity": {k: v.get("ppl") for k, v in r["perplexity"].items()},
           "tasks": {k: v.get("headline") for k, v in r["tasks"].items()},
           "n_tokens": {k: v.get("n_tokens") for k, v in r["perplexity"].items()},
           "n_docs": {k: v.get("n_samples") for k, v in r["tasks"].items()}}
    heads = list(out["tasks"].values())
    out["avg_acc"] = sum(heads) / len(heads) if heads and all(h is not None for h in heads) else None
    return out


def decode_rows(a: argparse.Namespace, teacher: LoadedModel, compressed: nn.Module | None, rows: list) -> list[dict]:
    """Greedy decode tokens/s of each row in bfloat16, 4-bit rows through the int4 kernel (3-bit: none exists)."""
    from int4_decode import generate_speed

    from sharvet.quantization.int4 import use_int4_kernels

    out = []
    for name, is_compressed, bits, rescale in rows:
        if bits not in (None, 4):
            out.append({"row": name, "status": f"no {bits}-bit kernel in torch: not measured"})
            continue
        model = copy.deepcopy(compressed if is_compressed else teacher.model)
        if bits:
            quantize_model(model, bits, a.group_size, rescale=rescale)
            use_int4_kernels(model)
        out.append({"row": name, "kernel": "tinygemm int4" if bits else "bf16 F.linear",
                    **generate_speed(model.to(torch.bfloat16), str(a.device), a.new_tokens)})
        print(json.dumps(out[-1]), flush=True)
        del model
    return out


def table(rows: list[dict]) -> str:
    tasks = list(dict.fromkeys(t for r in rows for t in r["tasks"]))
    ppls = list(dict.fromkeys(p for r in rows for p in r["perplexity"]))
    head = ["row", "bytes", "x fp16", "linear bytes", *ppls, *(HEADS.get(t, t) for t in tasks), "Avg"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["row"], f"{r['bytes']:,}", f"{r['bytes_vs_fp16']:.3f}", f"{r['linear_bytes']:,}",
                 *(f"{r['perplexity'][p]:.2f}" if r["perplexity"].get(p) is not None else "-" for p in ppls),
                 *(f"{r['tasks'][t]:.3f}" if r["tasks"].get(t) is not None else "-" for t in tasks),
                 "-" if r["avg_acc"] is None else f"{r['avg_acc']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="original model (default: the bundled SmolLM2-135M GGUF)")
    p.add_argument("--checkpoint", default=None, help="SharVeT checkpoint to use instead of compressing here")
    p.add_argument("--ratio", type=float, default=0.75)
    p.add_argument("--refine", action="store_true", help="refine the model compressed here (CLI defaults)")
    p.add_argument("--refine-dir", default="/tmp/table11-refine-run", help="refinement run folder")
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--rows", default=DEFAULT_ROWS)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--ppl", default="wikitext2,c4")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--limit", type=int, default=None, help="documents per task (quick runs)")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens per perplexity set (quick runs)")
    p.add_argument("--decode", action="store_true", help="also time greedy decoding (int4 kernel for 4-bit rows) "
                   "and, on CUDA, one token through 8B-shaped modules (benchmarks/int4_decode.py)")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--json", required=True)
    a = p.parse_args(argv)
    rows = [(r, *parse_row(r)) for r in a.rows.split(",") if r]
    start = time.perf_counter()
    teacher = load_original(a.model, dtype=a.dtype, device=a.device)
    fp16_bytes = storage_report(teacher.model).total_bytes
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "argv": sys.argv,
           "device": torch.cuda.get_device_name() if str(a.device).startswith("cuda") else a.device,
           "versions": software_versions(), "group_size": a.group_size, "eval_dtype": a.dtype,
           "bytes_format": "packed codes + float16 scale and zero per group of 128 input columns; every other "
                           "number 2 bytes (float16); shared tensors once", "rows": []}
    compressed = None
    if any(c for _, c, _, _ in rows):
        compressed, res["sharvet"] = compressed_model(a, teacher)
        print("sharvet model:", json.dumps(res["sharvet"]), flush=True)
    for name, is_compressed, bits, rescale in rows:
        model = copy.deepcopy(compressed if is_compressed else teacher.model)
        quant = None if bits is None else quantize_model(model, bits, a.group_size, rescale=rescale)
        report = quant or storage_report(model)
        t0 = time.perf_counter()
        record = {"row": name, "bits": bits, "rescale": rescale if is_compressed and bits else None,
                  "bytes": report.total_bytes, "bytes_vs_fp16": report.total_bytes / fp16_bytes,
                  "linear_bytes": linear_bytes(model), "storage": report.to_dict(),
                  **score(a, name, model, teacher.tokenizer)}
        record["eval_s"] = round(time.perf_counter() - t0, 1)
        res["rows"].append(record)
        print(json.dumps({k: v for k, v in record.items() if k != "storage"}), flush=True)
        write(a.json, res)
        del model
        if str(a.device).startswith("cuda"):
            torch.cuda.empty_cache()
    res["table"] = table(res["rows"])
    write(a.json, res)
    if a.decode:
        from int4_decode import matvec_rows

        res["decode"] = {"generate": decode_rows(a, teacher, compressed, rows)}
        write(a.json, res)
        res["decode"]["matvec"] = matvec_rows(a.device, a.ratio) if str(a.device).startswith("cuda") else None
    res["wall_s"] = round(time.perf_counter() - start, 1)
    print(res["table"])
    write(a.json, res)
    return res


def write(path: str, res: dict) -> None:
    """The results so far (after every row, so a later failure loses nothing)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(res, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
