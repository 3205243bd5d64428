"""Sparse Logit Sampling (Anshumann et al. 2025): per position, ids drawn from the teacher's full distribution.

A top-k cache keeps the head of each distribution and loses the tail's shape; a few draws keep an
unbiased picture of all of it. Per position the cache stores the unique drawn ids (ascending), how
often each was drawn and its teacher log-prob; `pipeline.lm.losses.sampled_forward_kl` turns them
into the estimator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.errors import PipelineError


@dataclass
class SampledIds:
    """Ragged per-position draws, flat over positions (the layout of `pipeline.cache.SampledOutput`)."""

    entries: np.ndarray  # int32 [positions], unique ids per position
    ids: np.ndarray  # int32 [sum(entries)], ascending within each position
    counts: np.ndarray  # int32 [sum(entries)], draws of each id; they sum to `draws` per position
    logprobs: np.ndarray  # float32 [sum(entries)], the teacher's log-prob of each id at temperature 1


def draw_teacher_samples(logprobs: torch.Tensor, draws: int, generator: torch.Generator) -> SampledIds:
    """`draws` ids with replacement from each row of log-probs [positions, V], as unique ids and counts."""
    if draws < 1:
        raise PipelineError(f"the number of draws per position must be at least 1, got {draws}")
    logprobs = logprobs.float()
    drawn = torch.multinomial(logprobs.exp(), draws, replacement=True, generator=generator).sort(dim=-1).values
    first = torch.ones_like(drawn, dtype=torch.bool)
    first[:, 1:] = drawn[:, 1:] != drawn[:, :-1]
    starts = first.reshape(-1).nonzero()[:, 0]
    counts = torch.diff(starts, append=torch.tensor([drawn.numel()]))
    ids = drawn.reshape(-1)[starts]
    return SampledIds(
        entries=first.sum(-1).to(torch.int32).numpy(),
        ids=ids.to(torch.int32).numpy(),
        counts=counts.to(torch.int32).numpy(),
        logprobs=logprobs[starts // draws, ids].numpy(),
    )
