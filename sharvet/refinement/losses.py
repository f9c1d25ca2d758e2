"""The refinement objective, eq. 13: ``L = L_LM + w_KD L_KD + w_f L_f + w_L2 L_L2``.

Choices where the reference code differs from the paper or is plainly off (documented in the README):

* ``L_KD`` is ``T^2 KL(p_teacher || p_student)`` **averaged per token**. The reference calls
  ``kl_div(reduction="batchmean")`` on (batch, seq, vocab) tensors, which sums over positions, so its
  weight silently grows with the sequence length; the per-token mean keeps ``kd_weight`` meaningful
  across sequence lengths (multiply by L to compare with the reference's numbers).
* ``L_f`` is the mean squared error between teacher and student hidden states, mean over elements. By
  default the outputs of every decoder layer, ``hidden_states[1:]`` (in Hugging Face models the last of
  them is taken after the final norm). The reference also stacks ``hidden_states[0]``, the embeddings,
  which are never compressed and so only dilute the mean by ``n / (n + 1)``.
* ``L_L2`` is the summed squared deviation of every trainable tensor from its value before training: the
  vectors start at a good point (lambda = 1, sigma = singular values), so "small" means "close to the
  start", not close to zero. The reference sums the norms of the attention vectors only, towards zero.

A term whose weight is 0 is not computed at all (no teacher forward is needed when both the KD and
the feature weight are 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LossWeights:
    """Weights of eq. 13; the defaults are the reference's (``run/test.yaml``)."""

    kd: float = 0.001
    feature: float = 5.0
    l2: float = 1e-8
    temperature: float = 1.0
    #: indices into ``hidden_states`` (0 = embeddings); None = every decoder layer output, 1..n
    feature_layers: tuple[int, ...] | None = None

    @property
    def needs_teacher(self) -> bool:
        return self.kd > 0 or self.feature > 0


@dataclass
class LossOutput:
    """The differentiable total and the unweighted terms as floats-to-be (detached tensors) for logging."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]

    def floats(self) -> dict[str, float]:
        """The terms as Python floats (one device sync; the trainer defers it to the optimizer step)."""
        return {k: float(v) for k, v in self.terms.items()}


def lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross entropy, mean over the ``B (L - 1)`` predicted tokens, computed in float32."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T^2 KL(teacher || student)`` per position, summed over the vocabulary, averaged over tokens."""
    t = temperature
    log_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    per_token = F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(-1)
    return per_token.mean() * t * t


def feature_loss(
    student_hidden: tuple[torch.Tensor, ...], teacher_hidden: tuple[torch.Tensor, ...],
    layers: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Mean squared error over the chosen hidden states (all the same shape, so = mean of per-layer MSEs)."""
    chosen = layers if layers is not None else range(1, len(student_hidden))
    losses = [F.mse_loss(student_hidden[i].float(), teacher_hidden[i].float()) for i in chosen]
    if not losses:
        raise ValueError("feature loss needs at least one hidden-state layer")
    return torch.stack(losses).mean()


def l2_deviation(params: list[nn.Parameter], initial: list[torch.Tensor]) -> torch.Tensor:
    """Summed squared distance of every trainable tensor from its starting value (0 at initialisation)."""
    return sum(((p.float() - p0.float()) ** 2).sum() for p, p0 in zip(params, initial, strict=True))


def refinement_loss(
    student_logits: torch.Tensor,
    ids: torch.Tensor,
    weights: LossWeights,
    *,
    student_hidden: tuple[torch.Tensor, ...] | None = None,
    teacher_logits: torch.Tensor | None = None,
    teacher_hidden: tuple[torch.Tensor, ...] | None = None,
    params: list[nn.Parameter] | None = None,
    initial: list[torch.Tensor] | None = None,
) -> LossOutput:
    """Eq. 13; teacher tensors must already be on the student's device."""
    total = lm_loss(student_logits, ids)
    terms = {"lm": total.detach()}
    if weights.kd > 0:
        kd = kd_loss(student_logits, teacher_logits, weights.temperature)
        total = total + weights.kd * kd
        terms["kd"] = kd.detach()
    if weights.feature > 0:
        feat = feature_loss(student_hidden, teacher_hidden, weights.feature_layers)
        total = total + weights.feature * feat
        terms["feature"] = feat.detach()
    if weights.l2 > 0:
        l2 = l2_deviation(params, initial)
        total = total + weights.l2 * l2
        terms["l2"] = l2.detach()
    terms["loss"] = total.detach()
    return LossOutput(total, terms)
