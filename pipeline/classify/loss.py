"""Hinton distillation for classifiers: soft teacher labels at temperature T, mixed with gold-label CE."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import PipelineError

LABEL_TEMPERATURES = np.exp(np.linspace(np.log(0.02), np.log(50.0), 801))  # the grid `fit` searches, 1% apart


def hinton_loss(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, gold: torch.Tensor, alpha: float, temperature: float) -> dict[str, torch.Tensor]:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, gold).

    teacher_logprobs [B, L] are the cached label log-probs (any logits work: they are softened by
    T through a log-softmax). gold [B] holds label indices, -1 where a row has none: the CE term
    averages over the rows that have one and is 0 when none does. The T^2 factor keeps the soft
    term's gradient scale independent of T (Hinton et al. 2015).
    """
    teacher_t = F.log_softmax(teacher_logprobs.float() / temperature, dim=-1)
    student_t = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kd = label_kl(teacher_t, student_t).mean() * temperature**2
    has_gold = gold >= 0
    ce = F.cross_entropy(student_logits.float()[has_gold], gold[has_gold]) if has_gold.any() else student_logits.new_zeros(())
    return {"loss": alpha * kd + (1 - alpha) * ce, "kd": kd, "ce": ce}


def label_kl(teacher_logprobs: torch.Tensor | np.ndarray, student_logprobs: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Per-text KL(teacher || student) over the labels: the one KL-to-teacher of the classification task.

    Tensors (training) or numpy arrays (evaluation, float64 metrics), computed with that library's own exp.
    """
    exp = torch.exp if isinstance(teacher_logprobs, torch.Tensor) else np.exp
    return (exp(teacher_logprobs) * (teacher_logprobs - student_logprobs)).sum(-1)


def hard_targets(teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """The teacher's argmax as a (log) one-hot distribution: training on it is CE on the teacher's hard labels."""
    one_hot = F.one_hot(teacher_logprobs.argmax(-1), teacher_logprobs.shape[-1]).float()
    return torch.log(one_hot.clamp(min=1e-30))


def fit_label_temperature(label_logprobs: np.ndarray, gold: np.ndarray) -> float:
    """The temperature tau that makes softmax(log p / tau) best predict the gold labels (lowest NLL).

    Temperature scaling (Guo et al. 2017) with one scalar: it keeps the teacher's ranking and so its
    accuracy, and corrects its over- or under-confidence, which soft-label students copy. Rows without a
    gold label (-1) are ignored.
    """
    has_gold = gold >= 0
    if not has_gold.any():
        raise PipelineError("label_temperature: fit needs gold labels in the train split; set a number instead (1.0 keeps the teacher's labels as they are)")
    logprobs = torch.from_numpy(label_logprobs[has_gold]).double()
    labels = torch.from_numpy(gold[has_gold]).long()
    grid = torch.from_numpy(LABEL_TEMPERATURES)
    nll = torch.stack([F.cross_entropy(logprobs / tau, labels) for tau in grid])
    return float(grid[int(nll.argmin())])


def scaled_label_logprobs(label_logprobs: np.ndarray, temperature: float) -> np.ndarray:
    """The teacher's label distribution at temperature tau, renormalised: log softmax(log p / tau)."""
    return F.log_softmax(torch.from_numpy(label_logprobs).double() / temperature, dim=-1).numpy().astype(np.float32)
