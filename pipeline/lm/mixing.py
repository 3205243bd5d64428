"""Train on a λ-mix of the original cache and on-policy round caches, batch by batch, reproducibly.

The fraction is realised per row and exactly, not by a per-batch coin (GKD's): an epoch is the
original train split's N rows, cut into the same ceil(N / batch_size) batches as `stream_batches`,
and the rows numbered 0 .. n-1 so far hold floor(n·λ) on-policy rows. Batch j (rows a .. b-1)
therefore takes floor(b·λ) - floor(a·λ) rows from the round caches and the rest from the original
cache, so the epoch's on-policy share is floor(N·λ)/N (λ itself up to one row), every prefix is as
close to λ as whole rows allow, the step count is the original cache's whatever λ, and no random
draw decides the share: the same seed gives the same batches, and λ = 0 gives exactly the batches
of `stream_batches` on the original cache. A coin per batch would leave the share off λ by
chance (by about sqrt(λ(1-λ)/batches)) and tie it to the seed.

Rows within each source keep `stream_batches`' order: the original's shards and rows shuffled with
`seed`; the round caches' shards pooled, then shuffled the same way with `seed`, and streamed
again with seed + 1, seed + 2, ... when the epoch asks for more on-policy rows than they hold.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.cache.reader import Cache, CachedShard, iter_record_batches
from pipeline.errors import PipelineError
from pipeline.lm.batch import TopKBatch
from pipeline.lm.compatibility import check_compatibility
from pipeline.lm.streaming import checked_batch, process_shards
from pipeline.lm.student_settings import StudentSettings

SPLIT = "train"  # round caches hold a train split only


def exact_fraction(fraction: float) -> Fraction:
    if not 0 <= fraction <= 1:
        raise PipelineError(f"on_policy.fraction is {fraction}: it must lie in [0, 1]")
    return Fraction(fraction).limit_denominator(10**6)


def on_policy_rows(total_rows: int, batch_size: int, fraction: float) -> list[int]:
    """How many rows of each batch of an epoch of `total_rows` rows come from the round caches."""
    share = exact_fraction(fraction)
    ends = [min(start + batch_size, total_rows) for start in range(0, total_rows, batch_size)]
    return [math.floor(end * share) - math.floor(start * share) for start, end in zip(range(0, total_rows, batch_size), ends, strict=True)]


def check_round_storage(original: Cache, rounds: Sequence[Cache]) -> None:
    """Refuse round caches whose rows cannot go into one batch with the original's: another task or encoding, or no train rows."""
    for cache in rounds:
        cache.require_task(original.manifest.task, "mixing with the original cache")
        if cache.encoding != original.encoding:
            raise PipelineError(
                f"{cache.path}: round cache encoding {cache.encoding} differs from the original cache's {original.encoding}: write the round with the original's teacher.cache settings"
            )
        if not cache.has_split(SPLIT) or not cache.shards(SPLIT):
            raise PipelineError(f"{cache.path}: round cache has no train rows to mix in")


def check_round_caches(original: Cache, rounds: Sequence[Cache], tokenizer: Any, tokenizer_path: Path, settings: StudentSettings) -> None:
    """Refuse, in one line and before any training, a round cache the student cannot learn from alongside the original (the same checks as the original's)."""
    for cache in rounds:
        check_compatibility(cache, tokenizer, tokenizer_path, settings)
    check_round_storage(original, rounds)


def _tables(shards: list[CachedShard], rng: np.random.Generator, window: int) -> Iterator[pa.Table]:
    """Row windows in `stream_batches`' order for a seeded stream: shards as given, rows permuted per window."""
    for records in iter_record_batches(shards, window):
        order = rng.permutation(records.num_rows)
        yield pa.Table.from_batches([records.take(pa.array(order))])


def _original_tables(cache: Cache, seed: int, window: int) -> Iterator[pa.Table]:
    rng = np.random.default_rng(seed)
    yield from _tables(process_shards(cache, SPLIT, rng), rng, window)


def _round_tables(rounds: Sequence[Cache], seed: int, window: int) -> Iterator[pa.Table]:
    """The pooled round caches' rows, shuffled with seed, then again with seed + 1, ... without end."""
    pooled = [shard for cache in rounds for shard in cache.shards(SPLIT)]
    for cycle in itertools.count():
        rng = np.random.default_rng(seed + cycle)
        yield from _tables([pooled[i] for i in rng.permutation(len(pooled))], rng, window)


class _Rows:
    """Take n rows at a time from a stream of tables."""

    def __init__(self, tables: Iterator[pa.Table]) -> None:
        self.tables, self.held = tables, None

    def take(self, n: int) -> list[pa.Table]:
        parts = []
        while n > 0:
            if self.held is None or self.held.num_rows == 0:
                self.held = next(self.tables, None)
                if self.held is None:
                    raise PipelineError("a cache ended before the planned rows of the epoch: its shards do not match the manifest")
                continue
            part = self.held.slice(0, n)
            self.held = self.held.slice(part.num_rows)
            parts.append(part)
            n -= part.num_rows
        return parts


def mixed_batches(original: Cache, rounds: Sequence[Cache], batch_size: int, fraction: float, seed: int, shuffle_rows: int = 256, skip: int = 0) -> Iterator[TopKBatch]:
    """One epoch of batches mixing the original cache's train rows with the round caches' at share `fraction` (see the module docstring).

    Each batch holds its original rows first, then its on-policy rows. `skip` batches are passed
    over without being decoded, drawing the same rows, so the rest equals the unskipped stream's.
    Single process only.
    """
    total = sum(shard.rows for shard in original.shards(SPLIT))
    counts = on_policy_rows(total, batch_size, fraction)
    window = shuffle_rows
    own = _Rows(_original_tables(original, seed, window))
    others = _Rows(_round_tables(rounds, seed, window)) if any(counts) else None
    for index, start in enumerate(range(0, total, batch_size)):
        size, mixed = min(batch_size, total - start), counts[index]
        parts = own.take(size - mixed) + (others.take(mixed) if mixed else [])
        if index < skip:
            continue
        table = pa.concat_tables([part.cast(parts[0].schema) for part in parts])
        yield checked_batch(table, original, SPLIT)
