"""The batches a student trains on, the one protocol they share, and the module DDP and FSDP wrap.

A same-tokenizer batch (TopKBatch, straight from the cache) and a cross-tokenizer one
(pipeline.lm.cross_tokenizer.CrossBatch, on the student's tokens) both say which positions they
score and compute their own loss, so the training step never asks which kind it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, Protocol, TypeVar, get_args

import torch

from pipeline.errors import PipelineError
from pipeline.lm.chunked_loss import chunked_distillation_loss
from pipeline.lm.losses import LossSpec
from pipeline.lm.student import position_hidden

PAD_ID = 0  # padded positions are masked out and never scored
Positions = Literal["response", "all"]
POSITIONS = get_args(Positions)
Totals = tuple[int, int]  # (divergence positions, CE positions) a step's sums are divided by
B = TypeVar("B")


def on_device(batch: B, device: torch.device) -> B:
    """A dataclass batch with every tensor field on `device` and its other fields as they are (itself on the CPU)."""
    if device.type == "cpu":
        return batch
    values = {f.name: getattr(batch, f.name) for f in fields(batch)}  # type: ignore[arg-type]
    return type(batch)(**{name: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value for name, value in values.items()})


def check_positions(positions: str) -> None:
    """Refuse a `student.positions` value no batch knows."""
    if positions not in POSITIONS:
        raise PipelineError(f"unknown positions '{positions}' (known: {', '.join(POSITIONS)})")


@dataclass(frozen=True)
class Objective:
    """What a batch's loss scores: the loss, which positions CE covers, the output layer's chunk size, and
    whether it is validation's KL (forward KL, exact map across tokenizers) rather than the training loss."""

    spec: LossSpec
    positions: Positions
    chunk_positions: int | None = None
    validation: bool = False


class StudentBatch(Protocol):
    """What the training step needs of a batch, whichever tokenizer the student has."""

    @property
    def num_tokens(self) -> int:
        """Divergence positions."""

    def to(self, device: torch.device) -> StudentBatch:
        """The batch on `device`."""

    def scored(self, positions: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, columns, targets) of the positions the loss scores: divergence ones first."""

    def loss(self, student: torch.nn.Module, objective: Objective, totals: Totals | None = None) -> dict[str, torch.Tensor]:
        """The objective's loss terms ("loss", "kd", "ce"); `totals` turn sums into the step's means (default: this batch's)."""


def scored_counts(batch: StudentBatch, positions: str) -> Totals:
    """(divergence positions, CE positions) of a batch."""
    return batch.num_tokens, len(batch.scored(positions)[0])


@dataclass
class TopKBatch:
    input_ids: torch.Tensor  # [B, L] right-padded
    attention_mask: torch.Tensor  # [B, L]
    rows: torch.Tensor  # [N] batch row of each cached position
    columns: torch.Tensor  # [N] index of the logits that predict it (token index - 1)
    targets: torch.Tensor  # [N] actual next token
    listed_ids: torch.Tensor  # [N, k] most likely first; padding PAD_ID
    listed_logprobs: torch.Tensor  # [N, k] descending; padding -inf
    token_logprobs: torch.Tensor  # [N]
    response_start: torch.Tensor  # [B] index of each row's first answer token
    counts: torch.Tensor | None = None  # [N, k] float draws per id (sampled caches), padding 0; None for top-k caches

    @property
    def num_tokens(self) -> int:
        return len(self.targets)

    def to(self, device: torch.device) -> TopKBatch:
        return on_device(self, device)

    def scored(self, positions: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The cached answer positions first, then with positions='all' the prompt positions (CE only). Padding is never among them."""
        check_positions(positions)
        if positions == "response":
            return self.rows, self.columns, self.targets
        prompt = prompt_positions(self)
        return tuple(torch.cat([cached, extra]) for cached, extra in zip((self.rows, self.columns, self.targets), prompt))  # type: ignore[return-value]

    def loss(self, student: torch.nn.Module, objective: Objective, totals: Totals | None = None) -> dict[str, torch.Tensor]:
        """The loss with the output layer applied chunk by chunk inside it (pipeline.lm.chunked_loss)."""
        rows, columns, targets = self.scored(objective.positions)
        hidden = position_hidden(student, self.input_ids, self.attention_mask, rows, columns)
        head = student.get_output_embeddings()
        return chunked_distillation_loss(hidden, head.weight, head.bias, targets, self.listed_ids, self.listed_logprobs, objective.spec, objective.chunk_positions, self.counts, totals)


def prompt_positions(batch: TopKBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, columns, targets) of the positions that predict prompt tokens 1 .. response_start - 1.

    The cache has no teacher data for them; CE may still train on them (`student.positions: all`).
    """
    counts = (batch.response_start - 1).clamp(min=0)
    rows = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    offsets = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    columns = torch.arange(int(counts.sum()), device=counts.device) - offsets
    return rows, columns, batch.input_ids[rows, columns + 1]


class DistillationStep(torch.nn.Module):
    """The student and its loss as one module, so that DDP and FSDP2 see (and synchronise) the whole step."""

    def __init__(self, student: torch.nn.Module, objective: Objective) -> None:
        super().__init__()
        self.student = student
        self.objective = objective

    def forward(self, batch: StudentBatch, totals: Totals | None = None, objective: Objective | None = None) -> dict[str, torch.Tensor]:
        """The loss of `objective` (default: the training objective) on one batch."""
        return batch.loss(self.student, objective or self.objective, totals)
