"""What a cache holds, for `kd inspect`: encoding, sizes, k, retained top-k mass (or unique sampled ids), provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cache import CLASSIFY_TASK, iter_record_batches, read_manifest, split_shards
from pipeline.codec import decode, manifest_encoding
from pipeline.encoding import segment_index

MASS_BINS = 10_000  # histogram resolution: percentiles to 1e-4 with memory independent of the cache size


def summarize_cache(cache_dir: Path) -> dict[str, Any]:
    manifest = read_manifest(cache_dir)
    if manifest.get("task") == CLASSIFY_TASK:
        from pipeline.classify_cache import summarize_classify

        return summarize_classify(cache_dir, manifest)
    k, block = manifest["k"], manifest_encoding(manifest)
    counts = np.zeros(MASS_BINS, dtype=np.int64)
    entries = np.zeros(0, dtype=np.int64)
    mass_sum, mass_min = 0.0, 1.0
    for split in manifest["splits"]:
        for records in iter_record_batches(split_shards(cache_dir, manifest, split), 256):
            rows = decode(records, block)
            mass = np.bincount(segment_index(rows.entries), weights=np.exp(rows.entry_logprobs.astype(np.float64)), minlength=len(rows.entries))
            counts += np.bincount(np.clip((mass * MASS_BINS).astype(np.int64), 0, MASS_BINS - 1), minlength=MASS_BINS)
            mass_sum, mass_min = mass_sum + mass.sum(), min(mass_min, float(mass.min(initial=1.0)))
            entries = _add_counts(entries, rows.entries)
    cumulative = np.cumsum(counts) / max(1, counts.sum())
    percentiles = {f"p{q}": float((np.searchsorted(cumulative, q / 100) + 1) / MASS_BINS) for q in (1, 10, 50, 90, 99)}
    tokens = sum(s["tokens"] for s in manifest["splits"].values())
    size = sum(s["bytes"] for s in manifest["splits"].values())
    listed = np.arange(len(entries))
    return {
        "format_version": manifest["format_version"],
        "task": manifest["task"],
        "encoding": block,
        "k": k,
        "rows": {name: s["rows"] for name, s in manifest["splits"].items()},
        "tokens": tokens,
        "bytes": size,
        "bytes_per_token": size / max(1, tokens),
        "retained_mass": percentiles | {"mean": mass_sum / max(1, tokens), "min": mass_min},
        "ids_per_position": {
            "mean": float((listed * entries).sum() / max(1, entries.sum())),
            "min": int(np.flatnonzero(entries)[0]) if entries.any() else 0,
            "max": int(np.flatnonzero(entries)[-1]) if entries.any() else 0,
        },
        "teacher": manifest["teacher"],
        "tokenizer": {key: manifest["tokenizer"][key] for key in ("sha256", "vocab_size", "tokenizer_size")},
    }


def _add_counts(histogram: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Add a histogram of non-negative integers to another, growing it as needed."""
    new = np.bincount(values, minlength=len(histogram))
    new[: len(histogram)] += histogram
    return new


def encoding_line(block: dict[str, Any]) -> str:
    """One line naming the encoding and its declared error bounds."""
    if block["name"] == "float32":
        return "float32 (exact: int32 ids, float32 log-probs)"
    bound = block["error_bound"]
    storage = f"sampled, {block['draws']} draws per position" if block["storage"] == "sampled" else "top-k" + (", level-0 entries in the tail" if block["drop_zero_level"] else "")
    return (
        f"compact ({storage}; sqrt(p) step {block['sqrt_step']} (error <= {bound['sqrt_prob']:g}), "
        f"log tail step {block['tail_log_step']}, token log-prob error <= {bound['token_logprob']:g}, ids {block['id_bytes']} byte(s), zstd {block['zstd_level']})"
    )


def format_summary(summary: dict[str, Any]) -> str:
    if summary.get("task") == CLASSIFY_TASK:
        from pipeline.classify_cache import format_classify_summary

        return format_classify_summary(summary)
    mass, ids = summary["retained_mass"], summary["ids_per_position"]
    rows = ", ".join(f"{name} {count}" for name, count in summary["rows"].items())
    sampled = summary["encoding"].get("storage") == "sampled"
    lines = [
        f"format      kd-topk-cache v{summary['format_version']} ({summary['task']}), k={summary['k']}",
        f"encoding    {encoding_line(summary['encoding'])}",
        f"rows        {rows}",
        f"tokens      {summary['tokens']:,} cached positions",
        f"size        {summary['bytes']:,} bytes, {summary['bytes_per_token']:.1f} bytes/token",
        f"{'unique ids' if sampled else 'listed ids'}  per position: mean {ids['mean']:.2f}, min {ids['min']}, max {ids['max']}",
        ("listed mass " if sampled else "top-k mass  ") + f"mean {mass['mean']:.4f}, min {mass['min']:.4f}, " + ", ".join(f"{name} {mass[name]:.4f}" for name in ("p1", "p10", "p50", "p90", "p99")),
        f"teacher     {summary['teacher']['name']} (weights {summary['teacher']['weights_sha256'][:12]}, {summary['teacher']['backend']}, {summary['teacher']['dtype']})",
        f"tokenizer   {summary['tokenizer']['sha256'][:12]}, vocab {summary['tokenizer']['vocab_size']}, {summary['tokenizer']['tokenizer_size']} tokens",
    ]
    return "\n".join(lines)
