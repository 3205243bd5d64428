"""Distillation losses on a sparse top-k cache: the math, independent of how logits are produced.

The teacher's distribution is known only on its cached top-k ids. Two ways to put teacher and
student on one support:

- `bucket` (default): the teacher's remaining mass (1 - sum of the top-k probabilities) is one tail
  bucket, and the student's mass outside the teacher's top-k is folded onto it. Nothing is
  renormalised away; with k equal to the vocabulary this is the full-vocabulary divergence.
- `renormalize`: teacher and student are both renormalised over the top-k ids. Biased (the student
  is never told how much mass belongs outside the top-k), kept for comparison with other tools.

A sampled cache (Sparse Logit Sampling, Anshumann et al. 2025) holds, per position, ids drawn from
the teacher with their counts instead of the top-k: `sampled_forward_kl` is the importance-sampling
estimate of forward KL over the full vocabulary, unbiased in value and gradient at T = 1. A hybrid
cache holds the exact top-h head plus draws from the rest: the same estimator, exact on the head,
sampling only the tail, whose mass the head fixes.

Every divergence takes the teacher's and the student's log-probabilities over the same support
and returns one value per position. The losses need only a few values of the student's
full-vocabulary log-softmax (at the target and at the top-k ids, plus the tempered normaliser
when T != 1): `sparse_terms` works from those, so a caller may compute them however it likes
(`distillation_loss` over full logits here, `pipeline.lm.chunked_loss` chunk by chunk for training).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from pydantic import Field

from pipeline.settings import Alpha, Settings, Temperature

PADDING = -1e30  # stands in for -inf at padded entries: exp() of it is 0, and padding minus padding is 0, not NaN


Divergence = Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "tvd"]
Tail = Literal["bucket", "renormalize"]
TAILS = get_args(Tail)


class LossSpec(Settings):
    """What `student.loss`, `tail`, `alpha`, `temperature`, `beta` and `skew` select in params.yaml."""

    loss: Divergence = "forward_kl"
    tail: Tail = "bucket"
    alpha: Alpha = 0.9
    temperature: Temperature = 1.0
    beta: float = Field(0.5, ge=0, le=1)  # jsd only: 0 = forward KL, 1 = reverse KL
    skew: float = Field(0.1, ge=0, lt=1)  # skew_kl only


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def tail_logprob(listed_logprobs: torch.Tensor) -> torch.Tensor:
    """Log of the probability outside the top-k; clamped so a full top-k gives a tiny finite tail."""
    covered = torch.logsumexp(listed_logprobs, dim=-1)
    return log1mexp(covered.clamp(max=-torch.finfo(listed_logprobs.dtype).eps))


def teacher_buckets(listed_logprobs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """[N, k+1] teacher log-probs over top-k + tail, softened by temperature.

    Exact on the top-k support; at temperature != 1 the tail is softened as one bucket.
    """
    buckets = torch.cat([listed_logprobs, tail_logprob(listed_logprobs)[:, None]], dim=-1)
    return F.log_softmax(buckets / temperature, dim=-1)


def teacher_support(listed_logprobs: torch.Tensor, tail: str, temperature: float = 1.0) -> torch.Tensor:
    """The teacher's tempered log-probs on the shared support: [N, k+1] buckets or [N, k] renormalised."""
    if tail == "bucket":
        return teacher_buckets(listed_logprobs, temperature)
    return F.log_softmax(listed_logprobs / temperature, dim=-1)


def student_support(on_topk: torch.Tensor, tail: str) -> torch.Tensor:
    """The student's log-probs on the shared support, from its (tempered) log-probs at the teacher's top-k ids."""
    if tail == "bucket":
        return torch.cat([on_topk, tail_logprob(on_topk)[:, None]], dim=-1)
    return on_topk - torch.logsumexp(on_topk, dim=-1, keepdim=True)


def forward_kl(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student): mass-covering."""
    return (teacher.exp() * (teacher - student)).sum(-1)


def reverse_kl(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """KL(student || teacher): mode-seeking."""
    return (student.exp() * (student - teacher)).sum(-1)


def _mixture(a: torch.Tensor, b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(weight_a * exp(a) + (1 - weight_a) * exp(b)) for 0 < weight_a < 1."""
    return torch.logaddexp(a + math.log(weight_a), b + math.log1p(-weight_a))


def generalized_jsd(teacher: torch.Tensor, student: torch.Tensor, beta: float) -> torch.Tensor:
    """beta * KL(teacher || m) + (1 - beta) * KL(student || m), m = beta * teacher + (1 - beta) * student.

    As in TRL's GKD: beta = 0 is forward KL and beta = 1 reverse KL (the endpoints are defined so;
    the mixture form itself vanishes there).
    """
    if beta == 0:
        return forward_kl(teacher, student)
    if beta == 1:
        return reverse_kl(teacher, student)
    mixture = _mixture(teacher, student, beta)
    return beta * forward_kl(teacher, mixture) + (1 - beta) * forward_kl(student, mixture)


def skew_kl(teacher: torch.Tensor, student: torch.Tensor, skew: float) -> torch.Tensor:
    """KL(teacher || skew * teacher + (1 - skew) * student) (DistiLLM): forward KL at skew 0, bounded above by -log(skew)."""
    if skew == 0:
        return forward_kl(teacher, student)
    return forward_kl(teacher, _mixture(teacher, student, skew))


def total_variation(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Half the L1 distance between the two distributions."""
    return 0.5 * (teacher.exp() - student.exp()).abs().sum(-1)


DIVERGENCES: dict[str, Callable[[torch.Tensor, torch.Tensor, LossSpec], torch.Tensor]] = {
    "forward_kl": lambda teacher, student, spec: forward_kl(teacher, student),
    "reverse_kl": lambda teacher, student, spec: reverse_kl(teacher, student),
    "jsd": lambda teacher, student, spec: generalized_jsd(teacher, student, spec.beta),
    "skew_kl": lambda teacher, student, spec: skew_kl(teacher, student, spec.skew),
    "tvd": lambda teacher, student, spec: total_variation(teacher, student),
}


def sample_log_weights(sample_logprobs: torch.Tensor, counts: torch.Tensor, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, m] log of the tempered teacher mass each listed id stands for, and [N, 1] log Z_T.

    A sampled id was drawn from the teacher at T = 1, restricted to the ids outside the position's
    head (a hybrid cache's exact top-h, listed with count 0 and a finite log-prob; a sampled cache
    has none): it stands for the tail mass M = 1 - p(head) times its share of the draws, count / draws,
    an unbiased weight at T = 1. A head id stands for its own exact probability. At T != 1 each draw
    is reweighted by p^(1/T - 1) and all weights self-normalised by Z_T = p(head)_T + M E[p^(1/T - 1)],
    estimated from the same draws (consistent: the bias shrinks with the number of draws). Padding
    entries (count 0, log-prob -inf), and drawn ids whose log-prob is -inf, get weight 0.
    """
    finite = torch.isfinite(sample_logprobs)
    sampled, head = (counts > 0) & finite, (counts == 0) & finite  # a drawn id of probability 0 adds nothing to KL or gradient
    logprobs = torch.where(finite, sample_logprobs, 0.0)
    counts = counts.to(sample_logprobs.dtype)
    share = torch.where(sampled, counts / counts.sum(-1, keepdim=True).clamp(min=1), 1.0).log()
    tail_mass = log1mexp(torch.where(head, logprobs, -torch.inf).logsumexp(-1, keepdim=True).clamp(max=-torch.finfo(logprobs.dtype).eps))
    drawn = tail_mass + share + ((1 / temperature - 1) * logprobs if temperature != 1 else 0.0)
    unnormalised = torch.where(sampled, drawn, torch.where(head, logprobs / temperature, -torch.inf))
    log_z = torch.logsumexp(unnormalised, dim=-1, keepdim=True)
    return unnormalised - log_z, log_z


def sampled_forward_kl(sample_logprobs: torch.Tensor, counts: torch.Tensor, student: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-position estimate of KL(teacher_T || student_T) from a sampled or hybrid cache: shape [N].

    sum_i w_i (log p_T(i) - log q_T(i)) over the listed ids with the weights of `sample_log_weights`,
    where `student` holds the student's tempered full-vocabulary log-probs at the listed ids and
    log p_T(i) = log p(i) / T - log Z_T. The gradient for the student's logits is (q_T - w) / T, and
    at T = 1 w is p on the head and an unbiased estimate of p on the tail: the full-vocabulary
    gradient in expectation, with no truncation bias; the head's share of it is exact.
    """
    log_weights, log_z = sample_log_weights(sample_logprobs, counts, temperature)
    listed = torch.isfinite(log_weights)
    teacher = torch.where(listed, sample_logprobs, 0.0) / temperature - log_z
    return torch.where(listed, log_weights.exp() * (teacher - student), 0.0).sum(-1)


def mask_padding(listed_logprobs: torch.Tensor, on_topk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher and student log-probs with padded entries (teacher log-prob -inf) set to PADDING on both sides.

    Padding then carries no mass on either side and adds exactly 0 to every divergence and to every
    gradient: -inf would give 0 * (-inf - -inf) = NaN. The student's value at a padded id is discarded.
    """
    padded = torch.isneginf(listed_logprobs)
    if not padded.any():
        return listed_logprobs, on_topk
    fill = torch.tensor(PADDING, dtype=on_topk.dtype)
    return torch.where(padded, fill, listed_logprobs.to(on_topk.dtype)), torch.where(padded, fill, on_topk)


def sparse_terms(
    target_logprobs: torch.Tensor,
    topk_student: torch.Tensor,
    tempered_norm: torch.Tensor | None,
    listed_logprobs: torch.Tensor,
    spec: LossSpec,
    counts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed divergence (over the first len(topk_student) positions) and summed CE (over all).

    target_logprobs [N] and topk_student [M, k] are the student's log-softmax at temperature 1,
    gathered at the actual tokens and at the teacher's top-k ids. At T != 1, tempered_norm [M] is
    logsumexp(log_softmax / T) over the vocabulary: the student's tempered log-probs on the top-k
    are then topk_student / T - tempered_norm, exact. Pass None at T = 1. With `counts` [M, k] the
    ids are a sampled or hybrid cache's entries and the divergence is `sampled_forward_kl`, whatever
    spec.loss says (the cache's storage refuses other divergences before training: pipeline.cache.schema).
    """
    on_topk = topk_student if tempered_norm is None else topk_student / spec.temperature - tempered_norm[:, None]
    if counts is not None:
        return sampled_forward_kl(listed_logprobs.to(on_topk.dtype), counts, on_topk, spec.temperature).sum(), -target_logprobs.sum()
    listed_logprobs, on_topk = mask_padding(listed_logprobs, on_topk)
    teacher = teacher_support(listed_logprobs.to(on_topk.dtype), spec.tail, spec.temperature)
    divergence = DIVERGENCES[spec.loss](teacher, student_support(on_topk, spec.tail), spec)
    return divergence.sum(), -target_logprobs.sum()


def combine_terms(kd_sum: torch.Tensor, ce_sum: torch.Tensor, kd_count: int, ce_count: int, spec: LossSpec) -> dict[str, torch.Tensor]:
    """alpha * T^2 * mean divergence + (1 - alpha) * mean CE, and both means for logging."""
    kd_weight, ce_weight = loss_weights(kd_count, ce_count, spec)
    return {"loss": kd_weight * kd_sum + ce_weight * ce_sum, "kd": kd_sum / max(kd_count, 1), "ce": ce_sum / max(ce_count, 1)}


def loss_weights(kd_count: int, ce_count: int, spec: LossSpec) -> tuple[float, float]:
    """Factors that turn the two sums into the loss: loss = kd_weight * kd_sum + ce_weight * ce_sum."""
    return spec.alpha * spec.temperature**2 / max(kd_count, 1), (1 - spec.alpha) / max(ce_count, 1)


def distillation_loss(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    listed_ids: torch.Tensor,
    listed_logprobs: torch.Tensor,
    spec: LossSpec = LossSpec(),
    counts: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The loss over full logits [N, V], one log_softmax shared by CE and the divergence.

    The first len(listed_ids) rows are cached positions (divergence and CE); any further rows count
    for CE only. Plain autograd: memory grows with N * V; training uses `pipeline.lm.chunked_loss`.
    """
    logprobs = F.log_softmax(student_logits, dim=-1)
    cached = len(listed_ids)
    norm = None if spec.temperature == 1 else torch.logsumexp(logprobs[:cached] / spec.temperature, dim=-1)
    target_logprobs = logprobs.gather(-1, targets[:, None])[:, 0]
    kd_sum, ce_sum = sparse_terms(target_logprobs, logprobs[:cached].gather(-1, listed_ids), norm, listed_logprobs, spec, counts)
    return combine_terms(kd_sum, ce_sum, cached, len(targets), spec)


def sparse_forward_kl(student_logits: torch.Tensor, listed_ids: torch.Tensor, listed_logprobs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-position KL(teacher || student) over the top-k ids plus one tail bucket: shape [N]."""
    student = F.log_softmax(student_logits / temperature, dim=-1).gather(-1, listed_ids)
    listed_logprobs, student = mask_padding(listed_logprobs, student)
    teacher = teacher_support(listed_logprobs.to(student.dtype), "bucket", temperature)
    return forward_kl(teacher, student_support(student, "bucket"))
