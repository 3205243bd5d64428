import pytest
import torch
import torch.nn.functional as F

from pipeline.losses import distillation_loss, sparse_forward_kl

V = 50


def dense_kl(teacher_logits, student_logits, temperature):
    teacher = F.log_softmax(teacher_logits / temperature, -1)
    student = F.log_softmax(student_logits / temperature, -1)
    return (teacher.exp() * (teacher - student)).sum(-1)


def random_pair(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(n, V, generator=g, dtype=torch.float64) * 3
    student = (torch.randn(n, V, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    return teacher, student


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_full_vocab_top_k_equals_dense_kl_and_gradient(temperature):
    teacher, student = random_pair()
    top = F.log_softmax(teacher, -1).topk(V, dim=-1)
    sparse = sparse_forward_kl(student, top.indices, top.values, temperature)
    (sparse_grad,) = torch.autograd.grad(sparse.sum(), student)
    dense = dense_kl(teacher, student, temperature)
    (dense_grad,) = torch.autograd.grad(dense.sum(), student)
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=0)
    torch.testing.assert_close(sparse_grad, dense_grad, atol=1e-5, rtol=0)


def test_tail_bucket_equals_dense_kl_on_bucketed_distributions():
    """With k < V, the loss is the exact KL between the two distributions folded onto top-k + rest."""
    teacher, student = random_pair(seed=1)
    k = 5
    t_lp, s_lp = F.log_softmax(teacher, -1), F.log_softmax(student, -1)
    top = t_lp.topk(k, dim=-1)
    rest = torch.ones_like(t_lp, dtype=torch.bool).scatter(-1, top.indices, False)

    def fold(lp):
        return torch.cat([lp.gather(-1, top.indices), torch.logsumexp(lp.masked_fill(~rest, -torch.inf), -1, keepdim=True)], -1)

    t_b, s_b = fold(t_lp), fold(s_lp)
    expected = (t_b.exp() * (t_b - s_b)).sum(-1)
    torch.testing.assert_close(sparse_forward_kl(student, top.indices, top.values), expected, atol=1e-10, rtol=0)


def test_zero_when_student_equals_teacher_and_positive_otherwise():
    teacher, student = random_pair(seed=2)
    top = F.log_softmax(teacher, -1).topk(3, dim=-1)
    assert sparse_forward_kl(teacher, top.indices, top.values).abs().max() < 1e-10
    assert (sparse_forward_kl(student, top.indices, top.values) > 0).all()


def test_k_equals_one_is_binary_kl():
    teacher, student = random_pair(seed=3)
    top = F.log_softmax(teacher, -1).topk(1, dim=-1)
    p = top.values[:, 0].exp()
    q = F.softmax(student, -1).gather(-1, top.indices)[:, 0]
    expected = p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()
    torch.testing.assert_close(sparse_forward_kl(student, top.indices, top.values), expected)


def test_all_mass_in_top_k_is_finite_with_finite_gradient():
    student = torch.randn(4, V, dtype=torch.float32, requires_grad=True)
    ids = torch.arange(3).expand(4, 3)
    logprobs = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).expand(4, 3)  # tail mass exactly 0
    loss = sparse_forward_kl(student, ids, logprobs).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


def test_mix_weights_terms():
    teacher, student = random_pair(seed=4)
    top = F.log_softmax(teacher, -1).topk(10, dim=-1)
    targets = teacher.argmax(-1)
    terms = distillation_loss(student, targets, top.indices, top.values, alpha=0.3, temperature=2.0)
    kl = sparse_forward_kl(student, top.indices, top.values, 2.0).mean()
    torch.testing.assert_close(terms["loss"], 0.3 * 4.0 * kl + 0.7 * F.cross_entropy(student, targets))
