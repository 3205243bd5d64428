"""Stream a top-k cache into padded training batches without loading it whole.

Positions may list different numbers of ids (compact caches drop near-zero entries; sampled caches
hold as many unique ids as were drawn): the batch pads each position to the batch's widest with
id PAD_ID and log-prob -inf, which the losses treat as absent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import pyarrow as pa
import torch

from pipeline.cache.codec import FLOAT32_BLOCK, CacheRows, decode, padded_entries
from pipeline.cache.encoding import segment_index, segment_starts
from pipeline.cache.reader import Cache, iter_record_batches
from pipeline.errors import PipelineError

PAD_ID = 0  # padded positions are masked out and never scored
Positions = Literal["response", "all"]
POSITIONS = get_args(Positions)


@dataclass
class TopKBatch:
    input_ids: torch.Tensor  # [B, L] right-padded
    attention_mask: torch.Tensor  # [B, L]
    rows: torch.Tensor  # [N] batch row of each cached position
    columns: torch.Tensor  # [N] index of the logits that predict it (token index - 1)
    targets: torch.Tensor  # [N] actual next token
    topk_ids: torch.Tensor  # [N, k] most likely first; padding PAD_ID
    topk_logprobs: torch.Tensor  # [N, k] descending; padding -inf
    token_logprobs: torch.Tensor  # [N]
    response_start: torch.Tensor  # [B] index of each row's first answer token
    counts: torch.Tensor | None = None  # [N, k] float draws per id (sampled caches), padding 0; None for top-k caches

    @property
    def num_tokens(self) -> int:
        return len(self.targets)


def to_topk_batch(records: pa.RecordBatch | CacheRows, block: dict | None = None) -> TopKBatch:
    """Vectorised conversion of shard rows (in the encoding `block`, default float32) or decoded rows."""
    rows = records if isinstance(records, CacheRows) else decode(records, block or FLOAT32_BLOCK)
    seq_lengths, starts = rows.seq_lengths, rows.response_start
    batch, width = len(seq_lengths), int(seq_lengths.max())
    input_ids = np.full((batch, width), PAD_ID, dtype=np.int64)
    mask = np.arange(width)[None, :] < seq_lengths[:, None]
    input_ids[mask] = rows.input_ids
    positions = rows.positions
    row_of = segment_index(positions)
    token_index = starts[row_of] + np.arange(positions.sum()) - segment_starts(positions)[row_of]
    ids, logprobs, counts = padded_entries(rows)
    return TopKBatch(
        input_ids=torch.from_numpy(input_ids),
        attention_mask=torch.from_numpy(mask.astype(np.int64)),
        rows=torch.from_numpy(row_of),
        columns=torch.from_numpy(token_index - 1),
        targets=torch.from_numpy(input_ids[row_of, token_index]),
        topk_ids=torch.from_numpy(ids),
        topk_logprobs=torch.from_numpy(logprobs),
        token_logprobs=torch.from_numpy(rows.token_logprobs),
        response_start=torch.from_numpy(starts),
        counts=None if counts is None else torch.from_numpy(counts),
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


def stream_batches(cache: Cache, split: str, batch_size: int, seed: int | None = None, shuffle_rows: int = 256) -> Iterator[TopKBatch]:
    """Yield TopKBatch of `batch_size` sequences; with a seed, shards and rows come shuffled.

    Shuffling is within windows of `shuffle_rows` rows of a shard, so memory stays bounded.
    """
    block = cache.encoding
    shards = cache.shards(split)
    rng = np.random.default_rng(seed) if seed is not None else None
    if rng is not None:
        shards = [shards[i] for i in rng.permutation(len(shards))]
    window = shuffle_rows if rng is not None else batch_size
    for records in iter_record_batches(shards, window):
        if rng is not None:
            records = records.take(pa.array(rng.permutation(records.num_rows)))
        for start in range(0, records.num_rows, batch_size):
            yield to_topk_batch(records.slice(start, batch_size), block)
