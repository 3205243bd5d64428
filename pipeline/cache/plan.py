"""Shard boundaries: from row counts alone, so any worker can fill any shard and a rerun skips finished ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class ShardSpec:
    split: str
    index: int
    start: int
    stop: int

    @property
    def file(self) -> str:
        return f"{self.split}/shard-{self.index:05d}.parquet"


def plan_shards(split_rows: dict[str, int], shard_rows: int) -> list[ShardSpec]:
    """Shard boundaries from row counts alone: the same on every worker and every rerun."""
    if shard_rows < 1:
        raise PipelineError(f"shard_rows must be at least 1, got {shard_rows}")
    shards = []
    for split, rows in split_rows.items():
        for index, start in enumerate(range(0, rows, shard_rows)):
            shards.append(ShardSpec(split, index, start, min(start + shard_rows, rows)))
    return shards


def planned_shards(plan: dict[str, Any]) -> list[ShardSpec]:
    """Every shard a plan (or a manifest, which contains it) calls for."""
    return plan_shards(plan["source"]["rows"], plan["shard_rows"])


def worker_shards(shards: Sequence[ShardSpec], worker_index: int, num_workers: int) -> list[ShardSpec]:
    if num_workers < 1:
        raise PipelineError(f"num_workers must be at least 1, got {num_workers}")
    if not 0 <= worker_index < num_workers:
        raise PipelineError(f"worker index {worker_index} is outside 0..{num_workers - 1}")
    return [shard for i, shard in enumerate(shards) if i % num_workers == worker_index]
