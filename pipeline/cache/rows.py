"""What a teacher backend hands the cache: one ragged `TeacherRow` per sequence, and the shard table of many.

Top-k, sampled and hybrid storage all list some ids per position (k of them, the unique ids drawn,
or the exact head plus the drawn ones), so one ragged layout carries every storage: how many ids
each position lists, then the ids and their log-probs flat over positions (and the draw counts when
drawn). It is the per-sequence slice of `CacheRows`, so a shard's rows are those of its sequences
concatenated, whichever backend or storage made them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.cache.codec import CacheRows, encode
from pipeline.cache.schema import FLOAT32_BLOCK, EncodingBlock
from pipeline.errors import PipelineError


@dataclass
class TeacherRow:
    """What the teacher said about one sequence, for positions response_start..len-1.

    Position j predicts input_ids[response_start + j] from the tokens before it and lists
    `entries[j]` ids. Flat over positions: the ids (top-k: most likely first), their raw log-probs
    at temperature 1 and, for sampled and hybrid storage, how often each was drawn (0: a hybrid
    cache's head id; a position's counts add up to the manifest's `encoding.draws`).
    """

    input_ids: np.ndarray  # int [L]
    response_start: int
    entries: np.ndarray  # int [n]
    ids: np.ndarray  # int [sum(entries)]
    logprobs: np.ndarray  # float [sum(entries)]
    counts: np.ndarray | None  # int [sum(entries)]; None for top-k storage
    token_logprobs: np.ndarray  # float [n], log-prob of the actual next token

    @classmethod
    def top_k(cls, input_ids: np.ndarray, response_start: int, topk_ids: np.ndarray, topk_logprobs: np.ndarray, token_logprobs: np.ndarray) -> TeacherRow:
        """From top-k arrays [n, k], most likely first: every position lists k ids."""
        positions, k = topk_ids.shape
        return cls(
            input_ids=np.asarray(input_ids),
            response_start=response_start,
            entries=np.full(positions, k, dtype=np.int64),
            ids=topk_ids.reshape(-1),
            logprobs=topk_logprobs.reshape(-1),
            counts=None,
            token_logprobs=np.asarray(token_logprobs),
        )

    @classmethod
    def from_positions(cls, input_ids: np.ndarray, response_start: int, positions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], token_logprobs: np.ndarray) -> TeacherRow:
        """Drawn ids from one (ids, counts, logprobs) triple per position (`pipeline.backends.sampling.draw_row` draws them from the teacher)."""
        ids, counts, logprobs = (np.concatenate([np.asarray(p[i]) for p in positions]) if positions else np.zeros(0) for i in range(3))
        return cls(
            input_ids=np.asarray(input_ids),
            response_start=response_start,
            entries=np.array([len(p[0]) for p in positions], dtype=np.int64),
            ids=ids,
            logprobs=logprobs,
            counts=counts,
            token_logprobs=np.asarray(token_logprobs),
        )

    @property
    def num_positions(self) -> int:
        return len(self.input_ids) - self.response_start


def to_cache_rows(ids: Sequence[str], rows: Sequence[TeacherRow]) -> CacheRows:
    """One shard's teacher rows (all top-k, or all drawn) as `CacheRows`, ready for any encoding."""
    if len(ids) != len(rows):
        raise ValueError("one id per teacher row")
    drawn = bool(rows) and rows[0].counts is not None
    if any((row.counts is not None) != drawn for row in rows):
        raise PipelineError("a shard mixes top-k and sampled teacher rows")

    def cat(values: list[Any], dtype: Any) -> np.ndarray:
        return np.concatenate(values).astype(dtype) if values else np.zeros(0, dtype)

    return CacheRows(
        row_ids=list(ids),
        input_ids=cat([np.asarray(row.input_ids) for row in rows], np.int64),
        seq_lengths=np.array([len(row.input_ids) for row in rows], dtype=np.int64),
        response_start=np.array([row.response_start for row in rows], dtype=np.int64),
        entries=cat([row.entries for row in rows], np.int64),
        entry_ids=cat([row.ids for row in rows], np.int64),
        entry_logprobs=cat([row.logprobs for row in rows], np.float32),
        token_logprobs=cat([np.asarray(row.token_logprobs) for row in rows], np.float32),
        entry_counts=cat([row.counts for row in rows], np.int64) if drawn else None,
    )


def to_shard_table(ids: Sequence[str], rows: Sequence[TeacherRow], block: EncodingBlock = FLOAT32_BLOCK) -> pa.Table:
    """A shard table in the encoding of `block` (a manifest's `encoding`; default float32, the v1 columns)."""
    return encode(to_cache_rows(ids, rows), block)
