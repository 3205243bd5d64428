"""The language-model task (`causal_lm_topk`): per answer position, the teacher's top-k log-probs or sampled ids.

Everything the cache core needs to know about this task: its shard schema (by encoding, see
pipeline.cache.codec), what `tokens` counts (answer positions), the value checks of `kd verify`,
the dataset card and the `kd inspect` summary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.cache.codec import decode, flat_values, padded_entries, shard_schema
from pipeline.cache.encoding import segment_index
from pipeline.cache.format import CAUSAL_LM_TASK, HYBRID_FORMAT_VERSION
from pipeline.cache.schema import FLOAT32_BLOCK, CompactBlock, EncodingBlock, Float32Block, encoding_of, storage_of
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.cache.manifest import Manifest
    from pipeline.cache.reader import Cache

MASS_TOLERANCE = 1e-4  # float32 rounding of a top-k mass that is truly at most 1
MASS_BINS = 10_000  # histogram resolution: percentiles to 1e-4 with memory independent of the cache size


class TopKTask:
    name = CAUSAL_LM_TASK
    token_columns = ("input_ids", "response_start")

    def check_manifest(self, manifest: Manifest, path: Path) -> None:
        if manifest.k is None:
            raise PipelineError(f"{path} is malformed: k: a language-model cache needs an integer k")
        storage = manifest.storage
        if (storage.format_version == HYBRID_FORMAT_VERSION) != (manifest.format_version == HYBRID_FORMAT_VERSION):
            raise PipelineError(f"{path}: format version {manifest.format_version} does not go with storage '{storage.name}' (hybrid caches, and only they, are version {HYBRID_FORMAT_VERSION})")

    def schema(self, encoding: EncodingBlock) -> pa.Schema:
        return shard_schema(encoding)

    def format_version(self, plan: dict[str, Any]) -> int:
        """A plan without an encoding block was started before version 2: it finishes as version 1; a hybrid cache is version 3."""
        if "encoding" not in plan:
            return 1
        return storage_of(encoding_of(plan)).format_version

    def count_tokens(self, table: pa.Table) -> int:
        """Answer positions: len(input_ids) - response_start per row."""
        lengths = pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False)
        return int((lengths - table.column("response_start").to_numpy(zero_copy_only=False)).sum())

    def value_problems(self, table: pa.Table, manifest: Manifest) -> list[str]:
        block, k, vocab_size = manifest.encoding_block, manifest.k or 0, manifest.tokenizer.vocab_size
        if isinstance(block, CompactBlock):
            return compact_problems(table, block, k, vocab_size)
        return value_problems(table, k, vocab_size, exact_k=manifest.format_version == 1)

    def card(self, manifest: Manifest) -> str:
        return topk_card(manifest)

    def summarize(self, cache: Cache) -> dict[str, Any]:
        return summarize_topk(cache)

    def format_summary(self, summary: dict[str, Any]) -> str:
        return format_topk_summary(summary)


TOPK = TopKTask()


def compact_problems(table: pa.Table, block: CompactBlock, k: int, vocab_size: int) -> list[str]:
    """Decode a compact shard and check what decoding cannot guarantee: counts, id ranges, sampled draws."""
    ids = np.asarray(table.column("id").to_pylist(), dtype=object)
    seq_len = pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False)
    starts = table.column("response_start").to_numpy(zero_copy_only=False)
    bad_start = (starts < 1) | (starts > seq_len)
    if bad_start.any():
        return [_first(ids, bad_start, "response_start outside the sequence")]
    try:
        rows = decode(table, block)
    except PipelineError as error:
        return [f"cannot be decoded: {error}"]
    row_of_position = np.repeat(np.arange(len(ids)), rows.positions)
    row_of_entry = np.repeat(row_of_position, rows.entries)
    most = storage_of(block, k).most_ids(vocab_size)
    checks = [
        (_rows(row_of_position, (rows.entries < 1) | (rows.entries > most), len(ids)), f"a position lists no id or more than {most}"),
        (_rows(row_of_entry, rows.entry_ids >= vocab_size, len(ids)), f"a listed id is outside the vocabulary (0..{vocab_size - 1})"),
        (_rows(np.repeat(np.arange(len(ids)), seq_len), rows.input_ids >= vocab_size, len(ids)), f"an input id is outside the vocabulary (0..{vocab_size - 1})"),
    ]
    if rows.entry_counts is not None:
        draws = np.bincount(np.repeat(np.arange(len(rows.entries)), rows.entries), weights=rows.entry_counts, minlength=len(rows.entries))
        checks.append((_rows(row_of_position, draws != block.draws, len(ids)), f"a position's counts do not add up to {block.draws} draws"))
        head = block.head
        if head:
            heads = np.bincount(np.repeat(np.arange(len(rows.entries)), rows.entries), weights=rows.entry_counts == 0, minlength=len(rows.entries))
            checks.append((_rows(row_of_position, heads != head, len(ids)), f"a position does not list exactly {head} head ids (count 0)"))
        else:
            checks.append((_rows(row_of_entry, rows.entry_counts < 1, len(ids)), "a sampled id has a count of 0"))
    return [_first(ids, bad, message) for bad, message in checks if bad.any()]


def value_problems(table: pa.Table, k: int, vocab_size: int, exact_k: bool = True) -> list[str]:
    """Log-prob sanity and id ranges of one float32 shard, vectorised; each problem names its first row.

    exact_k: every position holds k entries (version 1); else 1..k (a version 2 float32 cache
    converted from a compact one keeps the compact cache's entries).
    """
    ids = np.asarray(table.column("id").to_pylist(), dtype=object)
    seq_len = pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False)
    starts = table.column("response_start").to_numpy(zero_copy_only=False)
    positions = pc.list_value_length(table.column("token_logprobs")).to_numpy(zero_copy_only=False)
    problems = []
    bad_start = (starts < 1) | (starts > seq_len)
    if bad_start.any():
        problems.append(_first(ids, bad_start, "response_start outside the sequence"))
    for column in ("topk_ids", "topk_logprobs"):
        wrong = pc.list_value_length(table.column(column)).to_numpy(zero_copy_only=False) != positions
        if wrong.any():
            problems.append(_first(ids, wrong, f"{column} has another length than token_logprobs"))
    wrong = positions != seq_len - starts
    if wrong.any():
        problems.append(_first(ids, wrong, "number of cached positions is not len(input_ids) - response_start"))
    if problems:
        return problems
    row_of_position = np.repeat(np.arange(len(ids)), positions)
    inner = pc.list_value_length(pc.list_flatten(table.column("topk_ids"))).to_numpy(zero_copy_only=False)
    wrong = inner != k if exact_k else (inner < 1) | (inner > k)
    if wrong.any():
        return [_first(ids, _rows(row_of_position, wrong, len(ids)), f"a position does not hold k={k} entries" if exact_k else f"a position lists no id or more than k={k}")]
    if (pc.list_value_length(pc.list_flatten(table.column("topk_logprobs"))).to_numpy(zero_copy_only=False) != inner).any():
        return [_first(ids, np.ones(len(ids), bool), "topk_logprobs and topk_ids differ in length at a position")]
    topk_ids, logprobs32, _ = padded_entries(decode(table, FLOAT32_BLOCK))  # padding: id 0, log-prob -inf
    logprobs = logprobs32.astype(np.float64)
    listed = np.arange(logprobs.shape[1])[None, :] < inner[:, None]
    token_logprobs = flat_values(table.column("token_logprobs"), 1).astype(np.float64)
    input_ids = flat_values(table.column("input_ids"), 1)
    with np.errstate(invalid="ignore"):  # padding: -inf - -inf in the sort check
        sorted_wrong = (np.diff(logprobs, axis=1) > 0).any(axis=1)
    checks = [
        ((~np.isfinite(logprobs) & listed).any(axis=1) | ~np.isfinite(token_logprobs), "a log-prob is not finite"),
        ((np.nan_to_num(logprobs) > 0).any(axis=1) | (np.nan_to_num(token_logprobs) > 0), "a log-prob is above 0"),
        (sorted_wrong, "top-k log-probs are not sorted, most likely first"),
        (np.exp(logprobs).sum(axis=1) > 1 + MASS_TOLERANCE, "top-k probabilities add up to more than 1"),
        (((topk_ids < 0) | (topk_ids >= vocab_size)).any(axis=1), f"a top-k id is outside the vocabulary (0..{vocab_size - 1})"),
    ]
    for bad_position, message in checks:
        if bad_position.any():
            problems.append(_first(ids, _rows(row_of_position, bad_position, len(ids)), message))
    bad_input = _rows(np.repeat(np.arange(len(ids)), seq_len), (input_ids < 0) | (input_ids >= vocab_size), len(ids))
    if bad_input.any():
        problems.append(_first(ids, bad_input, f"an input id is outside the vocabulary (0..{vocab_size - 1})"))
    return problems


def _rows(row_of_position: np.ndarray, bad_position: np.ndarray, num_rows: int) -> np.ndarray:
    return np.bincount(row_of_position[bad_position], minlength=num_rows) > 0


def _first(ids: np.ndarray, bad_rows: np.ndarray, message: str) -> str:
    return f"{message}, first in row '{ids[np.flatnonzero(bad_rows)[0]]}' ({int(bad_rows.sum())} row(s))"


def summarize_topk(cache: Cache) -> dict[str, Any]:
    """Sizes, k, the retained (listed) mass per position as a histogram, ids per position, provenance."""
    manifest = cache.manifest
    k, block = manifest.k, manifest.encoding_block
    counts = np.zeros(MASS_BINS, dtype=np.int64)
    entries = np.zeros(0, dtype=np.int64)
    mass_sum, mass_min = 0.0, 1.0
    for split in manifest.splits:
        for records in cache.batches(split, 256):
            rows = decode(records, block)
            mass = np.bincount(segment_index(rows.entries), weights=np.exp(rows.entry_logprobs.astype(np.float64)), minlength=len(rows.entries))
            counts += np.bincount(np.clip((mass * MASS_BINS).astype(np.int64), 0, MASS_BINS - 1), minlength=MASS_BINS)
            mass_sum, mass_min = mass_sum + mass.sum(), min(mass_min, float(mass.min(initial=1.0)))
            entries = _add_counts(entries, rows.entries)
    cumulative = np.cumsum(counts) / max(1, counts.sum())
    percentiles = {f"p{q}": float((np.searchsorted(cumulative, q / 100) + 1) / MASS_BINS) for q in (1, 10, 50, 90, 99)}
    tokens, size = manifest.tokens, manifest.bytes
    listed = np.arange(len(entries))
    return {
        "format_version": manifest.format_version,
        "task": manifest.task,
        "encoding": block.document(),
        "k": k,
        "rows": {name: split.rows for name, split in manifest.splits.items()},
        "tokens": tokens,
        "bytes": size,
        "bytes_per_token": size / max(1, tokens),
        "retained_mass": percentiles | {"mean": mass_sum / max(1, tokens), "min": mass_min},
        "ids_per_position": {
            "mean": float((listed * entries).sum() / max(1, entries.sum())),
            "min": int(np.flatnonzero(entries)[0]) if entries.any() else 0,
            "max": int(np.flatnonzero(entries)[-1]) if entries.any() else 0,
        },
        "teacher": manifest.teacher_summary(),
        "tokenizer": manifest.tokenizer_summary(),
    } | ({"on_policy": manifest.document["on_policy"]} if manifest.on_policy is not None else {})


def _add_counts(histogram: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Add a histogram of non-negative integers to another, growing it as needed."""
    new = np.bincount(values, minlength=len(histogram))
    new[: len(histogram)] += histogram
    return new


def encoding_line(block: EncodingBlock) -> str:
    """One line naming the encoding and its declared error bounds."""
    if isinstance(block, Float32Block):
        return "float32 (exact: int32 ids, float32 log-probs)"
    bound = block.error_bound
    words = storage_of(block).describe() + (", level-0 entries in the tail" if block.drop_zero_level else "")
    return (
        f"compact ({words}; sqrt(p) step {block.sqrt_step} (error <= {bound['sqrt_prob']:g}), "
        f"log tail step {block.tail_log_step}, token log-prob error <= {bound['token_logprob']:g}, ids {block.id_bytes} byte(s), zstd {block.zstd_level})"
    )


def format_topk_summary(summary: dict[str, Any]) -> str:
    mass, ids = summary["retained_mass"], summary["ids_per_position"]
    rows = ", ".join(f"{name} {count}" for name, count in summary["rows"].items())
    block = encoding_of(summary)
    sampled = block.drawn
    lines = [
        f"format      kd-topk-cache v{summary['format_version']} ({summary['task']}), k={summary['k']}",
        f"encoding    {encoding_line(block)}",
        f"rows        {rows}",
        f"tokens      {summary['tokens']:,} cached positions",
        f"size        {summary['bytes']:,} bytes, {summary['bytes_per_token']:.1f} bytes/token",
        f"{'unique ids' if sampled else 'listed ids'}  per position: mean {ids['mean']:.2f}, min {ids['min']}, max {ids['max']}",
        ("listed mass " if sampled else "top-k mass  ") + f"mean {mass['mean']:.4f}, min {mass['min']:.4f}, " + ", ".join(f"{name} {mass[name]:.4f}" for name in ("p1", "p10", "p50", "p90", "p99")),
        f"teacher     {summary['teacher']['name']} (weights {summary['teacher']['weights_sha256'][:12]}, {summary['teacher']['backend']}, {summary['teacher']['dtype']})",
        f"tokenizer   {summary['tokenizer']['sha256'][:12]}, vocab {summary['tokenizer']['vocab_size']}, {summary['tokenizer']['tokenizer_size']} tokens",
    ]
    if "on_policy" in summary:
        lines.append(f"on-policy   {round_line(summary['on_policy'])}")
    return "\n".join(lines)


def round_line(record: dict[str, Any]) -> str:
    """An on-policy round cache in words: the round, the student that wrote the answers and how it sampled them."""
    answers = record.get("answers") or {}
    sampling = ", ".join(f"{name} {answers[name]}" for name in ("answers_per_prompt", "temperature", "top_p", "max_new_tokens", "seed") if name in answers)
    return f"round {record['round']}: answers by the student at {record['student_path']} (weights {record['student_sha256'][:12]})" + (f"; {sampling}" if sampling else "")


def topk_card(manifest: Manifest) -> str:
    """The dataset card of a top-k or sampled cache."""
    teacher, tokenizer = manifest.teacher, manifest.tokenizer
    tokens, size = manifest.tokens, manifest.bytes
    split_rows = "\n".join(f"| {name} | {s.rows:,} | {s.tokens:,} | {len(s.shards)} | {s.bytes:,} |" for name, s in manifest.splits.items())
    settings = {"k": manifest.k, "shard_rows": manifest.shard_rows, "backend": teacher.backend, "dtype": teacher.dtype, "generation": manifest.generation}
    block = manifest.encoding_block
    created_by = manifest.created_by.version if manifest.created_by else "(not recorded)"
    return f"""# Teacher logit dataset ({manifest.format} v{manifest.format_version})

{_what(manifest.k or 0, block)} of a teacher LLM for every answer position, made by
kd-pipeline {created_by} for offline knowledge distillation. Generated from `manifest.json`.

| | |
|---|---|
| task | `{manifest.task}` |
| teacher | {teacher.name} |
| teacher weights sha256 | `{teacher.weights_sha256}` |
| tokenizer sha256 | `{tokenizer.sha256}` ({tokenizer.tokenizer_size:,} tokens, output vocabulary {tokenizer.vocab_size:,}); files in `{tokenizer.files}/` |
| chat template | {"see `manifest.json` (`tokenizer.chat_template`)" if tokenizer.chat_template else "none (raw text prompts)"} |
| k, encoding | {manifest.k}; {manifest.logprobs}; encoding `{block.name}`{"" if isinstance(block, Float32Block) else f" ({block.storage})"}; zstd Parquet |
| decoding error bound | {", ".join(f"{name} {value:g}" for name, value in block.error_bound.items())} (see `manifest.json`, `encoding`) |
| size | {tokens:,} cached positions, {size:,} bytes ({size / max(1, tokens):.1f} bytes per position) |
| source data sha256 | `{manifest.source.sha256}` |{_round_rows(manifest)}

| split | rows | positions | shards | bytes |
|---|---|---|---|---|
{split_rows}

## How it was produced

The teacher stage of kd-pipeline (`dvc repro teacher`, or `kd teacher --params params.yaml`) with these settings:

```json
{json.dumps(settings, indent=2)}
```

## Columns

{_columns(block)}

## How to load it

```python
import polars as pl
train = pl.read_parquet("train/*.parquet")

import pyarrow.dataset as ds                  # streaming, batch by batch
for batch in ds.dataset("train", format="parquet").to_batches(batch_size=64):
    ...

import duckdb
duckdb.sql("SELECT id, len(input_ids) - response_start AS positions FROM 'train/*.parquet'")

from datasets import load_dataset
data = load_dataset("parquet", data_files={{"train": "train/*.parquet", "validation": "validation/*.parquet"}})
```

Train a student with kd-pipeline (the tokenizer ships in `tokenizer/`, no teacher needed):

```bash
kd verify .   # checksums, schema, counts, log-prob sanity
kd student --cache . --out my-student
```
"""


FLOAT32_COLUMNS = """| column | type | meaning |
|---|---|---|
| `id` | string | prompt id |
| `input_ids` | list<int32> | prompt (chat template applied) followed by the teacher's answer |
| `response_start` | int32 | index of the first answer token in `input_ids` |
| `topk_ids` | list<list<int32>> | per answer position, the teacher's top-k next-token ids, most likely first |
| `topk_logprobs` | list<list<float32>> | their log-probabilities (temperature 1), descending |
| `token_logprobs` | list<float32> | per answer position, the log-probability of the actual token |

Row j of the per-position lists predicts `input_ids[response_start + j]`."""

COMPACT_COLUMNS = """| column | type | meaning |
|---|---|---|
| `id` | string | prompt id |
| `input_ids` | list<{input_ids}> | prompt (chat template applied) followed by the teacher's answer |
| `response_start` | int32 | index of the first answer token in `input_ids`; positions `response_start .. len - 1` are cached |
| `entries` | binary | per position, how many ids it lists ({entry_bytes} byte(s) each) |
| `id_gap_lo`, `id_gap_hi` | binary | the listed ids, ascending within a position, as gaps (first id, then id - previous - 1): low byte, then the {hi} higher byte(s) |
| `prob_levels` | binary | per listed id, round(sqrt(p) / {sqrt_step}) |
| `tail_levels` | binary | per position, round(-log(tail mass) / {tail_log_step}), 2 bytes |
| `token_logprob_levels` | binary | per position, round(-log p(actual token) / {token_logprob_step}), 2 bytes |{counts}

Multi-byte values are little-endian and split into byte planes within each row (all first bytes of
the row, then all second bytes). Decoding: p = max(level * step, step / 4)^2, tail = exp(-level * step),
then the listed probabilities and the tail are renormalised to sum to 1. kd-pipeline decodes these
columns (`pipeline.cache.codec.decode`); `kd convert . out --encoding float32` rewrites the cache with plain
list columns for other tools."""


def _round_rows(manifest: Manifest) -> str:
    """The card's rows of an on-policy round cache (none for any other cache, whose card is unchanged)."""
    record = manifest.on_policy
    if record is None:
        return ""
    return (
        f"\n| on-policy round | {record.round}: the answers are a student's own (sampled by it), scored by the teacher |"
        f"\n| student | {record.student_path} |"
        f"\n| student weights sha256 | `{record.student_sha256}` |"
        f"\n| student sampling | {', '.join(f'{name} {json.dumps(value)}' for name, value in record.answers.items())} |"
    )


def _what(k: int, block: EncodingBlock) -> str:
    """What a position holds, in words, by storage."""
    return storage_of(block, k).holds()


def _columns(block: EncodingBlock) -> str:
    if isinstance(block, Float32Block):
        return FLOAT32_COLUMNS
    counts = ""
    if block.drawn:
        head = f"; 0 marks the position's {block.head} exact head ids (its most likely), drawn ids come from the rest" if block.head else ""
        counts = f"\n| `counts` | binary | per listed id, how often it was drawn ({block.count_bytes} byte(s) each); a position's counts add up to {block.draws}{head} |"
    return COMPACT_COLUMNS.format(hi=block.id_bytes - 1, counts=counts, **block.document())
