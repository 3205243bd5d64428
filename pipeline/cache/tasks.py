"""The registry of cache tasks: what the task-agnostic core asks of each kind of cache.

The core (writer, reader, verify, summary) never tests which task a cache holds; it looks the
task up here by the manifest's `task` and calls its methods. Adding a task means adding a module
with a `CacheTask` and registering it below.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from pipeline.cache.format import CAUSAL_LM_TASK
from pipeline.cache.soft_labels import SOFT_LABELS
from pipeline.cache.topk import TOPK
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.cache.manifest import Manifest
    from pipeline.cache.reader import Cache
    from pipeline.cache.schema import EncodingBlock


class CacheTask(Protocol):
    name: str
    token_columns: tuple[str, ...]  # the columns `count_tokens` reads

    def check_manifest(self, manifest: Manifest, path: Path) -> None:
        """Refuse, at open time, a manifest this kd-pipeline cannot read (the task's own fields missing, an unknown encoding)."""

    def schema(self, encoding: EncodingBlock) -> pa.Schema:
        """The shard schema a manifest's (or plan's) encoding block calls for."""

    def format_version(self, plan: dict[str, Any]) -> int:
        """The format version a cache finished from this plan gets."""

    def count_tokens(self, table: pa.Table) -> int:
        """What the manifest's `tokens` counts in a shard."""

    def value_problems(self, table: pa.Table, manifest: Manifest) -> list[str]:
        """Every way a shard's values break the format, one line each naming its first row."""

    def card(self, manifest: Manifest) -> str:
        """The dataset card (README.md) of a finished cache."""

    def summarize(self, cache: Cache) -> dict[str, Any]:
        """`kd inspect --json`."""

    def format_summary(self, summary: dict[str, Any]) -> str:
        """`kd inspect`."""


TASKS: dict[str, CacheTask] = {task.name: task for task in (TOPK, SOFT_LABELS)}


def task_named(name: str | None) -> CacheTask:
    """The task of a manifest's `task` field; version 1 manifests without one are top-k caches."""
    name = name or CAUSAL_LM_TASK
    if name not in TASKS:
        raise PipelineError(f"unknown cache task '{name}' (this kd-pipeline reads: {', '.join(TASKS)})")
    return TASKS[name]


def task_of(manifest: dict[str, Any]) -> CacheTask:
    return task_named(manifest.get("task"))
