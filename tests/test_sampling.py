"""Sampled-logit caches: the draws, and the estimator's expectation against the full-vocabulary loss."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.chunked_loss import chunked_distillation_loss
from pipeline.errors import PipelineError
from pipeline.losses import LossSpec, distillation_loss, sampled_forward_kl
from pipeline.codec import pad_entries
from pipeline.sampling import draw_teacher_samples

V = 40


def padded_samples(samples):
    """ids, counts and log-probs as [positions, widest] tensors, the way training batches hold them."""
    ids, logprobs, counts = pad_entries(samples.entries, samples.ids, samples.logprobs, samples.counts)
    return torch.from_numpy(ids), torch.from_numpy(counts), torch.from_numpy(logprobs)


def teacher_and_student(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(V, generator=g, dtype=dtype) * 2.5, -1), torch.randn(V, generator=g, dtype=dtype) * 1.5


def test_draws_are_unique_sorted_counted_and_reproducible():
    teacher = torch.log_softmax(torch.randn(6, V, generator=torch.Generator().manual_seed(1)) * 3, -1)
    samples = draw_teacher_samples(teacher, 32, torch.Generator().manual_seed(7))
    again = draw_teacher_samples(teacher, 32, torch.Generator().manual_seed(7))
    assert (samples.ids == again.ids).all() and (samples.counts == again.counts).all()
    offsets = np.concatenate([[0], np.cumsum(samples.entries)])
    for position in range(6):
        ids = samples.ids[offsets[position] : offsets[position + 1]]
        assert (ids[1:] > ids[:-1]).all()
        assert samples.counts[offsets[position] : offsets[position + 1]].sum() == 32
        assert torch.equal(torch.from_numpy(samples.logprobs[offsets[position] : offsets[position + 1]]), teacher[position, torch.from_numpy(ids).long()])


def test_draw_frequencies_follow_the_teacher():
    teacher, _ = teacher_and_student(seed=3, dtype=torch.float32)
    samples = draw_teacher_samples(teacher[None], 200_000, torch.Generator().manual_seed(0))
    frequency = torch.zeros(V, dtype=torch.float64)
    frequency[torch.from_numpy(samples.ids).long()] = torch.from_numpy(samples.counts).double() / 200_000
    p = teacher.double().exp()
    assert ((frequency - p).abs() <= 5 * (p * (1 - p) / 200_000).sqrt() + 1e-6).all()


def estimates(teacher, student, draws, trials, temperature=1.0, seed=0):
    """Per-trial estimated KL and gradient for the student's logits, each trial an independent cache."""
    samples = draw_teacher_samples(teacher.expand(trials, V), draws, torch.Generator().manual_seed(seed))
    ids, counts, logprobs = padded_samples(samples)
    logits = student.expand(trials, V).clone().requires_grad_(True)
    on_ids = F.log_softmax(logits / temperature, -1).gather(-1, ids)
    kl = sampled_forward_kl(logprobs.double(), counts, on_ids, temperature)
    (grad,) = torch.autograd.grad(kl.sum(), logits)
    return kl.detach(), grad


def dense_kl_and_grad(teacher, student, temperature=1.0):
    logits = student.clone().requires_grad_(True)
    p = F.softmax(teacher / temperature, -1)
    kl = (p * (p.log() - F.log_softmax(logits / temperature, -1))).sum()
    (grad,) = torch.autograd.grad(kl, logits)
    return kl.detach(), grad


def z_score(values, truth):
    """How many standard errors the mean of the trials lies from the truth."""
    return (values.mean() - truth) / (values.std() / len(values) ** 0.5)


def test_estimator_is_unbiased_in_value_and_gradient():
    teacher, student = teacher_and_student()
    draws, trials = 8, 20_000
    kl, grad = estimates(teacher, student, draws, trials)
    dense_kl, dense_grad = dense_kl_and_grad(teacher, student)
    assert abs(z_score(kl, dense_kl)) < 4
    p = teacher.exp()  # the gradient at id i is q_i - count_i / draws: its standard error is known exactly
    standard_error = (p * (1 - p) / (draws * trials)).sqrt()
    assert ((grad.mean(0) - dense_grad) / standard_error).abs().max() < 5


def test_renormalising_over_the_draws_is_biased_and_the_test_sees_it():
    """The check above can fail: the truncated estimator (teacher and student renormalised over the drawn ids) misses."""
    teacher, student = teacher_and_student()
    samples = draw_teacher_samples(teacher.expand(20_000, V), 8, torch.Generator().manual_seed(0))
    ids, counts, logprobs = padded_samples(samples)
    present = counts > 0
    t = torch.where(present, logprobs.double(), -torch.inf).log_softmax(-1)
    s = torch.where(present, F.log_softmax(student, -1)[ids], -torch.inf).log_softmax(-1)
    truncated = torch.where(present, t.exp() * (t - s), 0.0).sum(-1)
    assert abs(z_score(truncated, dense_kl_and_grad(teacher, student)[0])) > 10


def test_tempered_estimator_converges_with_many_draws():
    teacher, student = teacher_and_student(seed=2)
    for temperature in (2.0, 0.5):
        kl, grad = estimates(teacher, student, draws=5_000, trials=50, temperature=temperature, seed=4)
        dense_kl, dense_grad = dense_kl_and_grad(teacher, student, temperature)
        assert kl.mean() == pytest.approx(dense_kl.item(), abs=0.02)
        assert (grad.mean(0) - dense_grad).abs().max() < 0.01


def test_training_paths_agree_on_a_sampled_batch_with_padding():
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(9, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    weight = torch.randn(V, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    teacher = torch.log_softmax(torch.randn(7, V, generator=g) * 2, -1)
    ids, counts, logprobs = padded_samples(draw_teacher_samples(teacher, 6, g))
    targets = torch.randint(0, V, (9,), generator=g)
    for temperature in (1.0, 1.7):
        spec = LossSpec(alpha=0.8, temperature=temperature)
        full = distillation_loss(F.linear(hidden, weight), targets, ids, logprobs, spec, counts=counts)
        chunked = chunked_distillation_loss(hidden, weight, None, targets, ids, logprobs, spec, 4, counts=counts)
        assert torch.isfinite(full["loss"]) and full["loss"].item() == pytest.approx(chunked["loss"].item(), abs=1e-12)
        for a, b in zip(torch.autograd.grad(full["loss"], (hidden, weight)), torch.autograd.grad(chunked["loss"], (hidden, weight))):
            assert torch.isfinite(a).all() and torch.allclose(a, b, atol=1e-12)


def test_sampled_cache_refuses_other_divergences():
    ids, counts, logprobs = padded_samples(draw_teacher_samples(torch.log_softmax(torch.randn(3, V), -1), 4, torch.Generator().manual_seed(0)))
    with pytest.raises(PipelineError, match="forward_kl only"):
        distillation_loss(torch.randn(3, V), torch.zeros(3, dtype=torch.long), ids, logprobs, LossSpec(divergence="reverse_kl"), counts=counts)
