import math

import pytest
import torch
import torch.nn.functional as F

from bench.memory import peak_tensor_bytes
from pipeline.errors import PipelineError
from pipeline.lm.chunked_loss import ROW_BLOCK, chunked_distillation_loss
from pipeline.lm.losses import DIVERGENCES, TAILS, LossSpec, distillation_loss, sparse_forward_kl

V, H = 50, 12
SETTINGS = [("forward_kl", {}), ("reverse_kl", {}), ("jsd", {"beta": 0.5}), ("jsd", {"beta": 0.2}), ("skew_kl", {"skew": 0.1}), ("tvd", {})]


def dense_divergence(p, q, spec):
    """The divergences written independently, on probabilities over the whole support."""
    if spec.loss == "forward_kl":
        return (p * (p / q).log()).sum(-1)
    if spec.loss == "reverse_kl":
        return (q * (q / p).log()).sum(-1)
    if spec.loss == "jsd":
        m = spec.beta * p + (1 - spec.beta) * q
        return spec.beta * (p * (p / m).log()).sum(-1) + (1 - spec.beta) * (q * (q / m).log()).sum(-1)
    if spec.loss == "skew_kl":
        return (p * (p / (spec.skew * p + (1 - spec.skew) * q)).log()).sum(-1)
    return 0.5 * (p - q).abs().sum(-1)


def dense_loss(teacher_logits, student_logits, targets, spec):
    """Reference with the teacher's full distribution: alpha * T^2 * D(p_T, q_T) + (1 - alpha) * CE."""
    p = F.softmax(teacher_logits / spec.temperature, -1)
    q = F.softmax(student_logits[: len(teacher_logits)] / spec.temperature, -1)
    kd = dense_divergence(p, q, spec).mean()
    ce = F.cross_entropy(student_logits, targets)
    return spec.alpha * spec.temperature**2 * kd + (1 - spec.alpha) * ce


def problem(n=7, extra=0, seed=0, dtype=torch.float64):
    """Teacher logits for n cached positions; student hidden states and output layer for n + extra positions."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(n, V, generator=g, dtype=dtype) * 3
    hidden = torch.randn(n + extra, H, generator=g, dtype=dtype).requires_grad_(True)
    weight = (torch.randn(V, H, generator=g, dtype=dtype) * 0.6).requires_grad_(True)
    targets = torch.randint(0, V, (n + extra,), generator=g)
    return teacher, hidden, weight, targets


def both_paths(hidden, weight, targets, top, spec, chunk=3):
    """Loss and gradients (hidden, weight) from the full-logit path and the chunked training path."""
    results = []
    for compute in (
        lambda: distillation_loss(F.linear(hidden, weight), targets, top.indices, top.values, spec),
        lambda: chunked_distillation_loss(hidden, weight, None, targets, top.indices, top.values, spec, chunk),
    ):
        terms = compute()
        results.append((terms, torch.autograd.grad(terms["loss"], (hidden, weight))))
    return results


@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("divergence,extra", SETTINGS)
def test_full_vocab_top_k_equals_dense_loss_values_and_gradients(divergence, extra, temperature, tail):
    spec = LossSpec(loss=divergence, tail=tail, alpha=0.7, temperature=temperature, **extra)
    teacher, hidden, weight, targets = problem()
    top = F.log_softmax(teacher, -1).topk(V, dim=-1)
    expected = dense_loss(teacher, F.linear(hidden, weight), targets, spec)
    expected_grads = torch.autograd.grad(expected, (hidden, weight))
    for terms, grads in both_paths(hidden, weight, targets, top, spec):
        torch.testing.assert_close(terms["loss"], expected, atol=1e-5, rtol=0)
        for grad, expected_grad in zip(grads, expected_grads):
            torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=0)


def fold(logprobs, ids):
    """A full distribution folded onto the given ids plus one bucket for everything else."""
    rest = torch.ones_like(logprobs, dtype=torch.bool).scatter(-1, ids, False)
    return torch.cat([logprobs.gather(-1, ids), torch.logsumexp(logprobs.masked_fill(~rest, -torch.inf), -1, keepdim=True)], -1)


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("divergence,extra", SETTINGS)
def test_top_k_is_the_exact_divergence_of_the_folded_or_truncated_distributions(divergence, extra, k):
    """bucket: teacher and student folded onto top-k + rest; renormalize: both truncated to the top-k."""
    teacher, hidden, weight, targets = problem(seed=1)
    t_lp, s_lp = F.log_softmax(teacher, -1), F.log_softmax(F.linear(hidden, weight), -1)
    top = t_lp.topk(k, dim=-1)
    folded = dense_divergence(fold(t_lp, top.indices).exp(), fold(s_lp, top.indices).exp(), LossSpec(loss=divergence, **extra))
    truncated = dense_divergence(F.softmax(t_lp.gather(-1, top.indices), -1), F.softmax(s_lp.gather(-1, top.indices), -1), LossSpec(loss=divergence, **extra))
    for tail, expected in (("bucket", folded), ("renormalize", truncated)):
        spec = LossSpec(loss=divergence, tail=tail, alpha=1.0, **extra)
        for terms, _ in both_paths(hidden, weight, targets, top, spec):
            torch.testing.assert_close(terms["kd"], expected.mean(), atol=1e-10, rtol=0)


@pytest.mark.parametrize("divergence,extra", SETTINGS)
def test_k_equals_one(divergence, extra):
    """Bucketed, top-1 is a two-outcome divergence that still teaches; renormalised, it carries no signal."""
    teacher, hidden, weight, targets = problem(seed=3)
    top = F.log_softmax(teacher, -1).topk(1, dim=-1)
    bucket = both_paths(hidden, weight, targets, top, LossSpec(loss=divergence, tail="bucket", alpha=1.0, **extra))
    renormalized = both_paths(hidden, weight, targets, top, LossSpec(loss=divergence, tail="renormalize", alpha=1.0, **extra))
    for (terms, grads), (flat_terms, flat_grads) in zip(bucket, renormalized):
        assert terms["kd"] > 0 and grads[0].abs().max() > 1e-3
        assert flat_terms["kd"].abs() < 1e-12 and all(g.abs().max() < 1e-12 for g in flat_grads)


@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("divergence,extra", SETTINGS)
def test_all_mass_in_top_k_is_finite_with_finite_gradient(divergence, extra, tail):
    _, hidden, weight, targets = problem(n=4, seed=4, dtype=torch.float32)
    ids = torch.arange(3).expand(4, 3)
    logprobs = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).expand(4, 3)  # tail mass exactly 0
    top = torch.return_types.topk((logprobs, ids))
    for temperature in (1.0, 2.0):
        for terms, grads in both_paths(hidden, weight, targets, top, LossSpec(loss=divergence, tail=tail, temperature=temperature, **extra)):
            assert torch.isfinite(terms["loss"]) and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("divergence,extra", SETTINGS)
def test_zero_when_student_equals_teacher_and_positive_otherwise(divergence, extra, tail):
    teacher, hidden, weight, targets = problem(seed=2)
    top = F.log_softmax(teacher, -1).topk(3, dim=-1)
    spec = LossSpec(loss=divergence, tail=tail, alpha=1.0, **extra)
    same = distillation_loss(teacher, targets, top.indices, top.values, spec)
    other = distillation_loss(F.linear(hidden, weight), targets, top.indices, top.values, spec)
    assert same["kd"].abs() < 1e-10 and other["kd"] > 1e-3


@pytest.mark.parametrize("chunk", [1, 4, 1000])
@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("divergence,extra", SETTINGS)
def test_chunked_equals_unchunked_with_ce_only_positions_and_temperature(divergence, extra, tail, chunk):
    """The training path (chunks, in-place gradient, prompt rows scored by CE only) against plain autograd."""
    teacher, hidden, weight, targets = problem(n=9, extra=5, seed=5)
    bias = torch.randn(V, dtype=torch.float64, requires_grad=True)
    top = F.log_softmax(teacher, -1).topk(6, dim=-1)
    spec = LossSpec(loss=divergence, tail=tail, alpha=0.6, temperature=1.7, **extra)
    expected = distillation_loss(F.linear(hidden, weight, bias), targets, top.indices, top.values, spec)
    expected_grads = torch.autograd.grad(expected["loss"], (hidden, weight, bias))
    actual = chunked_distillation_loss(hidden, weight, bias, targets, top.indices, top.values, spec, chunk)
    for name in ("loss", "kd", "ce"):
        torch.testing.assert_close(actual[name], expected[name], atol=1e-12, rtol=0)
    for grad, expected_grad in zip(torch.autograd.grad(actual["loss"], (hidden, weight, bias)), expected_grads):
        torch.testing.assert_close(grad, expected_grad, atol=1e-12, rtol=0)


def test_chunked_loss_without_grad_gives_the_same_terms():
    teacher, hidden, weight, targets = problem(extra=2, seed=6)
    top = F.log_softmax(teacher, -1).topk(4, dim=-1)
    spec = LossSpec(loss="jsd", temperature=2.0)
    with torch.no_grad():
        evaluated = chunked_distillation_loss(hidden, weight, None, targets, top.indices, top.values, spec, 2)
    trained = chunked_distillation_loss(hidden, weight, None, targets, top.indices, top.values, spec, 2)
    assert evaluated["loss"].grad_fn is None
    torch.testing.assert_close(evaluated["loss"], trained["loss"].detach())


def test_mix_weights_terms_and_prompt_rows_count_for_ce_only():
    teacher, hidden, weight, targets = problem(n=6, extra=4, seed=7)
    logits = F.linear(hidden, weight)
    top = F.log_softmax(teacher, -1).topk(10, dim=-1)
    terms = distillation_loss(logits, targets, top.indices, top.values, LossSpec(alpha=0.3, temperature=2.0))
    kl = sparse_forward_kl(logits[:6], top.indices, top.values, 2.0).mean()
    torch.testing.assert_close(terms["kd"], kl)
    torch.testing.assert_close(terms["loss"], 0.3 * 4.0 * kl + 0.7 * F.cross_entropy(logits, targets))


def test_generalized_jsd_endpoints_are_forward_and_reverse_kl():
    teacher, hidden, weight, targets = problem(seed=8)
    logits = F.linear(hidden, weight)
    top = F.log_softmax(teacher, -1).topk(5, dim=-1)

    def kd(divergence, **extra):
        return distillation_loss(logits, targets, top.indices, top.values, LossSpec(loss=divergence, alpha=1.0, **extra))["kd"]

    torch.testing.assert_close(kd("jsd", beta=0.0), kd("forward_kl"))
    torch.testing.assert_close(kd("jsd", beta=1.0), kd("reverse_kl"))
    torch.testing.assert_close(kd("skew_kl", skew=0.0), kd("forward_kl"))
    assert kd("skew_kl", skew=0.1) <= -math.log(0.1)
    assert 0 < kd("tvd") <= 1


def test_registry_and_settings_are_checked():
    assert set(DIVERGENCES) == {"forward_kl", "reverse_kl", "jsd", "skew_kl", "tvd"}
    for bad, message in (
        ({"loss": "kl"}, "loss: 'kl' is not one of"),
        ({"tail": "drop"}, "tail: 'drop' is not one of"),
        ({"alpha": 1.5}, "alpha"),
        ({"temperature": 0.0}, "temperature"),
        ({"beta": -0.1}, "beta"),
        ({"skew": 1.0}, "skew"),
    ):
        with pytest.raises(PipelineError, match=message):
            LossSpec(**bad)


def test_sparse_forward_kl_full_vocab_equals_dense_kl():
    teacher, hidden, weight, _ = problem(seed=9)
    logits = F.linear(hidden, weight)
    top = F.log_softmax(teacher, -1).topk(V, dim=-1)
    dense = (F.softmax(teacher, -1) * (F.log_softmax(teacher, -1) - F.log_softmax(logits, -1))).sum(-1)
    torch.testing.assert_close(sparse_forward_kl(logits, top.indices, top.values), dense, atol=1e-10, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_chunked_loss_holds_one_vocabulary_buffer_per_chunk(temperature):
    """Peak tensor memory of forward + backward: one [chunk, V] buffer, row-block temporaries and the
    output layer's own gradients; plain autograd over all positions holds several [N, V] tensors."""
    vocab, hidden_size, n, chunk = 32768, 32, 256, 32
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, hidden_size, generator=g, requires_grad=True)
    weight = torch.randn(vocab, hidden_size, generator=g, requires_grad=True)
    targets = torch.randint(0, vocab, (n,), generator=g)
    top = F.log_softmax(torch.randn(n, vocab, generator=g), -1).topk(20, dim=-1)
    ids, values = top.indices.clone(), top.values.clone()
    spec = LossSpec(loss="jsd", temperature=temperature)

    def step():
        chunked_distillation_loss(hidden, weight, None, targets, ids, values, spec, chunk)["loss"].backward()

    bound = 4 * (chunk * vocab + 3 * ROW_BLOCK * vocab + weight.numel() + hidden.numel()) + 2**20
    assert peak_tensor_bytes(step) <= bound
    hidden.grad = weight.grad = None
    assert peak_tensor_bytes(lambda: distillation_loss(F.linear(hidden, weight), targets, ids, values, spec)["loss"].backward()) > 3 * 4 * n * vocab


@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("temperature", [1.0, 0.5])
@pytest.mark.parametrize("divergence,extra", SETTINGS)
def test_padded_entries_change_neither_loss_nor_gradients(divergence, extra, temperature, tail):
    """Positions listing fewer ids (compact and sampled caches) are padded with id 0 and log-prob -inf:
    the loss and its gradients equal those of the unpadded positions, with no NaN (0 * log 0)."""
    spec = LossSpec(loss=divergence, tail=tail, alpha=0.7, temperature=temperature, **extra)
    teacher, hidden, weight, targets = problem(n=4, extra=2)
    top = F.log_softmax(teacher, -1).topk(6, dim=-1)
    lengths = [6, 3, 1, 5]  # entries listed per position
    reference = []
    for row, n in enumerate(lengths):
        single = type(top)((top.values[row : row + 1, :n], top.indices[row : row + 1, :n]))
        reference.append(single)
    values = torch.full((4, 8), -torch.inf, dtype=top.values.dtype)
    ids = torch.zeros((4, 8), dtype=torch.long)
    for row, n in enumerate(lengths):
        values[row, :n], ids[row, :n] = top.values[row, :n], top.indices[row, :n]
    padded = type(top)((values, ids))
    expected_kd = sum(
        distillation_loss(
            F.linear(hidden[row : row + 1], weight), targets[row : row + 1], single.indices, single.values, LossSpec(loss=divergence, tail=tail, alpha=1.0, temperature=temperature, **extra)
        )["kd"]
        for row, single in enumerate(reference)
    ) / len(lengths)
    for terms, grads in both_paths(hidden, weight, targets, padded, spec):
        assert all(torch.isfinite(g).all() for g in grads)
        torch.testing.assert_close(terms["kd"], expected_kd, atol=1e-10, rtol=0)
    trimmed = [both_paths(hidden, weight, targets, type(top)((values[:, :6], ids[:, :6])), spec)]
    for (terms, grads), (wide_terms, wide_grads) in zip(trimmed[0], both_paths(hidden, weight, targets, padded, spec)):
        torch.testing.assert_close(wide_terms["loss"], terms["loss"], atol=1e-12, rtol=0)
        for grad, wide in zip(grads, wide_grads):
            torch.testing.assert_close(wide, grad, atol=1e-12, rtol=0)
    full = both_paths(hidden, weight, targets, type(top)((top.values[:, :6], top.indices[:, :6])), spec)
    assert not torch.isclose(full[0][0]["kd"], expected_kd)  # the padding did remove entries


def test_sparse_forward_kl_ignores_padding():
    teacher, hidden, weight, _ = problem(n=3)
    top = F.log_softmax(teacher, -1).topk(4, dim=-1)
    logits = F.linear(hidden, weight).detach()
    padded_values = torch.cat([top.values, torch.full((3, 2), -torch.inf, dtype=top.values.dtype)], -1)
    padded_ids = torch.cat([top.indices, torch.zeros((3, 2), dtype=torch.long)], -1)
    torch.testing.assert_close(sparse_forward_kl(logits, padded_ids, padded_values), sparse_forward_kl(logits, top.indices, top.values))
