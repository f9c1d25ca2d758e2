"""Lightweight discrepancy refinement (paper section 3.4): train lambda and sigma, then absorb sigma.

Typical use::

    result = refine(student, teacher, train_ids, RefineConfig(output_dir="runs/r1"))
    finalize(result.model, result.record())
    checkpoint.save(result.model, "compressed-refined")
"""
from .absorb import finalize
from .command import add_refine_arguments, refine_config_from_args
from .guard import NonFiniteLossError, require_finite
from .history import plot_comparison, plot_history, read_history
from .losses import LossOutput, LossWeights, feature_loss, kd_loss, l2_deviation, lm_loss, refinement_loss
from .presets import PRESETS, RefinePreset
from .state import latest_checkpoint
from .trainer import MODES, RefineConfig, RefineResult, refine
from .vectors import ParameterSummary, mark_trainable, parameter_summary, release_sigma

__all__ = [
    "MODES", "PRESETS", "LossOutput", "LossWeights", "NonFiniteLossError", "ParameterSummary", "RefineConfig",
    "RefinePreset", "RefineResult", "release_sigma", "require_finite",
    "add_refine_arguments", "attach_lora", "feature_loss", "finalize", "kd_loss", "l2_deviation",
    "latest_checkpoint", "lm_loss", "load_lora", "mark_trainable", "parameter_summary", "plot_comparison",
    "plot_history", "read_history", "refine", "refine_config_from_args", "refinement_loss", "save_lora",
]

#: provided by :mod:`.lora`, imported on first use: peft takes ~4 s to import, which every ``sharvet``
#: command would otherwise pay
_LORA_NAMES = ("attach_lora", "load_lora", "save_lora")


def __getattr__(name: str):
    if name in _LORA_NAMES:
        from . import lora

        return getattr(lora, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
