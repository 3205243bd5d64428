"""The training loss with the output layer folded in, computed chunk by chunk over positions.

With a 50k vocabulary, [positions, V] tensors (logits, log-probs and their gradients) dominate a
small student's memory. Here each chunk's logits are projected into one buffer, turned into
log-probs in place, reduced to the few values the loss needs (`pipeline.losses.sparse_terms`), and
the buffer is then overwritten with the gradient with respect to the logits, derived from the
gradient at those few values. The output layer's input and weight gradients are accumulated at
once, so only one [chunk, V] tensor exists at a time and backward merely hands them over.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from pipeline.losses import LossSpec, combine_terms, loss_weights, sparse_terms

VOCAB_BLOCK = 8192  # columns per step of the in-place passes: temporaries stay a fraction of the buffer


def _logsumexp(values: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Row-wise logsumexp(values * scale), scale > 0, one column block at a time."""
    top = values.amax(dim=-1, keepdim=True)
    total = torch.zeros_like(top)
    for block in values.split(VOCAB_BLOCK, dim=-1):
        total += (block - top).mul_(scale).exp_().sum(-1, keepdim=True)
    return (top * scale + total.log())[:, 0]


def _logit_gradient_(
    logprobs: torch.Tensor,
    targets: torch.Tensor,
    topk_ids: torch.Tensor,
    grad_target: torch.Tensor,
    grad_topk: torch.Tensor,
    tempered_norm: torch.Tensor | None,
    grad_norm: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """Overwrite log-probs [n, V] with d loss / d logits, from the loss's gradient at the gathered values.

    d log p_i / d z_j = [i = j] - p_j; the tempered normaliser s = logsumexp(log p / T) has
    d s / d z_j = (p^T_j - p_j) / T, with p^T the student's tempered distribution.
    """
    cached = len(topk_ids)
    total = grad_target.clone()
    total[:cached] += grad_topk.sum(-1)
    if tempered_norm is None or grad_norm is None:
        logprobs.exp_().mul_(-total[:, None])
    else:
        weight = grad_norm / temperature
        total[:cached] += weight
        for block in logprobs[:cached].split(VOCAB_BLOCK, dim=-1):
            tempered = (block - temperature * tempered_norm[:, None]).div_(temperature).exp_().mul_(weight[:, None])
            block.exp_().mul_(-total[:cached, None]).add_(tempered)
        logprobs[cached:].exp_().mul_(-total[cached:, None])
    logprobs.scatter_add_(-1, targets[:, None], grad_target[:, None])
    logprobs[:cached].scatter_add_(-1, topk_ids, grad_topk)
    return logprobs


def _backprop_head(gradient: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, grads: list[torch.Tensor | None], rows: slice) -> None:
    """Add one chunk's share of the output layer's gradients (hidden, weight, bias) from d loss / d logits."""
    if grads[0] is not None:
        grads[0][rows] = gradient @ weight
    if grads[1] is not None:
        grads[1].addmm_(gradient.T, hidden)
    if grads[2] is not None:
        grads[2] += gradient.sum(0)


def _chunk(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    spec: LossSpec,
    weights: tuple[float, float] | None,
    grads: list[torch.Tensor | None],
    rows: slice,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed divergence and CE of one chunk; given the loss weights, also its gradients, added to `grads`.

    The chunk's [n, V] buffer lives only inside this call, so it is gone before the next chunk's.
    """
    logprobs = F.linear(hidden, weight, bias)
    logprobs.sub_(_logsumexp(logprobs)[:, None])
    cached = len(topk_ids)
    norm = None if spec.temperature == 1 else _logsumexp(logprobs[:cached], 1 / spec.temperature)
    gathered = [logprobs.gather(-1, targets[:, None])[:, 0], logprobs[:cached].gather(-1, topk_ids)]
    if weights is None:
        return sparse_terms(*gathered, norm, topk_logprobs, spec)
    with torch.enable_grad():
        leaves = [value.requires_grad_() for value in gathered + ([] if norm is None else [norm])]
        kd_sum, ce_sum = sparse_terms(leaves[0], leaves[1], None if norm is None else leaves[2], topk_logprobs, spec)
        small = torch.autograd.grad(weights[0] * kd_sum + weights[1] * ce_sum, leaves, materialize_grads=True)
    grad_norm = small[2] if norm is not None else None
    gradient = _logit_gradient_(logprobs, targets, topk_ids, small[0], small[1], norm, grad_norm, spec.temperature)
    _backprop_head(gradient, hidden, weight, grads, rows)
    return kd_sum.detach(), ce_sum.detach()


def _run(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    spec: LossSpec,
    chunk: int,
    need: tuple[bool, bool, bool],
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:
    """Sums over all chunks and, where `need` asks, the gradients of the loss for hidden, weight and bias."""
    weights = loss_weights(len(topk_ids), len(targets), spec) if any(need) else None
    grads: list[torch.Tensor | None] = [
        None if tensor is None or not wanted else (torch.empty_like if i == 0 else torch.zeros_like)(tensor)
        for i, (tensor, wanted) in enumerate(zip((hidden, weight, bias), need))
    ]
    kd_total, ce_total = hidden.new_zeros(()), hidden.new_zeros(())
    for start in range(0, len(targets), chunk):
        rows = slice(start, start + chunk)
        kd_sum, ce_sum = _chunk(hidden[rows], weight, bias, targets[rows], topk_ids[rows], topk_logprobs[rows], spec, weights, grads, rows)
        kd_total, ce_total = kd_total + kd_sum, ce_total + ce_sum
    return kd_total, ce_total, grads


class _ChunkedHeadLoss(torch.autograd.Function):
    """Loss of the output layer + divergence; gradients are computed during forward, chunk by chunk."""

    @staticmethod
    def forward(ctx: Any, hidden, weight, bias, targets, topk_ids, topk_logprobs, spec: LossSpec, chunk: int):  # type: ignore[override]
        need = tuple(ctx.needs_input_grad[:3])
        kd_sum, ce_sum, ctx.grads = _run(hidden, weight, bias, targets, topk_ids, topk_logprobs, spec, chunk, need)
        terms = combine_terms(kd_sum, ce_sum, len(topk_ids), len(targets), spec)
        ctx.mark_non_differentiable(terms["kd"], terms["ce"])
        return terms["loss"], terms["kd"], terms["ce"]

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *unused: torch.Tensor):  # type: ignore[override]
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError("the chunked distillation loss supports one backward per forward")
        return (*(None if g is None else g.mul_(grad_loss) for g in grads), None, None, None, None, None)


def chunked_distillation_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    spec: LossSpec,
    chunk_positions: int | None = None,
) -> dict[str, torch.Tensor]:
    """`pipeline.losses.distillation_loss` of logits = hidden @ weight.T + bias, never holding them whole.

    hidden [N, H] are the output layer's inputs at the scored positions; the first len(topk_ids)
    are cached positions (divergence and CE), any further ones count for CE only. Returns the loss
    (differentiable with respect to hidden, weight and bias) and the two mean terms.
    """
    chunk = max(1, chunk_positions or len(targets))
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias)):
        loss, kd, ce = _ChunkedHeadLoss.apply(hidden, weight, bias, targets, topk_ids, topk_logprobs, spec, chunk)
        return {"loss": loss, "kd": kd, "ce": ce}
    kd_sum, ce_sum, _ = _run(hidden, weight, bias, targets, topk_ids, topk_logprobs, spec, chunk, (False, False, False))
    return combine_terms(kd_sum, ce_sum, len(topk_ids), len(targets), spec)
