"""The training loss with the output layer folded in, computed chunk by chunk over positions.

With a 50k vocabulary, [positions, V] tensors (logits, log-probs and their gradients) dominate a
small student's memory. Here each chunk's logits are projected into one buffer, turned into
log-probs in place, reduced to the few values the loss needs (`pipeline.lm.losses.sparse_terms`), and
the buffer is then overwritten with the gradient with respect to the logits, derived from the
gradient at those few values. The output layer's input and weight gradients are accumulated at
once, so only one [chunk, V] tensor exists at a time and backward merely hands them over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.lm.losses import LossSpec, combine_terms, loss_weights, sparse_terms

ROW_BLOCK = 16  # rows per step of the passes over a buffer: temporaries stay a small fraction of it


@dataclass(frozen=True)
class _OutputLayer:
    """The output layer; under autocast also its weight (and bias) cast once to the autocast dtype (`low`)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    low: tuple[torch.Tensor, torch.Tensor | None] | None


@dataclass(frozen=True)
class _Scored:
    """What the scored positions are compared with: the actual next tokens (all of them) and, for the first
    len(listed_ids), the teacher's listed ids, their log-probs and their draw counts (sampled caches)."""

    targets: torch.Tensor
    listed_ids: torch.Tensor
    listed_logprobs: torch.Tensor
    counts: torch.Tensor | None

    def __getitem__(self, rows: slice) -> _Scored:
        return _Scored(self.targets[rows], self.listed_ids[rows], self.listed_logprobs[rows], None if self.counts is None else self.counts[rows])


def _log_softmax_(logits: torch.Tensor) -> torch.Tensor:
    """log_softmax in place: torch has no log_softmax_, but its kernel accepts the input as `out`
    (full aliasing, the way in-place ops are built), reading each row before writing it."""
    return torch.log_softmax(logits, dim=-1, out=logits)


def _exp_(values: torch.Tensor) -> torch.Tensor:
    """exp in place, inputs raised to at least log(smallest normal float) first: exp with denormal
    results is about 15x slower on CPU (a confident student has many), and probabilities below
    1e-38 move no gradient."""
    return values.clamp_(min=math.log(torch.finfo(values.dtype).tiny)).exp_()


def _row_blocks(*tensors: torch.Tensor) -> zip:
    return zip(*(t.split(ROW_BLOCK) for t in tensors))


def _tempered_norm(logprobs: torch.Tensor, temperature: float, scratch: torch.Tensor) -> torch.Tensor:
    """Row-wise logsumexp(logprobs / T), a few rows at a time through one reused scratch block."""
    norms = logprobs.new_empty(len(logprobs))
    for rows, out in _row_blocks(logprobs, norms):
        top = rows.amax(dim=-1, keepdim=True) / temperature
        out.copy_(top[:, 0] + _exp_(_scaled_shifted(rows, temperature, top, scratch)).sum(-1).log())
    return norms


def _scaled_shifted(rows: torch.Tensor, temperature: float, shift: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """rows / T - shift, written into the scratch block."""
    return torch.div(rows, temperature, out=scratch[: len(rows)]).sub_(shift)


def _logit_gradient_(
    logprobs: torch.Tensor,
    targets: torch.Tensor,
    listed_ids: torch.Tensor,
    grad_target: torch.Tensor,
    grad_topk: torch.Tensor,
    temperature: float,
    tempered: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Overwrite log-probs [n, V] with d loss / d logits, from the loss's gradient at the gathered values.

    d log p_i / d z_j = [i = j] - p_j. At T != 1, `tempered` holds the normaliser
    s = logsumexp(log p / T), the loss's gradient for it and a scratch block; d s / d z_j = (p^T_j - p_j) / T,
    with p^T the student's tempered distribution.
    """
    cached = len(listed_ids)
    total = grad_target.clone()
    total[:cached] += grad_topk.sum(-1)
    if tempered is None:
        _exp_(logprobs).mul_(-total[:, None])
    else:
        norm, grad_norm, scratch = tempered
        weight = grad_norm / temperature
        total[:cached] += weight
        for rows, row_norm, row_weight, row_total in _row_blocks(logprobs[:cached], norm, weight, total[:cached]):
            p_tempered = _exp_(_scaled_shifted(rows, temperature, row_norm[:, None], scratch))
            _exp_(rows).mul_(-row_total[:, None]).addcmul_(p_tempered, row_weight[:, None])
        _exp_(logprobs[cached:]).mul_(-total[cached:, None])
    logprobs.scatter_add_(-1, targets[:, None], grad_target[:, None])
    logprobs[:cached].scatter_add_(-1, listed_ids, grad_topk)
    return logprobs


def _project(hidden: torch.Tensor, head: _OutputLayer) -> torch.Tensor:
    """Logits in float32: the matmul in the autocast dtype when `head.low` holds the weight (and bias) cast to it."""
    if head.low is None:
        return F.linear(hidden, head.weight, head.bias)
    return F.linear(hidden.to(head.low[0].dtype), *head.low).float()


def _backprop_head(gradient: torch.Tensor, hidden: torch.Tensor, head: _OutputLayer, grads: list[torch.Tensor | None], rows: slice) -> None:
    """Add one chunk's share of the output layer's gradients (hidden, weight, bias) from d loss / d logits.

    Under autocast (`low`) the two matmuls run in its dtype and accumulate into the float32 gradients.
    """
    weight, low = head.weight, head.low
    if low is None:
        if grads[0] is not None:
            grads[0][rows] = gradient @ weight
        if grads[1] is not None:
            grads[1].addmm_(gradient.T, hidden)
    else:
        low_gradient = gradient.to(low[0].dtype)
        if grads[0] is not None:
            grads[0][rows] = low_gradient @ low[0]
        if grads[1] is not None:
            grads[1] += low_gradient.T @ hidden.to(low[0].dtype)
    if grads[2] is not None:
        grads[2] += gradient.sum(0)


def _chunk(
    hidden: torch.Tensor, head: _OutputLayer, scored: _Scored, spec: LossSpec, weights: tuple[float, float] | None, grads: list[torch.Tensor | None], rows: slice
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed divergence and CE of one chunk; given the loss weights, also its gradients, added to `grads`.

    The chunk's [n, V] buffer lives only inside this call, so it is gone before the next chunk's.
    """
    targets, listed_ids, listed_logprobs, counts = scored.targets, scored.listed_ids, scored.listed_logprobs, scored.counts
    logprobs = _log_softmax_(_project(hidden, head))
    cached = len(listed_ids)
    scratch = None if spec.temperature == 1 else logprobs.new_empty(min(ROW_BLOCK, cached), logprobs.shape[1])
    norm = None if scratch is None else _tempered_norm(logprobs[:cached], spec.temperature, scratch)
    gathered = [logprobs.gather(-1, targets[:, None])[:, 0], logprobs[:cached].gather(-1, listed_ids)]
    if weights is None:
        return sparse_terms(*gathered, norm, listed_logprobs, spec, counts)
    with torch.enable_grad():
        leaves = [value.requires_grad_() for value in gathered + ([] if norm is None else [norm])]
        kd_sum, ce_sum = sparse_terms(leaves[0], leaves[1], None if norm is None else leaves[2], listed_logprobs, spec, counts)
        small = torch.autograd.grad(weights[0] * kd_sum + weights[1] * ce_sum, leaves, materialize_grads=True)
    tempered = None if norm is None or scratch is None else (norm, small[2], scratch)
    gradient = _logit_gradient_(logprobs, targets, listed_ids, small[0], small[1], spec.temperature, tempered)
    _backprop_head(gradient, hidden, head, grads, rows)
    return kd_sum.detach(), ce_sum.detach()


def _run(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scored: _Scored, spec: LossSpec, chunk: int, need: tuple[bool, bool, bool], totals: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:
    """Sums over all chunks and, where `need` asks, the gradients of the loss for hidden, weight and bias."""
    weights = loss_weights(*totals, spec) if any(need) else None
    head = _OutputLayer(weight, bias, _autocast_copies(hidden, weight, bias))
    grads: list[torch.Tensor | None] = [
        None if tensor is None or not wanted else (torch.empty_like if i == 0 else torch.zeros_like)(tensor) for i, (tensor, wanted) in enumerate(zip((hidden, weight, bias), need))
    ]
    kd_total = ce_total = torch.zeros((), device=hidden.device)
    for start in range(0, len(scored.targets), chunk):
        rows = slice(start, start + chunk)
        with torch.autocast(hidden.device.type, enabled=False):
            kd_sum, ce_sum = _chunk(hidden[rows], head, scored[rows], spec, weights, grads, rows)
        kd_total, ce_total = kd_total + kd_sum, ce_total + ce_sum
    return kd_total, ce_total, grads


def _autocast_copies(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """Under autocast (bf16 mixed precision), the output layer cast once to its dtype; None otherwise.

    The matmuls then run in that dtype while log-softmax, the loss and the gradients stay float32.
    """
    device = hidden.device.type
    if not torch.is_autocast_enabled(device):
        return None
    dtype = torch.get_autocast_dtype(device)
    return weight.detach().to(dtype), None if bias is None else bias.detach().to(dtype)


class _ChunkedHeadLoss(torch.autograd.Function):
    """Loss of the output layer + divergence; gradients are computed during forward, chunk by chunk."""

    @staticmethod
    def forward(ctx: Any, hidden, weight, bias, targets, listed_ids, listed_logprobs, counts, spec: LossSpec, chunk: int, totals: tuple[int, int]):  # type: ignore[override]
        need = tuple(ctx.needs_input_grad[:3])
        kd_sum, ce_sum, ctx.grads = _run(hidden, weight, bias, _Scored(targets, listed_ids, listed_logprobs, counts), spec, chunk, need, totals)
        terms = combine_terms(kd_sum, ce_sum, *totals, spec)
        ctx.mark_non_differentiable(terms["kd"], terms["ce"])
        return terms["loss"], terms["kd"], terms["ce"]

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *unused: torch.Tensor):  # type: ignore[override]
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError("the chunked distillation loss supports one backward per forward")
        return (*(None if g is None else g.mul_(grad_loss) for g in grads), None, None, None, None, None, None, None)


def chunked_distillation_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    listed_ids: torch.Tensor,
    listed_logprobs: torch.Tensor,
    spec: LossSpec,
    chunk_positions: int | None = None,
    counts: torch.Tensor | None = None,
    totals: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """`pipeline.lm.losses.distillation_loss` of logits = hidden @ weight.T + bias, never holding them whole.

    hidden [N, H] are the output layer's inputs at the scored positions; the first len(listed_ids)
    are cached positions (divergence and CE), any further ones count for CE only; `counts` marks a
    sampled cache (see `pipeline.lm.losses.sampled_forward_kl`). Returns the loss
    (differentiable with respect to hidden, weight and bias) and the two mean terms.

    `totals` (divergence positions, CE positions) are the counts the sums are divided by; default
    this batch's. Several processes or accumulated micro-batches pass the whole step's, so that their
    losses add up to the mean over the global batch.
    """
    chunk = max(1, chunk_positions or len(targets))
    totals = totals or (len(listed_ids), len(targets))
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias)):
        loss, kd, ce = _ChunkedHeadLoss.apply(hidden, weight, bias, targets, listed_ids, listed_logprobs, counts, spec, chunk, totals)
        return {"loss": loss, "kd": kd, "ce": ce}
    kd_sum, ce_sum, _ = _run(hidden, weight, bias, _Scored(targets, listed_ids, listed_logprobs, counts), spec, chunk, (False, False, False), totals)
    return combine_terms(kd_sum, ce_sum, *totals, spec)
