"""Sampled-logit caches: the draws, and the estimator's expectation against the full-vocabulary loss."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from pipeline.backends.sampling import draw_teacher_samples
from pipeline.cache import Cache, read_manifest
from pipeline.cache.codec import pad_entries
from pipeline.errors import PipelineError
from pipeline.lm.chunked_loss import chunked_distillation_loss
from pipeline.lm.losses import LossSpec, distillation_loss, sampled_forward_kl
from pipeline.lm.metrics import student_agreement
from pipeline.lm.student import build_student
from pipeline.lm.teacher import run_teacher
from pipeline.lm.training import StudentSettings, train_student
from pipeline.models import load_causal_lm
from pipeline.teacher_model import resolve_teacher

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
        distillation_loss(torch.randn(3, V), torch.zeros(3, dtype=torch.long), ids, logprobs, LossSpec(loss="reverse_kl"), counts=counts)


DRAWS = 24


@pytest.fixture(scope="module")
def sampled_cache(tmp_path_factory, tiny_teacher, prepared):
    from conftest import tiny_settings

    out = tmp_path_factory.mktemp("sampled") / "cache"
    assert run_teacher(prepared, resolve_teacher(str(tiny_teacher), tiny_teacher), out, tiny_settings(draws=DRAWS)) is not None
    return out


def test_sampled_teacher_stage_draws_from_the_teachers_distribution(sampled_cache, tiny_teacher):
    from conftest import cache_rows

    encoding = read_manifest(sampled_cache)["encoding"]
    assert encoding["storage"] == "sampled" and encoding["draws"] == DRAWS
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher, dtype=torch.float32).eval()
    top1_drawn, top1_expected, top1_variance = 0.0, 0.0, 0.0
    for row in cache_rows(sampled_cache):
        ids, start = row["input_ids"], row["response_start"]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)[start - 1 : len(ids) - 1]
        for j, (drawn, values, counts) in enumerate(zip(row["topk_ids"], row["topk_logprobs"], row["counts"])):
            assert len(set(drawn)) == len(drawn) and sum(counts) == DRAWS
            error = torch.tensor(values).exp().sqrt() - logprobs[j, drawn].exp().sqrt()
            assert error.abs().max() <= encoding["sqrt_step"]
            p = logprobs[j].exp()
            best = int(p.argmax())
            top1_drawn += counts[drawn.index(best)] if best in drawn else 0
            top1_expected += DRAWS * p[best].item()
            top1_variance += DRAWS * p[best].item() * (1 - p[best].item())
    assert abs(top1_drawn - top1_expected) < 5 * top1_variance**0.5  # draws of each position's mode, over the whole cache


def test_sampled_cache_is_the_same_from_two_workers(tmp_path, sampled_cache, tiny_teacher, prepared):
    from conftest import cache_rows, tiny_settings

    out, teacher = tmp_path / "cache", resolve_teacher(str(tiny_teacher), tiny_teacher)
    assert run_teacher(prepared, teacher, out, tiny_settings(draws=DRAWS), worker_index=1, num_workers=2) is None
    assert run_teacher(prepared, teacher, out, tiny_settings(draws=DRAWS), worker_index=0, num_workers=2) == read_manifest(sampled_cache)
    assert cache_rows(out) == cache_rows(sampled_cache)


def test_students_train_on_a_sampled_cache_with_forward_kl_only(tmp_path, sampled_cache, tiny_teacher):
    student = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 256}
    with pytest.raises(PipelineError, match="sampled cache: it supports student.loss forward_kl only"):
        train_student(sampled_cache, StudentSettings(model=student, loss="jsd", epochs=1), tmp_path / "refused")
    with pytest.raises(PipelineError, match="has no top-k tail to treat, so student.tail 'renormalize' does not apply"):
        train_student(sampled_cache, StudentSettings(model=student, tail="renormalize", epochs=1), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    before = student_agreement(build_student(student, 320, seed=0).eval(), Cache.open(sampled_cache))
    log = train_student(sampled_cache, StudentSettings(model=student, alpha=1.0, epochs=15, batch_size=4, lr=1e-2, warmup_steps=2), tmp_path / "student").steps
    after = student_agreement(load_causal_lm(tmp_path / "student"), Cache.open(sampled_cache))
    assert after["kl_to_teacher"] < 0.7 * before["kl_to_teacher"] and log[-1]["kd"] < log[0]["kd"]


def test_a_backend_without_the_full_distribution_refuses_to_sample(tmp_path, tiny_teacher, prepared):
    from conftest import tiny_settings

    from pipeline.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend(tiny_teacher)
    backend.can_sample = False  # as the vLLM backend, which returns only the top log-probs
    with pytest.raises(PipelineError, match="full distribution"):
        run_teacher(prepared, resolve_teacher(str(tiny_teacher), tiny_teacher), tmp_path / "cache", tiny_settings(draws=DRAWS), backend=backend)
    assert not (tmp_path / "cache").exists()


def test_kd_teacher_draws_option_writes_a_sampled_cache(tmp_path, tiny_teacher, prepared):
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tmp_path / "sampled"
    args = ["teacher", "--model", str(tiny_teacher), "--prepared", str(prepared), "--out", str(out), "--draws", "5", "--max-new-tokens", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    encoding = read_manifest(out)["encoding"]
    assert encoding["storage"] == "sampled" and encoding["draws"] == 5


def test_vllm_is_refused_for_a_sampled_cache_before_an_engine_starts(tmp_path, tiny_teacher, prepared):
    from conftest import tiny_settings

    with pytest.raises(PipelineError, match="which the vllm backend does not return"):
        run_teacher(prepared, resolve_teacher(str(tiny_teacher), tiny_teacher), tmp_path / "cache", tiny_settings(draws=DRAWS, backend="vllm"))
    assert not (tmp_path / "cache").exists()
