"""The refinement objective, eq. 13: ``L = L_LM + w_KD L_KD + w_f L_f + w_L2 L_L2``.

Choices where the reference code differs from the paper or is plainly off (documented in the README):

* ``L_KD`` is ``T^2 KL(p_teacher || p_student)`` **averaged per token** (and logged so). The reference calls
  ``kl_div(reduction="batchmean")`` on (batch, seq, vocab) tensors, which sums over positions, so its
  weight silently grows with the sequence length: ``LossWeights(kd_per_sequence=True)`` reproduces that
  (the weight is multiplied by the sequence length), the ``reference`` preset uses it.
* ``L_f`` is the mean squared error between teacher and student hidden states, mean over elements. By
  default the outputs of every decoder layer, ``hidden_states[1:]`` (in Hugging Face models the last of
  them is taken after the final norm). The reference also stacks ``hidden_states[0]``, the embeddings,
  which are never compressed and so only dilute the mean by ``n / (n + 1)``.
* ``L_L2`` is the summed squared deviation of every trainable tensor from its value before training: the
  vectors start at a good point (lambda = 1, sigma = singular values), so "small" means "close to the
  start", not close to zero. The reference sums the norms of the attention vectors only, towards zero.

A term whose weight is 0 is not computed at all (no teacher forward is needed when both the KD and
the feature weight are 0). The LM and KD terms are computed together, a block of positions at a time
under activation checkpointing (:func:`logit_losses`): one float32 log-softmax of the student serves
both, and no float32 copy of the whole ``(batch, seq, vocab)`` logits is ever held, so larger batches fit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

#: positions per block of :func:`logit_losses` (x batch x vocabulary float32 values held at once)
LOGIT_BLOCK = 128


@dataclass
class LossWeights:
    """Weights of eq. 13; the defaults are the reference's (``run/test.yaml``)."""

    kd: float = 0.001
    feature: float = 5.0
    l2: float = 1e-8
    temperature: float = 1.0
    #: multiply the KD weight by the sequence length, as the reference's ``batchmean`` over positions does
    kd_per_sequence: bool = False
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


def _block_sums(student: torch.Tensor, teacher: torch.Tensor | None, targets: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """Summed next-token NLL and (if ``teacher``) summed KL of one block of positions, in float32."""
    log_s = F.log_softmax(student.float(), dim=-1)
    nll = F.nll_loss(log_s.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
    if teacher is None:
        return torch.stack([nll, nll.new_zeros(())])
    log_s_t = log_s if temperature == 1.0 else F.log_softmax(student.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher.float() / temperature, dim=-1)
    return torch.stack([nll, F.kl_div(log_s_t, log_t, log_target=True, reduction="sum")])


def logit_losses(student_logits: torch.Tensor, ids: torch.Tensor, teacher_logits: torch.Tensor | None = None,
                 temperature: float = 1.0, block: int = LOGIT_BLOCK) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`lm_loss` and (with ``teacher_logits``) :func:`kd_loss`, equal to them, in blocks of positions.

    Each block runs under non-reentrant activation checkpointing, so its float32 log-softmax is freed
    after the forward and recomputed in the backward; ``split`` (not slicing) keeps the backward one
    concatenation of the blocks' gradients.
    """
    b, length = ids.shape
    targets = torch.cat([ids[:, 1:], ids.new_full((b, 1), -100)], dim=1)
    s_blocks = student_logits.split(block, dim=1)
    t_blocks = teacher_logits.split(block, dim=1) if teacher_logits is not None else [None] * len(s_blocks)
    sums = sum(checkpoint(_block_sums, s, t, y, temperature, use_reentrant=False) if s.requires_grad
               else _block_sums(s, t, y, temperature)
               for s, t, y in zip(s_blocks, t_blocks, targets.split(block, dim=1)))
    lm = sums[0] / (b * (length - 1))
    kd = sums[1] / (b * length) * temperature ** 2 if teacher_logits is not None else None
    return lm, kd


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
    """Summed squared distance of every trainable tensor from its starting value (0 at initialisation).

    With foreach kernels: a handful of launches for the hundreds of small vectors (a loop of ``sub``, ``pow``
    and ``sum`` per tensor was ~3,400 kernels a step, forward and backward, on SmolLM2).
    """
    if len(params) != len(initial):
        raise ValueError(f"{len(params)} trainable tensors but {len(initial)} initial values")
    if not params:
        return torch.zeros(())
    return torch.stack(torch._foreach_norm(torch._foreach_sub(params, initial))).float().pow(2).sum()


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
    lm, kd = logit_losses(student_logits, ids, teacher_logits if weights.kd > 0 else None, weights.temperature)
    total = lm
    terms = {"lm": lm.detach()}
    if weights.kd > 0:
        kd_weight = weights.kd * (ids.shape[1] if weights.kd_per_sequence else 1)
        total = total + kd_weight * kd
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
