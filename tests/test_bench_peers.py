"""bench.peers against independent computations: dense KL, bf16 rounding, exact fits, quantiser bounds, hand byte counts."""

import math
from dataclasses import replace

import pytest
import torch

from bench.peers import PEER_SCHEMES, PeerCache, PeerScheme, ResidualBin, bytes_per_position, distillkit_layout, distillkit_roundtrip, encode_peer, index_bits, peer_loss

V, P = 300, 64


@pytest.fixture
def teacher() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.log_softmax(3 * torch.randn(P, V, generator=generator), dim=-1)


@pytest.fixture
def student() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return 2 * torch.randn(P, V, generator=generator)


def dense_kl(teacher_logprobs: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    p = torch.softmax(teacher_logprobs.double() / temperature, dim=-1)
    q = torch.softmax(student_logits.double() / temperature, dim=-1)
    return (p * (p / q).log()).sum(-1)


def exact_distillkit(k: int, **fields) -> PeerScheme:
    return PeerScheme(f"exact-{k}", "distillkit", k=k, exact_k=k, exact_dtype=torch.float32, **fields)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("scheme", [exact_distillkit(V), PeerScheme("axolotl-all", "axolotl", k=V)], ids=["distillkit", "axolotl"])
def test_whole_vocabulary_exact_values_give_the_dense_kl(teacher, student, scheme, temperature):
    cache = encode_peer(scheme, teacher, V)
    assert torch.equal(cache.logprobs, teacher.gather(-1, cache.ids))
    torch.testing.assert_close(peer_loss(scheme, student, cache, temperature).double(), dense_kl(teacher, student, temperature), rtol=1e-4, atol=1e-5)


def test_distillkit_zero_renormalises_the_teacher_not_the_student(teacher, student):
    scheme, t = exact_distillkit(20), 2.0
    cache = encode_peer(scheme, teacher, V)
    top = teacher.double().topk(20)
    assert torch.equal(cache.ids, top.indices)
    q = torch.softmax(top.values / t, dim=-1)
    s = torch.log_softmax(student.double() / t, dim=-1).gather(-1, top.indices)
    torch.testing.assert_close(peer_loss(scheme, student, cache, t).double(), (q * (q.log() - s)).sum(-1), rtol=1e-4, atol=1e-5)


def test_distillkit_symmetric_uniform_adds_the_missing_mass_term(teacher, student):
    scheme = exact_distillkit(20, missing="symmetric_uniform")
    cache = encode_peer(scheme, teacher, V)
    p = teacher.double().gather(-1, cache.ids).exp()
    s = torch.softmax(student.double(), dim=-1).gather(-1, cache.ids)
    p_out, s_out = 1 - p.sum(-1), 1 - s.sum(-1)
    expected = (p * (p / s).log()).sum(-1) + p_out * (p_out / s_out).log()
    torch.testing.assert_close(peer_loss(scheme, student, cache, 1.0).double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_axolotl_is_kl_between_renormalised_top_k(teacher, student, temperature):
    scheme = PEER_SCHEMES["axolotl-top20"]
    cache = encode_peer(scheme, teacher, V)
    top = teacher.double().topk(scheme.k)
    assert torch.equal(cache.ids, top.indices) and torch.equal(cache.logprobs, top.values.float())
    q = torch.softmax(top.values / temperature, dim=-1)  # p**(1/T) renormalised = softmax(log p / T) over the k ids
    r = torch.softmax(student.double().gather(-1, top.indices) / temperature, dim=-1)
    torch.testing.assert_close(peer_loss(scheme, student, cache, temperature).double(), (q * (q / r).log()).sum(-1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["distillkit-128", "distillkit-budget"])
def test_distillkit_head_is_the_bfloat16_rounding_of_the_teacher(name):
    scheme = PEER_SCHEMES[name]
    full = torch.log_softmax(3 * torch.randn(P, 2000, generator=torch.Generator().manual_seed(2)), dim=-1)
    cache = encode_peer(scheme, full, 2000)
    top = full.topk(scheme.k)
    assert torch.equal(cache.ids, top.indices)
    assert torch.equal(cache.logprobs[:, : scheme.exact_k], top.values[:, : scheme.exact_k].bfloat16().float())
    assert cache.logprobs.dtype == torch.float32 and cache.logprobs.shape == (P, scheme.k)


def test_tail_on_the_fitted_curve_is_rebuilt_closely():
    """A tail that is exactly c0 + c1 t + c2 sqrt(t) comes back up to float32 rounding (the budget terms)."""
    scheme = replace(PEER_SCHEMES["distillkit-budget"], exact_dtype=torch.float32)
    t = torch.arange(scheme.k - scheme.exact_k, dtype=torch.float64)
    tails = torch.stack([-(3 + a) - 0.05 * b * t - 0.8 * torch.sqrt(t) for a, b in [(0, 1), (1, 2), (2, 0.5)]])
    values = torch.cat([torch.full((3, 1), -0.5, dtype=torch.float64), tails], dim=-1).float()
    rebuilt = distillkit_roundtrip(values, scheme)
    assert (rebuilt - values).abs().max() < 1e-4


def test_budget_fit_matches_an_independent_least_squares(teacher):
    scheme = replace(PEER_SCHEMES["distillkit-budget"], exact_dtype=torch.float32)
    values = teacher.topk(scheme.k).values
    tail = values[:, 1:].double()
    t = torch.arange(tail.shape[-1], dtype=torch.float64)
    x = torch.stack([torch.ones_like(t), t, t.sqrt()], dim=-1)
    fitted = (x @ torch.linalg.lstsq(x, tail.T).solution).T
    torch.testing.assert_close(distillkit_roundtrip(values, scheme)[:, 1:].double(), fitted, atol=2e-4, rtol=0)


def test_tail_error_falls_with_more_residual_bits_and_stays_within_one_step(teacher):
    base = PeerScheme("bins", "distillkit", k=40, exact_k=4, exact_dtype=torch.float32, polynomial_terms=(0, 1, "sqrt"))
    values = teacher.topk(40).values
    errors = []
    for bits in (2, 4, 8):
        scheme = replace(base, residual_bins=(ResidualBin(torch.float32, bits, 36),))
        rebuilt = distillkit_roundtrip(values, scheme)
        residual = values[:, 4:] - distillkit_roundtrip(values, base)[:, 4:]
        step = residual.abs().amax(-1, keepdim=True) / 2 ** (bits - 1)  # one quantisation step (the top code is clamped)
        error = (rebuilt[:, 4:] - values[:, 4:]).abs()
        assert (error <= step * 1.001 + 1e-5).all()
        errors.append(error.mean().item())
    assert errors[0] > errors[1] > errors[2]
    no_bins = (distillkit_roundtrip(values, base) - values)[:, 4:].abs().mean().item()
    assert errors[0] < no_bins


def test_delta_encoding_and_error_diffusion_round_trip(teacher):
    values = teacher.topk(30).values
    delta = exact_distillkit(30, delta_encoding=True)
    torch.testing.assert_close(distillkit_roundtrip(values, delta), values, atol=1e-4, rtol=0)
    diffused = PeerScheme("ed", "distillkit", k=30, exact_k=2, polynomial_terms=(0, 1), residual_bins=(ResidualBin(torch.float16, 4, 28),), error_diffusion=True)
    rebuilt = distillkit_roundtrip(values, diffused)
    assert rebuilt.shape == values.shape and torch.isfinite(rebuilt).all()


def test_bytes_per_position_hand_count():
    scheme = PeerScheme("small", "distillkit", k=10, exact_k=3, exact_dtype=torch.bfloat16, polynomial_terms=(0, 1, "sqrt"), residual_bins=(ResidualBin(torch.float16, 3, 5),))
    assert index_bits(V) == 9
    # 3 bf16 values, 3 float32 coefficients, a float16 scale + 5 x 3 bits in 2 bytes, 10 ids x 9 bits in 12 bytes
    assert distillkit_layout(scheme, V) == {"exact": 6, "coefficients": 12, "bin0": 2 + 2, "ids": 12}
    assert bytes_per_position(scheme, V) == 34
    # DistributionQuantizationConfig.total_bits() / 8, written out: bins and the value block rounded to bytes
    value_bits = 3 * 16 + 3 * 32 + math.ceil((16 + 5 * 3) / 8) * 8
    assert bytes_per_position(scheme, V) == math.ceil(value_bits / 8) + math.ceil(10 * 9 / 8)


def test_published_settings_sizes():
    vocab = 49_152  # 16-bit ids
    assert bytes_per_position(PEER_SCHEMES["distillkit-128"], vocab) == 16 * 2 + 6 * 4 + 128 * 2 == 312
    assert bytes_per_position(PEER_SCHEMES["distillkit-budget"], vocab) == 1 * 2 + 3 * 4 + 50 * 2 == 114  # the README's figure
    assert bytes_per_position(PEER_SCHEMES["distillkit-128"], 151_936) == 56 + 288  # Qwen vocabulary, 18-bit ids
    assert bytes_per_position(PEER_SCHEMES["axolotl-topk"], vocab) == 64 * 8
    cache = encode_peer(PEER_SCHEMES["distillkit-budget"], torch.log_softmax(torch.randn(4, V), -1), V)
    assert cache.bytes_per_position == bytes_per_position(PEER_SCHEMES["distillkit-budget"], V)


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="polynomial_terms or residual_bins"):
        PeerScheme("x", "distillkit", k=10, exact_k=2)
    with pytest.raises(ValueError, match="more than k - exact_k"):
        PeerScheme("x", "distillkit", k=10, exact_k=2, residual_bins=(ResidualBin(torch.float16, 4, 9),))
    with pytest.raises(ValueError, match="above the vocabulary"):
        encode_peer(PEER_SCHEMES["distillkit-128"], torch.log_softmax(torch.randn(2, 100), -1), 100)


def test_gradient_flows_and_chunks_agree(teacher, student):
    import bench.peers as peers

    for name in ("distillkit-budget", "axolotl-top20"):
        scheme = PEER_SCHEMES[name]
        cache = encode_peer(scheme, teacher, V)
        logits = student.clone().requires_grad_()
        whole = peer_loss(scheme, logits, cache, 2.0)
        whole.sum().backward()
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
        rows, peers.ROWS = peers.ROWS, 7
        try:
            chunked = peer_loss(scheme, student, PeerCache(cache.ids, cache.logprobs, cache.bytes_per_position), 2.0)
        finally:
            peers.ROWS = rows
        torch.testing.assert_close(chunked, whole.detach())
