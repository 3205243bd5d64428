"""Distillation losses on a sparse top-k cache.

The teacher's distribution is known on its top-k ids; the rest of its mass (1 - sum of the
top-k probabilities) becomes one tail bucket. The student's distribution is folded onto the
same k + 1 buckets, so the KL is exact for what the cache holds and no mass is renormalised away.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def tail_logprob(topk_logprobs: torch.Tensor) -> torch.Tensor:
    """Log of the probability outside the top-k; clamped so a full top-k gives a tiny finite tail."""
    covered = torch.logsumexp(topk_logprobs, dim=-1)
    return log1mexp(covered.clamp(max=-torch.finfo(topk_logprobs.dtype).eps))


def teacher_buckets(topk_logprobs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """[N, k+1] teacher log-probs over top-k + tail, softened by temperature.

    Exact on the top-k support; at temperature != 1 the tail is softened as one bucket.
    """
    buckets = torch.cat([topk_logprobs, tail_logprob(topk_logprobs)[:, None]], dim=-1)
    return F.log_softmax(buckets / temperature, dim=-1)


def student_buckets(student_logits: torch.Tensor, topk_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """[N, k+1] student log-probs on the teacher's top-k ids, plus the rest of its mass."""
    logprobs = F.log_softmax(student_logits / temperature, dim=-1)
    on_topk = logprobs.gather(-1, topk_ids)
    return torch.cat([on_topk, tail_logprob(on_topk)[:, None]], dim=-1)


def sparse_forward_kl(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-position KL(teacher || student) over the top-k ids plus one tail bucket: shape [N]."""
    teacher = teacher_buckets(topk_logprobs.to(student_logits.dtype), temperature)
    student = student_buckets(student_logits, topk_ids, temperature)
    return (teacher.exp() * (teacher - student)).sum(-1)


def distillation_loss(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    alpha: float,
    temperature: float = 1.0,
) -> dict[str, torch.Tensor]:
    """alpha * T^2 * sparse forward KL + (1 - alpha) * CE on the actual tokens, mean over positions.

    Returns the loss and both terms (the KL at the training temperature) for logging.
    """
    kl = sparse_forward_kl(student_logits, topk_ids, topk_logprobs, temperature).mean()
    ce = F.cross_entropy(student_logits, targets)
    return {"loss": alpha * temperature**2 * kl + (1 - alpha) * ce, "kl": kl, "ce": ce}
