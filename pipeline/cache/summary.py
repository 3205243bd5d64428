"""`kd inspect`: what a cache holds, summarised by its task (sizes, provenance, and the task's own figures).

Summarising reads every shard, so every shard's sha256 is checked against the manifest on the way
(pipeline.cache.reader); the summary says so, and says what it leaves to `kd verify`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.cache.reader import Cache
from pipeline.cache.tasks import task_named


def summarize_cache(cache_dir: Path) -> dict[str, Any]:
    cache = Cache.open(cache_dir)
    shards = len(cache.manifest.shard_entries)
    return cache.task.summarize(cache) | {"checked": {"shards_by_sha256": shards, "not_checked": "the shipped tokenizer, the value checks of `kd verify`"}}


def format_summary(summary: dict[str, Any]) -> str:
    checked = summary["checked"]
    line = f"checked     all {checked['shards_by_sha256']} shards against the manifest's sha256 while reading; not checked: {checked['not_checked']}"
    return task_named(summary["task"]).format_summary(summary) + "\n" + line
