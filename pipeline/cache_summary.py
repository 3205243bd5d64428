"""What a cache holds, for `kd inspect`: sizes, k, retained top-k mass, provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cache import CLASSIFY_TASK, flat_values, iter_record_batches, read_manifest, split_shards

MASS_BINS = 10_000  # histogram resolution: percentiles to 1e-4 with memory independent of the cache size


def summarize_cache(cache_dir: Path) -> dict[str, Any]:
    manifest = read_manifest(cache_dir)
    if manifest.get("task") == CLASSIFY_TASK:
        from pipeline.classify_cache import summarize_classify

        return summarize_classify(cache_dir, manifest)
    k = manifest["k"]
    counts = np.zeros(MASS_BINS, dtype=np.int64)
    for split in manifest["splits"]:
        for records in iter_record_batches(split_shards(cache_dir, manifest, split), 256, columns=["topk_logprobs"]):
            mass = np.exp(flat_values(records.column("topk_logprobs"), 2).reshape(-1, k).astype(np.float64)).sum(-1)
            counts += np.bincount(np.clip((mass * MASS_BINS).astype(np.int64), 0, MASS_BINS - 1), minlength=MASS_BINS)
    cumulative = np.cumsum(counts) / max(1, counts.sum())
    percentiles = {f"p{q}": float((np.searchsorted(cumulative, q / 100) + 1) / MASS_BINS) for q in (1, 10, 50, 90, 99)}
    tokens = sum(s["tokens"] for s in manifest["splits"].values())
    size = sum(s["bytes"] for s in manifest["splits"].values())
    return {
        "format_version": manifest["format_version"],
        "task": manifest["task"],
        "k": k,
        "rows": {name: s["rows"] for name, s in manifest["splits"].items()},
        "tokens": tokens,
        "bytes": size,
        "bytes_per_token": size / max(1, tokens),
        "retained_mass": percentiles,
        "teacher": manifest["teacher"],
        "tokenizer": {key: manifest["tokenizer"][key] for key in ("sha256", "vocab_size", "tokenizer_size")},
    }


def format_summary(summary: dict[str, Any]) -> str:
    if summary.get("task") == CLASSIFY_TASK:
        from pipeline.classify_cache import format_classify_summary

        return format_classify_summary(summary)
    mass = summary["retained_mass"]
    rows = ", ".join(f"{name} {count}" for name, count in summary["rows"].items())
    lines = [
        f"format      kd-topk-cache v{summary['format_version']} ({summary['task']}), k={summary['k']}",
        f"rows        {rows}",
        f"tokens      {summary['tokens']:,} cached positions",
        f"size        {summary['bytes']:,} bytes, {summary['bytes_per_token']:.1f} bytes/token",
        "top-k mass  " + ", ".join(f"{name} {value:.4f}" for name, value in mass.items()),
        f"teacher     {summary['teacher']['name']} (weights {summary['teacher']['weights_sha256'][:12]}, {summary['teacher']['backend']}, {summary['teacher']['dtype']})",
        f"tokenizer   {summary['tokenizer']['sha256'][:12]}, vocab {summary['tokenizer']['vocab_size']}, {summary['tokenizer']['tokenizer_size']} tokens",
    ]
    return "\n".join(lines)
