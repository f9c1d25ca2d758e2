"""Benchmark: the real ``sharvet compress`` and a short ``sharvet refine`` at the shapes of 7-70B models.

Nothing is downloaded. A model with the published shape of LLaMA-3-8B, Qwen2.5-7B or LLaMA-3-70B (configs
below; ``--layers`` keeps the first N decoder layers) gets random bfloat16 weights, saved first as sharded
safetensors with SmolLM2's tokenizer (from the bundled GGUF), so the real loading path runs. Each phase runs
the real command line in a child process (``sharvet.cli.main``), which records its wall time, peak GPU memory
(``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``, the largest over the GPUs) and peak host RSS;
refinement adds tokens/s (the median of its steps after the first, from its history). Records are appended to
``results/scale/summary.json`` and a table is printed. For shapes run at two or more layer counts, the table
adds the full model's time and peaks extrapolated from the two runs (labelled as such): peaks linear in layers, the
time stage by stage, similarity by layer pairs (it scores every pair) and the rest by layers.

    python benchmarks/scale.py --shape llama3-8b --device cuda                    # 256 x 1024 tokens, ratio 0.7
    python benchmarks/scale.py --shape llama3-70b --layers 4 --device cuda
    python benchmarks/scale.py --shape llama3-70b --layers 8 --device cuda        # the table extrapolates to 80
    python benchmarks/scale.py --shape llama3-8b --device cuda --refine-setups 1,2,2-fsdp   # 1 GPU, DDP, FSDP
    python benchmarks/scale.py --shape tiny --out /tmp/scale.json                  # a CPU check in a minute

Refinement setups: ``N`` runs ``sharvet refine`` in N processes (``accelerate launch``, DDP when N > 1), ``N-fsdp``
adds ``--fsdp`` (frozen weights sharded per decoder layer). The calibration statistics are removed as soon as
the compression is done (an 8B model's take 31 GiB of disk beside its 15 GiB of weights).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
#: published shapes (the models' config.json); vocabularies as published, the tokenizer is SmolLM2's
SHAPES = {
    "llama3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0,
                      max_position_embeddings=8192, rms_norm_eps=1e-5),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, rope_theta=1000000.0,
                       max_position_embeddings=32768, rms_norm_eps=1e-6),
    "llama3-70b": dict(model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                       num_attention_heads=64, num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0,
                       max_position_embeddings=8192, rms_norm_eps=1e-5),
    # CPU check of this script: SmolLM2's vocabulary, so every token id is in range
    "tiny": dict(model_type="llama", hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=49152, rope_theta=10000.0,
                 max_position_embeddings=2048, rms_norm_eps=1e-5),
}
SHARD_BYTES = 4 * 2**30
GIB = 2**30


# ---------------------------------------------------------------------- the model folder
def build_model(shape: str, layers: int, folder: Path, seed: int = 0, tokenizer: str | None = None) -> Path:
    """Random bf16 weights with the shape's config, written shard by shard (reused if already there), and
    ``tokenizer`` (a folder or a ``.gguf`` file; default: the bundled SmolLM2's) for calibration."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from sharvet.loading import bundled_model_file

    if (folder / "model.safetensors.index.json").exists():
        return folder
    spec = dict(SHAPES[shape], num_hidden_layers=layers, tie_word_embeddings=False, torch_dtype="bfloat16")
    config = AutoConfig.for_model(**spec)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device).manual_seed(seed)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, p in skeleton.state_dict().items():
        if p.dim() == 1 and "norm" in name:
            t = torch.ones(p.shape, dtype=torch.bfloat16)
        else:
            t = (torch.randn(p.shape, generator=gen, device=device) * 0.02).to(torch.bfloat16).cpu()
        if size + t.nbytes > SHARD_BYTES and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.nbytes
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(tmp / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
        total += sum(t.nbytes for t in shard.values())
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    config.save_pretrained(tmp)
    source = Path(tokenizer) if tokenizer else bundled_model_file()
    kwargs = {"gguf_file": source.name} if source.suffix == ".gguf" else {}
    AutoTokenizer.from_pretrained(str(source.parent if kwargs else source), **kwargs).save_pretrained(tmp)
    tmp.replace(folder)
    return folder


# ---------------------------------------------------------------------- one phase in a child process
def child(record_path: str, argv: list[str]) -> int:
    """Run ``sharvet ARGV`` in this process and write its wall time and peaks (one file per process)."""
    from sharvet.cli import main

    start = time.perf_counter()
    rc = main(argv)
    wall = time.perf_counter() - start
    gpus = range(torch.cuda.device_count()) if torch.cuda.is_available() else []
    rank = os.environ.get("LOCAL_RANK", "0")
    Path(f"{record_path}.{rank}").write_text(json.dumps({
        "rc": rc, "wall_s": wall,
        "peak_gpu_gib": max((torch.cuda.max_memory_allocated(i) / GIB for i in gpus), default=None),
        "peak_gpu_reserved_gib": max((torch.cuda.max_memory_reserved(i) / GIB for i in gpus), default=None),
        "peak_host_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
    }))
    return rc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_phase(argv: list[str], gpus: int, work: Path, device: str) -> dict:
    """``sharvet ARGV`` in one process, or ``gpus`` processes under ``accelerate launch``; peaks combined."""
    record = work / "phase.json"
    for old in work.glob("phase.json.*"):
        old.unlink()
    me = [str(Path(__file__).resolve()), "_child", str(record), "--"]
    launcher = [sys.executable] if gpus <= 1 else \
        [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(gpus), "--num_machines", "1",
         "--main_process_port", str(free_port()), "--multi_gpu" if device.startswith("cuda") else "--cpu"]
    start = time.perf_counter()
    rc = subprocess.run(launcher + me + argv, cwd=ROOT).returncode
    wall = time.perf_counter() - start
    parts = [json.loads(p.read_text()) for p in sorted(work.glob("phase.json.*"))]
    gpu = [p["peak_gpu_gib"] for p in parts if p["peak_gpu_gib"] is not None]
    reserved = [p["peak_gpu_reserved_gib"] for p in parts if p["peak_gpu_reserved_gib"] is not None]
    return {"rc": rc, "wall_s": round(wall, 1),
            "peak_gpu_gib": round(max(gpu), 2) if gpu else None,
            "peak_gpu_reserved_gib": round(max(reserved), 2) if reserved else None,
            "peak_host_gib": round(sum(p["peak_host_gib"] for p in parts), 2)}


def stage_seconds(checkpoint: Path) -> dict | None:
    """Where the compression's time went (load, calibration, planning, decomposition), as the checkpoint records it."""
    config = json.loads((checkpoint / "config.json").read_text())
    return config.get("sharvet", {}).get("settings", {}).get("stage_seconds")


def check_disk(work: Path, model: Path, layers: int, shape: str, phases: str) -> None:
    """Say what the run will put on disk beside the model (statistics, checkpoints) and what is free."""
    free = shutil.disk_usage(work).free / GIB
    spec = SHAPES[shape]
    widths = [spec["hidden_size"]] * 3 + [spec["intermediate_size"]]
    stats = layers * sum(4 * d * d for d in widths) / GIB  # float64 X^T X, half of each stored
    ckpt = 0.75 * folder_gib(model)
    need = (stats + ckpt if "compress" in phases else 0) + (ckpt if "refine" in phases else 0)
    print(f"disk: about {need:.1f} GiB needed beside the model ({stats:.1f} statistics while compressing), "
          f"{free:.1f} GiB free in {work}", flush=True)
    if need > free:
        raise SystemExit(f"not enough disk in {work}: about {need:.1f} GiB needed, {free:.1f} GiB free; "
                         "use --work on a larger disk or fewer --layers")


def folder_gib(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / GIB, 4)


def refine_tokens_per_s(run_dir: Path) -> float | None:
    from sharvet.refinement import read_history

    rates = [r["tokens_per_s"] for r in read_history(run_dir / "history.jsonl")[1:]]
    return round(statistics.median(rates), 1) if rates else None


# ---------------------------------------------------------------------- records and the table
#: how each stage of ``sharvet compress`` grows with the layer count: similarity scores every pair of layers
#: (CKA needs a pair's pooled covariance), the other stages handle one layer or one group at a time
STAGE_GROWTH = {"planning": "pairs", "calibration": "layers", "decomposition": "layers", "load": "layers"}


def _size(growth: str, layers: int) -> float:
    return layers * (layers - 1) / 2 if growth == "pairs" else layers


def _line(lo: tuple[float, float], hi: tuple[float, float], x: float) -> float:
    """The straight line through two (size, value) points, at ``x``."""
    return hi[1] + (hi[1] - lo[1]) / (hi[0] - lo[0]) * (x - hi[0])


def _wall(lo: dict, hi: dict, full: int) -> tuple[float, dict | None]:
    """Full-model wall time: per stage by its growth (:data:`STAGE_GROWTH`) where both runs recorded their
    stages, the rest of the command (start-up, model build, saving) linear in layers; else linear in layers."""
    stages = [st for st in (lo.get("stage_seconds"), hi.get("stage_seconds")) if st]
    if len(stages) < 2 or set(stages[0]) != set(stages[1]) or not set(stages[0]) <= set(STAGE_GROWTH):
        return _line((lo["layers"], lo["wall_s"]), (hi["layers"], hi["wall_s"]), full), None
    est = {}
    for name, growth in STAGE_GROWTH.items():
        if name in stages[0]:
            fit = _line((_size(growth, lo["layers"]), stages[0][name]),
                        (_size(growth, hi["layers"]), stages[1][name]), _size(growth, full))
            est[name] = max(fit, stages[1][name])  # a stage that took less with more layers: noise, no growth
    rest = [r["wall_s"] - sum(st.values()) for r, st in ((lo, stages[0]), (hi, stages[1]))]
    est["rest"] = _line((lo["layers"], rest[0]), (hi["layers"], rest[1]), full)
    return sum(est.values()), {k: round(v, 1) for k, v in est.items()}


def extrapolate(records: list[dict]) -> list[dict]:
    """Full-model estimates for (shape, phase, ratio, gpus) measured at two or more layer counts: peaks linear in
    layers, wall time by stage (:func:`_wall`)."""
    out = []
    keys = {(r["shape"], r["phase"], r["ratio"], r["gpus"]) for r in records if r["shape"] in SHAPES}
    for shape, phase, ratio, gpus in sorted(keys):
        rows = {r["layers"]: r for r in records if r.get("rc", 0) == 0
                and (r["shape"], r["phase"], r["ratio"], r["gpus"]) == (shape, phase, ratio, gpus)}
        full = SHAPES[shape]["num_hidden_layers"]
        if len(rows) < 2 or full in rows:
            continue
        lo, hi = rows[min(rows)], rows[max(rows)]
        est = {"shape": shape, "layers": full, "ratio": ratio, "phase": phase, "gpus": gpus,
               "extrapolated_from": [lo["layers"], hi["layers"]]}
        for f in ("wall_s", "peak_gpu_gib", "peak_host_gib"):
            if lo.get(f) is None or hi.get(f) is None:
                est[f] = None
            elif f == "wall_s":
                wall, stages = _wall(lo, hi, full)
                est["wall_s"] = round(wall, 1)
                if stages:
                    est["stage_seconds"] = stages
            else:
                est[f] = round(_line((lo["layers"], lo[f]), (hi["layers"], hi[f]), full), 2)
        out.append(est)
    return out


def table(records: list[dict]) -> str:
    cols = ("shape", "layers", "ratio", "phase", "gpus", "sharding", "rc", "wall_s", "peak_gpu_gib", "peak_host_gib",
            "tokens_per_s")
    rows = [[str(r.get(c, "")) for c in cols] for r in records]
    rows += [[str(r.get(c, "")) if c != "shape" else f"{r['shape']} (extrapolated)" for c in cols]
             for r in extrapolate(records)]
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(x.ljust(w) for x, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows])


def append_records(path: Path, new: list[dict]) -> list[dict]:
    records = json.loads(path.read_text()) if path.exists() else []
    records += new
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1) + "\n")
    return records


# ---------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from sharvet.similarity import CKA_MATMULS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    p.add_argument("--layers", type=int, default=None, help="decoder layers kept (default: the published count)")
    p.add_argument("--ratio", type=float, default=0.7)
    p.add_argument("--phases", default="compress,refine", help="comma list of compress, refine")
    p.add_argument("--refine-setups", default="1",
                   help="comma list of refinement runs: N processes (DDP when N > 1), N-fsdp with --fsdp")
    p.add_argument("--refine-batch", type=int, default=None, help="sequences per process and step (default 4; tiny 1)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--stream", default="on", choices=("auto", "on", "off"),
                   help="on (default): the path meant for 24 GB cards; auto picks in memory where it fits")
    p.add_argument("--cka-matmul", default="ieee", choices=CKA_MATMULS, help="as sharvet compress's")
    p.add_argument("--calib-samples", type=int, default=None, help="default 256 (tiny: 8)")
    p.add_argument("--calib-seq-len", type=int, default=None, help="default 1024 (tiny: 128)")
    p.add_argument("--refine-steps", type=int, default=6, help="optimizer steps (tokens/s: median after the first)")
    p.add_argument("--tokenizer", help="a tokenizer folder or .gguf file (default: the bundled SmolLM2's)")
    p.add_argument("--data-dir", default=os.environ.get("SHARVET_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--work", default=str(ROOT / "outputs" / "scale"), help="models, checkpoints, statistics")
    p.add_argument("--keep", action="store_true", help="keep the checkpoints and statistics (the model is kept)")
    p.add_argument("--out", default=str(ROOT / "results" / "scale" / "summary.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    tiny = a.shape == "tiny"
    layers = a.layers or SHAPES[a.shape]["num_hidden_layers"]
    samples = a.calib_samples or (8 if tiny else 256)
    seq_len = a.calib_seq_len or (128 if tiny else 1024)
    work = Path(a.work) / f"{a.shape}-L{layers}"
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = build_model(a.shape, layers, work / "model", tokenizer=a.tokenizer)
    print(f"model {model} ready ({folder_gib(model)} GiB, {time.perf_counter() - start:.0f} s)")
    compressed, refined, cache = work / f"r{a.ratio}", work / f"r{a.ratio}-refined", work / "calib"
    common = ["--device", a.device, "--dtype", a.dtype, "--data-dir", a.data_dir, "--no-progress"]
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    base = {"shape": a.shape, "layers": layers, "ratio": a.ratio, "device": a.device, "dtype": a.dtype}
    check_disk(work, model, layers, a.shape, a.phases)
    batch = a.refine_batch or (1 if tiny else 4)
    runs = [("compress", None)] if "compress" in a.phases.split(",") else []
    runs += [("refine", setup) for setup in a.refine_setups.split(",")] if "refine" in a.phases.split(",") else []
    for phase, setup in runs:
        if phase == "compress":
            shutil.rmtree(cache, ignore_errors=True)  # measure the calibration pass, not a cache hit
            argv = ["compress", str(model), "-o", str(compressed), "--overwrite", "--ratio", str(a.ratio),
                    "--calib-samples", str(samples), "--calib-seq-len", str(seq_len), "--stream", a.stream,
                    "--cache-dir", str(cache), "--cka-matmul", a.cka_matmul] + common
            gpus, extra = 1, {"calib_tokens": samples * seq_len, "stream": a.stream, "cka_matmul": a.cka_matmul}
        else:
            gpus, _, sharding = setup.partition("-")
            gpus = int(gpus)
            shutil.rmtree(refined, ignore_errors=True)
            shutil.rmtree(f"{refined}-refine-run", ignore_errors=True)
            argv = ["refine", str(compressed), "-o", str(refined), "--overwrite", "--max-steps", str(a.refine_steps),
                    "--train-samples", str(a.refine_steps * gpus * batch), "--train-seq-len", str(seq_len),
                    "--batch-size", str(batch), "--gradient-checkpointing",
                    # the setting: SharVeT's vectors (the default method, sharvet-plus, also trains V)
                    "--refine-mode", "both"] + (["--fsdp"] if sharding else []) + common
            extra = {"sharding": sharding or ("ddp" if gpus > 1 else None), "batch_per_gpu": batch,
                     "seq_len": seq_len}
        measured = run_phase(argv, gpus, work, a.device)
        if phase == "compress":
            extra["stats_disk_gib"] = folder_gib(cache) if cache.exists() else 0.0
            extra["stage_seconds"] = stage_seconds(compressed) if measured["rc"] == 0 else None
            if not a.keep:
                shutil.rmtree(cache, ignore_errors=True)
        tokens = refine_tokens_per_s(Path(f"{refined}-refine-run")) if phase == "refine" and measured["rc"] == 0 \
            else None
        # appended at once: kept if a later phase fails or the call is cut short
        append_records(Path(a.out), [{**base, "phase": phase, "gpus": gpus, **measured, "tokens_per_s": tokens,
                                      **extra, "date": date, "command": "sharvet " + shlex.join(argv)}])
        if measured["rc"] != 0 and phase == "compress":
            break  # nothing to refine
    if not a.keep:
        for path in (cache, compressed, refined, Path(f"{refined}-refine-run")):
            shutil.rmtree(path, ignore_errors=True)
    print(table(json.loads(Path(a.out).read_text()) if Path(a.out).exists() else []))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["_child"]:
        sys.exit(child(sys.argv[2], sys.argv[4:]))
    sys.exit(main())
