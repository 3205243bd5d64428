"""`kd inspect`: what a cache holds, summarised by its task (sizes, provenance, and the task's own figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.cache.reader import Cache
from pipeline.cache.tasks import task_named


def summarize_cache(cache_dir: Path) -> dict[str, Any]:
    cache = Cache.open(cache_dir)
    return cache.task.summarize(cache)


def format_summary(summary: dict[str, Any]) -> str:
    return task_named(summary["task"]).format_summary(summary)
