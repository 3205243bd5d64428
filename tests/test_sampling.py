"""Sampled-logit caches: the draws, and the estimator's expectation against the full-vocabulary loss."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from pipeline.backends.sampling import draw_teacher_samples
from pipeline.cache import Cache, read_manifest
from pipeline.cache.codec import pad_entries
from pipeline.cache.schema import Hybrid
from pipeline.errors import PipelineError
from pipeline.lm.chunked_loss import chunked_distillation_loss
from pipeline.lm.losses import LossSpec, distillation_loss, sampled_forward_kl
from pipeline.lm.metrics import student_agreement
from pipeline.lm.student import build_student
from pipeline.lm.student_settings import StudentSettings
from pipeline.lm.teacher import run_teacher
from pipeline.lm.trainer import train_student
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


def estimates(teacher, student, draws, trials, temperature=1.0, seed=0, head=0):
    """Per-trial estimated KL and gradient for the student's logits, each trial an independent sampled (head 0) or hybrid cache."""
    samples = draw_teacher_samples(teacher.expand(trials, V), draws, torch.Generator().manual_seed(seed), head=head)
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


def assert_training_paths_agree(seed, head=0):
    """The chunked training loss equals the full-logit one, value and gradients, on a padded sampled (head 0) or hybrid batch."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(9, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    weight = torch.randn(V, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    teacher = torch.log_softmax(torch.randn(7, V, generator=g) * 2, -1)
    ids, counts, logprobs = padded_samples(draw_teacher_samples(teacher, 6, g, head=head))
    if head:
        assert (counts == 0).any() and torch.isneginf(logprobs).any()  # head entries and padding both present
    targets = torch.randint(0, V, (9,), generator=g)
    for temperature in (1.0, 1.7):
        spec = LossSpec(alpha=0.8, temperature=temperature)
        full = distillation_loss(F.linear(hidden, weight), targets, ids, logprobs, spec, counts=counts)
        chunked = chunked_distillation_loss(hidden, weight, None, targets, ids, logprobs, spec, 4, counts=counts)
        assert torch.isfinite(full["loss"]) and full["loss"].item() == pytest.approx(chunked["loss"].item(), abs=1e-12)
        for a, b in zip(torch.autograd.grad(full["loss"], (hidden, weight)), torch.autograd.grad(chunked["loss"], (hidden, weight))):
            assert torch.isfinite(a).all() and torch.allclose(a, b, atol=1e-12)


def test_training_paths_agree_on_a_sampled_batch_with_padding():
    assert_training_paths_agree(seed=5)


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
    assert run_teacher(prepared, teacher, out, tiny_settings(draws=DRAWS), worker_index=0, num_workers=2).document == read_manifest(sampled_cache)
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
    backend.can_sample = False  # as a backend that returns only the top log-probs would be
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


# Hybrid caches: the exact top-h head (count 0) plus draws from the rest.


def hybrid_estimates(teacher, student, head, draws, trials, seed=0):
    return estimates(teacher, student, draws, trials, seed=seed, head=head)


def test_hybrid_draws_list_the_exact_head_and_draw_from_the_rest():
    teacher = torch.log_softmax(torch.randn(5, V, generator=torch.Generator().manual_seed(1)) * 3, -1)
    samples = draw_teacher_samples(teacher, 20, torch.Generator().manual_seed(7), head=6)
    offsets = np.concatenate([[0], np.cumsum(samples.entries)])
    for position in range(5):
        ids = samples.ids[offsets[position] : offsets[position + 1]]
        counts = samples.counts[offsets[position] : offsets[position + 1]]
        assert (ids[1:] > ids[:-1]).all() and counts.sum() == 20
        assert set(ids[counts == 0]) == set(teacher[position].topk(6).indices.tolist())
        assert not set(ids[counts > 0]) & set(ids[counts == 0])
        assert torch.equal(torch.from_numpy(samples.logprobs[offsets[position] : offsets[position + 1]]), teacher[position, torch.from_numpy(ids).long()])


def test_hybrid_tail_draws_follow_the_teacher_outside_the_head():
    teacher, _ = teacher_and_student(seed=3, dtype=torch.float32)
    draws = 200_000
    samples = draw_teacher_samples(teacher[None], draws, torch.Generator().manual_seed(0), head=5)
    frequency = torch.zeros(V, dtype=torch.float64)
    frequency[torch.from_numpy(samples.ids).long()] = torch.from_numpy(samples.counts).double() / draws
    p = teacher.double().exp()
    p[teacher.topk(5).indices] = 0
    p /= p.sum()  # the teacher restricted to the ids outside its head
    assert ((frequency - p).abs() <= 5 * (p * (1 - p) / draws).sqrt() + 1e-6).all()


def test_a_tail_without_mass_draws_uniformly_and_carries_no_weight():
    teacher = torch.full((1, 6), -torch.inf)
    teacher[0, :2] = torch.tensor([0.5, 0.5]).log()  # nothing outside the top 2
    samples = draw_teacher_samples(teacher, 40, torch.Generator().manual_seed(0), head=2)
    assert samples.counts.sum() == 40 and set(samples.ids[samples.counts > 0]) <= {2, 3, 4, 5}
    ids, counts, logprobs = padded_samples(samples)
    student = torch.log_softmax(torch.randn(1, 6, dtype=torch.float64), -1)
    dense = (teacher[0, :2].exp().double() * (teacher[0, :2].double() - student[0, :2])).sum()
    estimate = sampled_forward_kl(logprobs.double(), counts, student.gather(-1, ids))
    assert estimate.item() == pytest.approx(dense.item(), abs=1e-6)  # float32 teacher values


def test_hybrid_estimator_is_unbiased_in_value_and_gradient():
    teacher, student = teacher_and_student()
    head, draws, trials = 4, 8, 20_000
    kl, grad = hybrid_estimates(teacher, student, head, draws, trials)
    dense_kl, dense_grad = dense_kl_and_grad(teacher, student)
    assert abs(z_score(kl, dense_kl)) < 4
    p = teacher.exp()  # outside the head the gradient is q_i - M count_i / draws: binomial draws with p_i / M
    tail = p.clone()
    tail[teacher.topk(head).indices] = 0
    mass = tail.sum()
    standard_error = (mass * tail * (1 - tail / mass) / (draws * trials)).sqrt()
    error = (grad.mean(0) - dense_grad).abs()
    assert error[teacher.topk(head).indices].max() < 1e-7  # the head's part is exact (up to the float32 log-probs draws keep)
    assert (error / standard_error.clamp(min=1e-30))[tail > 0].max() < 5


def test_hybrid_has_lower_variance_than_sampling_with_the_same_stored_ids():
    """At most 8 listed ids either way: 8 draws, or the top 4 plus 4 draws from the rest."""
    teacher, student = teacher_and_student()
    _, sampled = hybrid_estimates(teacher, student, 0, 8, 5_000, seed=1)
    _, hybrid = hybrid_estimates(teacher, student, 4, 4, 5_000, seed=1)
    sampled_variance, hybrid_variance = sampled.var(0).sum().item(), hybrid.var(0).sum().item()
    assert hybrid_variance < 0.5 * sampled_variance, (hybrid_variance, sampled_variance)


def test_hybrid_estimator_with_temperature_converges_with_many_draws():
    teacher, student = teacher_and_student(seed=2)
    for temperature in (2.0, 0.5):
        kl, grad = estimates(teacher, student, draws=5_000, trials=50, temperature=temperature, seed=4, head=3)
        dense_kl, dense_grad = dense_kl_and_grad(teacher, student, temperature)
        assert kl.mean() == pytest.approx(dense_kl.item(), abs=0.02)
        assert (grad.mean(0) - dense_grad).abs().max() < 0.01


def test_training_paths_agree_on_a_hybrid_batch_with_padding():
    assert_training_paths_agree(seed=6, head=3)


HEAD = 4


@pytest.fixture(scope="module")
def hybrid_cache(tmp_path_factory, tiny_teacher, prepared):
    from conftest import tiny_settings

    out = tmp_path_factory.mktemp("hybrid") / "cache"
    assert run_teacher(prepared, resolve_teacher(str(tiny_teacher), tiny_teacher), out, tiny_settings(draws=DRAWS, head=HEAD)) is not None
    return out


def test_hybrid_teacher_stage_lists_the_forwards_head_and_draws_from_its_tail(hybrid_cache, tiny_teacher):
    from conftest import cache_rows

    manifest = read_manifest(hybrid_cache)
    encoding = manifest["encoding"]
    assert encoding["storage"] == "hybrid" and encoding["draws"] == DRAWS and encoding["head"] == HEAD and manifest["k"] == HEAD + DRAWS
    assert manifest["format_version"] == 3  # a reader from before hybrid storage refuses it rather than misreading the counts
    model = AutoModelForCausalLM.from_pretrained(tiny_teacher, dtype=torch.float32).eval()
    drawn, expected, variance = 0.0, 0.0, 0.0
    for row in cache_rows(hybrid_cache):
        ids, start = row["input_ids"], row["response_start"]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)[start - 1 : len(ids) - 1]
        for j, (listed, values, counts) in enumerate(zip(row["topk_ids"], row["topk_logprobs"], row["counts"])):
            head = [i for i, c in zip(listed, counts) if c == 0]
            assert len(head) == HEAD and sum(counts) == DRAWS
            ranked = logprobs[j].sort(descending=True).values
            assert (logprobs[j, head] >= ranked[HEAD - 1] - 1e-5).all()  # the forward's top-h (up to float ties)
            error = torch.tensor(values).exp().sqrt() - logprobs[j, listed].exp().sqrt()
            assert error.abs().max() <= encoding["sqrt_step"]
            p = logprobs[j].exp().double()
            p[head] = 0
            best = int(p.argmax())  # the tail's mode: how often it was drawn, over the whole cache
            drawn += counts[listed.index(best)] if best in listed else 0
            share = (p[best] / p.sum()).item()
            expected, variance = expected + DRAWS * share, variance + DRAWS * share * (1 - share)
    assert abs(drawn - expected) < 5 * variance**0.5


def test_hybrid_cache_is_the_same_from_two_workers_and_after_a_resume(tmp_path, hybrid_cache, tiny_teacher, prepared):
    from conftest import cache_rows, tiny_settings

    out, teacher = tmp_path / "cache", resolve_teacher(str(tiny_teacher), tiny_teacher)
    settings = tiny_settings(draws=DRAWS, head=HEAD)
    assert run_teacher(prepared, teacher, out, settings, worker_index=1, num_workers=2) is None
    assert run_teacher(prepared, teacher, out, settings, worker_index=0, num_workers=2).document == read_manifest(hybrid_cache)
    assert cache_rows(out) == cache_rows(hybrid_cache)
    manifest = read_manifest(out)
    (out / manifest["splits"]["train"]["shards"][0]["file"]).unlink()  # a crash lost a shard: a rerun writes it again
    (out / "manifest.json").unlink()
    assert run_teacher(prepared, teacher, out, settings).document == manifest and cache_rows(out) == cache_rows(hybrid_cache)


def test_hybrid_cache_verifies_inspects_converts_and_trains_a_student(tmp_path, hybrid_cache):
    from pipeline.cache.codec import CacheEncoding
    from pipeline.cache.convert import convert_cache
    from pipeline.cache.summary import format_summary, summarize_cache
    from pipeline.cache.verify import verify_cache

    assert verify_cache(hybrid_cache) == []
    assert f"exact top-{HEAD} plus {DRAWS} draws" in format_summary(summarize_cache(hybrid_cache))
    assert f"0 marks the position's {HEAD} exact head ids" in (hybrid_cache / "README.md").read_text()
    with pytest.raises(PipelineError, match="hybrid caches need the compact encoding"):
        convert_cache(hybrid_cache, tmp_path / "float32", CacheEncoding(encoding="float32"))
    converted = convert_cache(hybrid_cache, tmp_path / "coarser", CacheEncoding(sqrt_step=0.05))
    assert converted.storage == Hybrid(draws=DRAWS, head=HEAD) and verify_cache(tmp_path / "coarser") == []
    student = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 256}
    with pytest.raises(PipelineError, match="is a hybrid cache: it supports student.loss forward_kl only"):
        train_student(hybrid_cache, StudentSettings(model=student, loss="jsd", epochs=1), tmp_path / "refused")
    before = student_agreement(build_student(student, 320, seed=0).eval(), Cache.open(hybrid_cache))
    train_student(hybrid_cache, StudentSettings(model=student, alpha=1.0, epochs=15, batch_size=4, lr=1e-2, warmup_steps=2), tmp_path / "student")
    after = student_agreement(load_causal_lm(tmp_path / "student"), Cache.open(hybrid_cache))
    assert after["kl_to_teacher"] < 0.7 * before["kl_to_teacher"]


def test_head_without_draws_or_as_large_as_the_vocabulary_is_refused(tmp_path, tiny_teacher, prepared):
    from conftest import tiny_settings

    teacher = resolve_teacher(str(tiny_teacher), tiny_teacher)
    with pytest.raises(PipelineError, match="teacher.head: 4 needs teacher.draws"):
        run_teacher(prepared, teacher, tmp_path / "cache", tiny_settings(head=4))
    with pytest.raises(PipelineError, match="teacher.head: 320 leaves no ids to draw from"):
        run_teacher(prepared, teacher, tmp_path / "cache", tiny_settings(head=320, draws=4))
    assert not (tmp_path / "cache").exists()


def test_kd_teacher_head_option_writes_a_hybrid_cache(tmp_path, tiny_teacher, prepared):
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tmp_path / "hybrid"
    args = ["teacher", "--model", str(tiny_teacher), "--prepared", str(prepared), "--out", str(out), "--draws", "5", "--head", "3", "--max-new-tokens", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    encoding = read_manifest(out)["encoding"]
    assert encoding["storage"] == "hybrid" and encoding["draws"] == 5 and encoding["head"] == 3
    assert CliRunner().invoke(app, ["verify", str(out)]).exit_code == 0


def test_systematic_draws_are_unbiased_with_less_variance_than_independent_ones():
    """Each id drawn N p_i times in expectation (so the estimator stays unbiased), floor or ceil of it every time."""
    teacher, student = teacher_and_student()
    samples = draw_teacher_samples(teacher.expand(20_000, V), 8, torch.Generator().manual_seed(0), sampling="systematic")
    counts = torch.zeros(20_000, V, dtype=torch.float64)
    counts[torch.from_numpy(np.repeat(np.arange(20_000), samples.entries)).long(), torch.from_numpy(samples.ids).long()] = torch.from_numpy(samples.counts).double()
    expected = 8 * teacher.exp()
    assert ((counts >= expected.floor()) & (counts <= expected.ceil())).all()
    assert ((counts.mean(0) - expected).abs() <= 5 * counts.std(0) / 20_000**0.5 + 1e-9).all()
    for head in (0, 4):
        iid = hybrid_estimates(teacher, student, head, 8, 5_000, seed=1)[1]
        ids, counts, logprobs = padded_samples(draw_teacher_samples(teacher.expand(5_000, V), 8, torch.Generator().manual_seed(1), head, "systematic"))
        logits = student.expand(5_000, V).clone().requires_grad_(True)
        kl = sampled_forward_kl(logprobs.double(), counts, F.log_softmax(logits, -1).gather(-1, ids))
        (systematic,) = torch.autograd.grad(kl.sum(), logits)
        dense_grad = dense_kl_and_grad(teacher, student)[1]
        assert (systematic.mean(0) - dense_grad).abs().max() < 5 * (systematic.std(0).max() / 5_000**0.5)
        assert systematic.var(0).sum() < 0.6 * iid.var(0).sum()
