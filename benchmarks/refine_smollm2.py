"""Benchmark: refinement of SmolLM2-135M (issue 3) -- vectors (lambda + sigma) vs LoRA, same steps.

Only WikiText-2 *test* is available offline, so it is split by rows (``sharvet.experiment.held_out_split``): the first half is held out for
perplexity, the second half supplies calibration and fine-tuning windows. No evaluated token is ever
trained on. The original model is evaluated on the same held-out half.

    python benchmarks/refine_smollm2.py --data-dir ../shared/data --device cuda --json results/refine.json
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from sharvet.calibration import collect_stats
from sharvet.data import pack_sequences
from sharvet.evaluation.perplexity import perplexity
from sharvet.experiment import held_out_split, refined_model
from sharvet.loading import load_original
from sharvet.models import adapter_for
from sharvet.config import CompressionConfig
from sharvet.pipeline import compress
from sharvet.refinement import RefineConfig, parameter_summary, plot_comparison, refine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cuda")
    p.add_argument("--ratios", default="0.7,0.5")
    p.add_argument("--modes", default="both,lora")
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--train-samples", type=int, default=512)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lm-only", action="store_true", help="ablation L: language-modelling loss only")
    p.add_argument("--out-dir", default="outputs/refine-bench")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    out_dir = Path(a.out_dir)
    teacher = load_original(a.model, device=a.device)
    eval_ids, train_1d = held_out_split(teacher.tokenizer, a.data_dir)
    stats = collect_stats(adapter_for(teacher.model), pack_sequences(train_1d, a.calib_samples, a.seq_len, 0),
                          device=a.device, progress=False)
    train_ids = pack_sequences(train_1d, a.train_samples, a.seq_len, 1)

    def ppl(model) -> float:
        return round(perplexity(model, eval_ids, context=1024, batch_size=8, device=a.device, progress=False).ppl, 3)

    res = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name() if a.device == "cuda" else a.device,
           "eval_tokens": len(eval_ids), "train_tokens_available": len(train_1d), "args": vars(a),
           "original_ppl": ppl(teacher.model), "rows": []}
    print("original", res["original_ppl"], flush=True)
    for ratio in map(float, a.ratios.split(",")):
        base = copy.deepcopy(teacher.model)
        compress(base, stats, CompressionConfig(ratio=ratio), device=a.device, progress=False)
        before = ppl(base)
        curves = {}
        for mode in a.modes.split(","):
            student = copy.deepcopy(base)
            cfg = RefineConfig(mode=mode, lr=a.lr, epochs=a.epochs, batch_size=a.batch_size, lora_rank=a.lora_rank, lm_only=a.lm_only,
                               output_dir=str(out_dir / f"r{ratio}-{mode}"), progress=False, seed=0)
            if a.device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            result = refine(student, teacher.model, train_ids, cfg)
            wall = time.perf_counter() - t0
            summary = parameter_summary(result.model)
            model = refined_model(result)
            row = {"ratio": ratio, "mode": mode, "ppl_before": before, "ppl_after": ppl(model),
                   "steps": result.steps, "wall_s": round(wall, 1),
                   "train_tokens_per_s": round(a.train_samples * a.seq_len * a.epochs / wall),
                   "trainable": summary.trainable, "total": summary.total, "final_losses": result.final}
            res["rows"].append(row)
            curves[mode] = cfg.output_dir + "/history.jsonl"
            print(row, flush=True)
            del student, model, result
        if len(curves) > 1:
            plot_comparison(curves, out_dir / f"loss_r{ratio}.png", term="lm")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=2, default=str))
    print("| ratio | refinement | ppl before | ppl after | steps | trainable | train tok/s | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in res["rows"]:
        print(f"| {r['ratio']} | {r['mode']} | {r['ppl_before']} | {r['ppl_after']} | {r['steps']} | "
              f"{r['trainable']:,} | {r['train_tokens_per_s']:,} | {r['wall_s']} |")


if __name__ == "__main__":
    main()
