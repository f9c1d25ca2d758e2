"""Command-line glue: the refinement flags and their translation into a :class:`RefineConfig`.

The data flags (``--train-data``, ``--train-samples``, ``--train-seq-len``) are not part of the config:
the caller loads and packs the token ids (``sharvet.data``) and passes the ``(N, L)`` tensor to
``refine``. ``--seed`` and ``--no-progress`` are read from the common flags when the parser has them.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .presets import PRESETS
from .trainer import MODES, RefineConfig

if TYPE_CHECKING:
    from ..methods import Method

_DEFAULTS = RefineConfig()
#: WikiText-2 validation and the training half of the C4 subset, every token once (training_data.py)
TRAIN_DATA = "wikitext2+c4"


def add_refine_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every refinement flag to ``parser`` (as one argument group; unset values come from the preset)."""
    g = parser.add_argument_group("refinement (section 3.4)")
    g.add_argument("--refine-preset", choices=PRESETS, default=_DEFAULTS.preset,
                   help="; ".join(f"{k}: {v.description}" for k, v in PRESETS.items()))
    g.add_argument("--refine-mode", choices=MODES, default=None,
                   help="what trains: both = lambda and sigma (the paper), lambda, sigma, factors = both plus every "
                        "layer's V (beyond the paper, nothing added to the budget), all = factors plus the groups' "
                        "shared bases, or LoRA adapters; default: the method's (both for sharvet, lora for the "
                        "baselines)")
    g.add_argument("--lr", type=float, default=None, help="default: the preset's for the mode")
    g.add_argument("--lr-matrices", type=float, default=None,
                   help="learning rate of the trained matrices in --refine-mode factors / all, relative to each "
                        "matrix's RMS (default: the preset's)")
    g.add_argument("--lr-bases", type=float, default=None,
                   help="relative learning rate of the groups' shared bases in --refine-mode all (default: "
                        "--lr-matrices's); a step of a basis moves every layer of its group at once")
    g.add_argument("--epochs", type=int, default=None,
                   help="passes over the fine-tuning windows; default: the method's (4 for sharvet-plus, the "
                        "default; 2, as the paper trains every model, for the paper's methods)")
    g.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size, help="sequences per process and step")
    g.add_argument("--grad-accum", type=int, default=_DEFAULTS.grad_accum)
    g.add_argument("--weight-decay", type=float, default=_DEFAULTS.weight_decay,
                   help="AdamW decay towards 0 (the L2 term already pulls towards the initial values)")
    g.add_argument("--decay-to-init", type=float, default=_DEFAULTS.decay_to_init,
                   help="after each step, move every trained tensor this share of the way back to its start "
                        "(times the schedule's factor; decoupled from Adam, unlike --l2-weight)")
    g.add_argument("--lr-end-factor", type=float, default=_DEFAULTS.lr_end_factor)
    g.add_argument("--grad-clip", type=float, default=_DEFAULTS.grad_clip, help="0 disables clipping")
    g.add_argument("--kd-weight", type=float, default=None,
                   help="eq. 13's KD weight, used as given (default: the preset's; matched to the LM loss in 'default')")
    g.add_argument("--feature-weight", type=float, default=None, help="as --kd-weight, for the feature MSE")
    g.add_argument("--l2-weight", type=float, default=None, help="default: the preset's (1e-8)")
    g.add_argument("--temperature", type=float, default=_DEFAULTS.temperature)
    g.add_argument("--feature-layers", default=None,
                   help="comma list of hidden-state indices for the feature loss (default: every decoder layer)")
    g.add_argument("--lm-only", action="store_true", help="LM loss only, no teacher (ablation SharVeT_L)")
    g.add_argument("--match-loss-scales", action="store_true",
                   help="set the KD and feature weights so each term starts at the LM loss's scale (paper, App. D), "
                        "also with the reference preset; with it an explicit --kd-weight / --feature-weight "
                        "multiplies the matched weight (--kd-weight 2: twice the LM loss's scale)")
    g.add_argument("--train-data", default=TRAIN_DATA,
                   help="dataset name, file or folder of training text, or 'teacher' (sequences sampled from the "
                        "original model); several joined by '+' share --train-samples, and with 'teacher' among "
                        "them each text source gives at most what it holds (no repeats) and teacher text the rest")
    g.add_argument("--train-samples", type=int, default=None,
                   help="training sequences of --train-seq-len tokens (default: every whole window of the text "
                        "sources once; needed with 'teacher')")
    g.add_argument("--train-seq-len", type=int, default=1024)
    g.add_argument("--checkpoint-every", type=int, default=_DEFAULTS.checkpoint_every,
                   help="optimizer steps between resumable checkpoints (0: only at the end and on Ctrl-C)")
    g.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --refine-output")
    g.add_argument("--refine-output", default=None, help="folder for checkpoints, history.jsonl and loss.png")
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--compile", action="store_true", help="torch.compile every decoder layer of student and teacher "
                   "(one graph for layers of different ranks; compile time first, faster steps after)")
    g.add_argument("--teacher-device", default=None, help="device of the teacher (default: the student's)")
    g.add_argument("--fsdp", action="store_true", help="under accelerate launch with several processes: shard the "
                   "frozen weights of student and teacher per decoder layer (FSDP) instead of a copy per GPU")
    g.add_argument("--lora-rank", type=int, default=_DEFAULTS.lora_rank)
    g.add_argument("--lora-alpha", type=float, default=_DEFAULTS.lora_alpha)
    g.add_argument("--lora-dropout", type=float, default=_DEFAULTS.lora_dropout)


def _layers(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--feature-layers must be a comma list of integers, got {text!r}") from None


def refine_config_from_args(args: argparse.Namespace, *, output_dir: str | None = None,
                            method: Method | None = None, variants: dict | None = None) -> RefineConfig:
    """Build and validate the config.

    ``output_dir`` is the fallback when ``--refine-output`` is not given; ``method`` (the compression method)
    gives the mode and epochs that flags leave unset (else :class:`RefineConfig`'s); ``variants`` (from
    :func:`sharvet.methods.refine_overrides`) win over all.
    """
    variants = dict(variants or {})
    variants.pop("refine", None)
    mode = method.refine_mode if method else _DEFAULTS.mode
    epochs = method.refine_epochs if method else _DEFAULTS.epochs
    cfg = RefineConfig(
        mode=variants.pop("mode", args.refine_mode or mode), preset=args.refine_preset, lr=args.lr,
        lr_matrices=args.lr_matrices, lr_bases=args.lr_bases,
        epochs=epochs if args.epochs is None else args.epochs, batch_size=args.batch_size,
        grad_accum=args.grad_accum, weight_decay=args.weight_decay, decay_to_init=args.decay_to_init,
        lr_end_factor=args.lr_end_factor,
        grad_clip=args.grad_clip, seed=getattr(args, "seed", _DEFAULTS.seed),
        lm_only=variants.pop("lm_only", args.lm_only),
        kd_weight=args.kd_weight, feature_weight=args.feature_weight, l2_weight=args.l2_weight,
        match_loss_scales=variants.pop("match_loss_scales", args.match_loss_scales),
        temperature=args.temperature, feature_layers=_layers(args.feature_layers), lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        gradient_checkpointing=args.gradient_checkpointing, teacher_device=args.teacher_device, fsdp=args.fsdp,
        compile=args.compile,
        checkpoint_every=args.checkpoint_every, max_steps=args.max_steps,
        output_dir=args.refine_output or output_dir or _DEFAULTS.output_dir,
        progress=not getattr(args, "no_progress", False), cpu=getattr(args, "device", None) == "cpu",
    )
    cfg.validate()
    return cfg
