"""Stream a top-k cache into padded training batches without loading it whole."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pipeline.cache import flat_values, iter_record_batches, read_manifest, split_shards
from pipeline.errors import PipelineError

PAD_ID = 0  # padded positions are masked out and never scored
POSITIONS = ("response", "all")


@dataclass
class TopKBatch:
    input_ids: torch.Tensor  # [B, L] right-padded
    attention_mask: torch.Tensor  # [B, L]
    rows: torch.Tensor  # [N] batch row of each cached position
    columns: torch.Tensor  # [N] index of the logits that predict it (token index - 1)
    targets: torch.Tensor  # [N] actual next token
    topk_ids: torch.Tensor  # [N, k]
    topk_logprobs: torch.Tensor  # [N, k]
    token_logprobs: torch.Tensor  # [N]
    response_start: torch.Tensor  # [B] index of each row's first answer token
    counts: torch.Tensor | None = None  # [N, k] draws of each id in a sampled cache (topk_* then hold the drawn ids); None for top-k

    @property
    def num_tokens(self) -> int:
        return len(self.targets)


def to_topk_batch(records: pa.RecordBatch) -> TopKBatch:
    """Vectorised conversion: no Python object per position."""
    seq_lengths = pc.list_value_length(records.column("input_ids")).to_numpy()
    starts = records.column("response_start").to_numpy().astype(np.int64)
    flat_ids = flat_values(records.column("input_ids"), 1)
    batch, width = len(seq_lengths), int(seq_lengths.max())
    input_ids = np.full((batch, width), PAD_ID, dtype=np.int64)
    mask = np.arange(width)[None, :] < seq_lengths[:, None]
    input_ids[mask] = flat_ids
    positions = seq_lengths - starts
    rows = np.repeat(np.arange(batch), positions)
    offsets = np.concatenate([[0], np.cumsum(positions)[:-1]])
    token_index = np.repeat(starts, positions) + np.arange(positions.sum()) - np.repeat(offsets, positions)
    n = int(positions.sum())
    return TopKBatch(
        input_ids=torch.from_numpy(input_ids),
        attention_mask=torch.from_numpy(mask.astype(np.int64)),
        rows=torch.from_numpy(rows),
        columns=torch.from_numpy(token_index - 1),
        targets=torch.from_numpy(input_ids[rows, token_index]),
        topk_ids=torch.from_numpy(flat_values(records.column("topk_ids"), 2).astype(np.int64).reshape(n, -1)),
        topk_logprobs=torch.from_numpy(flat_values(records.column("topk_logprobs"), 2).reshape(n, -1)),
        token_logprobs=torch.from_numpy(flat_values(records.column("token_logprobs"), 1)),
        response_start=torch.from_numpy(starts),
    )


def prompt_positions(batch: TopKBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, columns, targets) of the positions that predict prompt tokens 1 .. response_start - 1.

    The cache has no teacher data for them; CE may still train on them (`student.positions: all`).
    """
    counts = (batch.response_start - 1).clamp(min=0)
    rows = torch.repeat_interleave(torch.arange(len(counts)), counts)
    offsets = torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    columns = torch.arange(int(counts.sum())) - offsets
    return rows, columns, batch.input_ids[rows, columns + 1]


def scored_positions(batch: TopKBatch, positions: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, columns, targets) the loss scores: the cached answer positions first, then with
    positions='all' the prompt positions (CE only). Padding is never among them."""
    if positions not in POSITIONS:
        raise PipelineError(f"unknown positions '{positions}' (known: {', '.join(POSITIONS)})")
    if positions == "response":
        return batch.rows, batch.columns, batch.targets
    prompt = prompt_positions(batch)
    return tuple(torch.cat([cached, extra]) for cached, extra in zip((batch.rows, batch.columns, batch.targets), prompt))  # type: ignore[return-value]


def stream_batches(cache_dir: Path, split: str, batch_size: int, seed: int | None = None, shuffle_rows: int = 256) -> Iterator[TopKBatch]:
    """Yield TopKBatch of `batch_size` sequences; with a seed, shards and rows come shuffled.

    Shuffling is within windows of `shuffle_rows` rows of a shard, so memory stays bounded.
    """
    manifest = read_manifest(cache_dir)
    shards = split_shards(cache_dir, manifest, split)
    rng = np.random.default_rng(seed) if seed is not None else None
    if rng is not None:
        shards = [shards[i] for i in rng.permutation(len(shards))]
    window = shuffle_rows if rng is not None else batch_size
    for records in iter_record_batches(shards, window):
        if rng is not None:
            records = records.take(pa.array(rng.permutation(records.num_rows)))
        for start in range(0, records.num_rows, batch_size):
            yield to_topk_batch(records.slice(start, batch_size))
