"""Sampled and hybrid caches: per position, ids drawn from the teacher's distribution (Sparse Logit Sampling).

A top-k cache keeps the head of each distribution and loses the tail's shape; a few draws keep an
unbiased picture of all of it (Anshumann et al. 2025). A hybrid cache keeps both: the exact top-h
head, plus draws from the teacher restricted to the ids outside it, so the sampling noise only
touches the tail's mass. Per position the cache stores the listed ids (ascending), how often each
was drawn (0 marks a head id) and its teacher log-prob; `pipeline.lm.losses.sampled_forward_kl`
turns them into the estimator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from pipeline.cache.rows import TeacherRow
from pipeline.errors import PipelineError

Sampling = Literal["iid", "systematic"]


@dataclass
class SampledIds:
    """Ragged per-position draws, flat over positions (the per-entry layout of `pipeline.cache.rows.TeacherRow`)."""

    entries: np.ndarray  # int32 [positions], listed ids per position (head + unique drawn)
    ids: np.ndarray  # int32 [sum(entries)], ascending within each position
    counts: np.ndarray  # int32 [sum(entries)], draws of each id (0: a head id); they sum to `draws` per position
    logprobs: np.ndarray  # float32 [sum(entries)], the teacher's log-prob of each id at temperature 1


def draw_teacher_samples(logprobs: torch.Tensor, draws: int, generator: torch.Generator, head: int = 0, sampling: Sampling = "iid") -> SampledIds:
    """`draws` ids with replacement from each row of log-probs [positions, V], listed as unique ids and counts.

    `sampling` iid: independent draws (multinomial). systematic: one uniform offset u per row and the
    draws at the points (u + j) / N of the cumulative distribution (systematic resampling): each id is
    still drawn N p_i times in expectation, so the estimator stays unbiased, but an id of probability
    p_i is drawn floor(N p_i) or ceil(N p_i) times, never 0 or 2 N p_i: far less noise per stored id.
    With `head` h > 0 (a hybrid cache) the row's h most likely ids are listed with count 0 and the
    draws come from the teacher restricted to the other ids. A row whose ids outside the head all
    have probability 0 in float32 draws uniformly among them: that tail's mass is 0, so the draws
    carry no weight in the estimator.
    """
    if draws < 1:
        raise PipelineError(f"the number of draws per position must be at least 1, got {draws}")
    logprobs = logprobs.float()
    if not 0 <= head < logprobs.shape[-1]:
        raise PipelineError(f"the head of a hybrid cache must list fewer ids than the vocabulary ({logprobs.shape[-1]}), got {head}")
    probs = logprobs.exp()  # the one [positions, V] temporary: many more fragment the heap over a long run
    head_ids = logprobs.topk(head, dim=-1).indices
    if head:
        probs.scatter_(-1, head_ids, 0.0)
        empty = (probs.sum(-1) == 0).nonzero()[:, 0]
        probs[empty] = torch.ones_like(probs[empty]).scatter_(-1, head_ids[empty], 0.0)
    if sampling == "systematic":
        cumulative = probs.double().cumsum(-1)
        offsets = 1 - torch.rand(len(probs), 1, generator=generator, dtype=torch.float64)  # in (0, 1]: no point at 0, where an id of probability 0 could sit
        points = (offsets + torch.arange(draws, dtype=torch.float64)) / draws
        drawn = torch.searchsorted(cumulative, points * cumulative[:, -1:]).clamp(max=probs.shape[-1] - 1)
        del cumulative
    else:
        drawn = torch.multinomial(probs, draws, replacement=True, generator=generator)
    listed = torch.cat([head_ids, drawn], dim=-1).sort(dim=-1)  # head ids are never drawn: their probability is 0
    is_draw = torch.cat([torch.zeros_like(head_ids), torch.ones_like(drawn)], dim=-1).gather(-1, listed.indices).reshape(-1)
    first = torch.ones_like(listed.values, dtype=torch.bool)
    first[:, 1:] = listed.values[:, 1:] != listed.values[:, :-1]
    starts = first.reshape(-1).nonzero()[:, 0]
    drawn_before = torch.cat([torch.zeros(1, dtype=is_draw.dtype), is_draw.cumsum(0)])
    counts = drawn_before[torch.cat([starts[1:], torch.tensor([is_draw.numel()])])] - drawn_before[starts]
    ids = listed.values.reshape(-1)[starts]
    return SampledIds(
        entries=first.sum(-1).to(torch.int32).numpy(),
        ids=ids.to(torch.int32).numpy(),
        counts=counts.to(torch.int32).numpy(),
        logprobs=logprobs[starts // (head + draws), ids].numpy(),
    )


def draw_row(sequence: Sequence[int], response_start: int, logprobs: torch.Tensor, draws: int, generator: torch.Generator, head: int = 0) -> TeacherRow:
    """A sequence's sampled or hybrid row: ids drawn from the teacher's full log-probs [positions, V] at positions response_start.. (any backend that has them)."""
    logprobs = logprobs.float().cpu()
    targets = torch.as_tensor(sequence[response_start:], dtype=torch.long)
    drawn = draw_teacher_samples(logprobs, draws, generator, head)
    token_logprobs = logprobs.gather(-1, targets[:, None])[:, 0].numpy()
    return TeacherRow(
        input_ids=np.asarray(sequence, dtype=np.int32),
        response_start=response_start,
        entries=drawn.entries,
        ids=drawn.ids,
        logprobs=drawn.logprobs,
        counts=drawn.counts,
        token_logprobs=token_logprobs,
    )


def sequence_generator(seed: int, index: int) -> torch.Generator:
    """The random stream of sequence `index` of one backend call: the same whatever the batching, and in every backend."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)
