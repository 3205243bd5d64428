"""Hinton distillation for classifiers: soft teacher labels at temperature T, mixed with gold-label CE."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hinton_loss(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, gold: torch.Tensor, alpha: float, temperature: float) -> dict[str, torch.Tensor]:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, gold).

    teacher_logprobs [B, L] are the cached label log-probs (any logits work: they are softened by
    T through a log-softmax). gold [B] holds label indices, -1 where a row has none: the CE term
    averages over the rows that have one and is 0 when none does. The T^2 factor keeps the soft
    term's gradient scale independent of T (Hinton et al. 2015).
    """
    teacher_t = F.log_softmax(teacher_logprobs.float() / temperature, dim=-1)
    student_t = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kd = (teacher_t.exp() * (teacher_t - student_t)).sum(-1).mean() * temperature**2
    has_gold = gold >= 0
    ce = F.cross_entropy(student_logits.float()[has_gold], gold[has_gold]) if has_gold.any() else student_logits.new_zeros(())
    return {"loss": alpha * kd + (1 - alpha) * ce, "kd": kd, "ce": ce}


def hard_targets(teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """The teacher's argmax as a (log) one-hot distribution: training on it is CE on the teacher's hard labels."""
    one_hot = F.one_hot(teacher_logprobs.argmax(-1), teacher_logprobs.shape[-1]).float()
    return torch.log(one_hot.clamp(min=1e-30))
