"""Named refinement settings: the improved default and the authors' code, reproducible by name.

A preset fills what the user left unset (``None``) in :class:`~sharvet.refinement.RefineConfig`: the
learning rate, eq. 13's weights, whether those weights are matched to the LM loss's scale, and how
sigma is trained. Anything set explicitly wins.
"""
from __future__ import annotations

from dataclasses import dataclass

from .losses import LossWeights


@dataclass(frozen=True)
class RefinePreset:
    description: str
    #: learning rate of the vectors (modes both / lambda / sigma) and of LoRA adapters
    lr_vectors: float
    lr_lora: float
    #: learning rate of the trained matrices (modes ``factors``, ``all``), relative: times each matrix's RMS
    lr_matrices: float
    weights: LossWeights
    #: replace the KD and feature weights by ``LM / term`` measured once before training (paper, App. D)
    match_loss_scales: bool
    #: train sigma as ``sigma0 (1 + delta)`` (scale-free) instead of its absolute value
    relative_sigma: bool

    def lr(self, mode: str) -> float:
        return self.lr_lora if mode == "lora" else self.lr_vectors


PRESETS: dict[str, RefinePreset] = {
    "default": RefinePreset(
        "the paper's rule for eq. 13 (KD and feature weights matched to the LM loss's scale before training), "
        "sigma trained relative to its start, and the learning rates where the study's probe peaked on "
        "SmolLM2 (vectors 1e-2, LoRA 3e-3)",
        lr_vectors=1e-2, lr_lora=3e-3, lr_matrices=3e-3, weights=LossWeights(kd=1.0, feature=1.0, l2=1e-8),
        match_loss_scales=True, relative_sigma=True),
    "reference": RefinePreset(
        "the authors' code (run/test.yaml): lr 1e-3, KD 0.001 on kl_div(batchmean), i.e. summed over the "
        "positions of a sequence, feature MSE x5, L2 1e-8, sigma trained as an absolute value",
        lr_vectors=1e-3, lr_lora=1e-3, lr_matrices=3e-3,
        weights=LossWeights(kd=0.001, feature=5.0, l2=1e-8, kd_per_sequence=True),
        match_loss_scales=False, relative_sigma=False),
}


def preset(name: str) -> RefinePreset:
    if name not in PRESETS:
        raise ValueError(f"unknown refinement preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]
