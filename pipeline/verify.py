"""`kd verify`: read a whole cache back and report every way it differs from what its manifest promises.

Readers only do the checks that cost no scan (see cache.open_shard); this module is the full
audit to run after copying a cache, or before spending GPU hours training on one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.cache import CLASSIFY_TASK, cached_tokens, checksum_problem, flat_values, load_manifest, manifest_schema, planned_shards
from pipeline.codec import FLOAT32_BLOCK, decode, manifest_encoding, padded_entries
from pipeline.errors import PipelineError
from pipeline.hashing import sha256_file

MASS_TOLERANCE = 1e-4  # float32 rounding of a top-k mass that is truly at most 1


def verify_cache(cache_dir: Path) -> list[str]:
    """One line per problem; an empty list means the cache is exactly what its manifest says."""
    cache_dir = Path(cache_dir)
    try:
        manifest = load_manifest(cache_dir)
    except PipelineError as error:
        return [str(error)]
    problems = [p for p in [checksum_problem(cache_dir, manifest)] if p]
    malformed = _structure_problem(manifest)
    if malformed:
        return problems + [f"{cache_dir / 'manifest.json'} is malformed: {malformed}"]
    problems += _manifest_problems(manifest)
    seen_ids: set[str] = set()
    for split in manifest["splits"].values():
        for entry in split["shards"]:
            problems += _shard_problems(cache_dir, entry, manifest, seen_ids)
    return problems


def _structure_problem(manifest: dict[str, Any]) -> str | None:
    """The fields the checks below read, with their types: a hand edit may have broken any of them."""
    counts = ("rows", "tokens", "bytes")
    if manifest.get("task") == CLASSIFY_TASK:
        classify = manifest.get("classify")
        if not isinstance(classify, dict) or not isinstance(classify.get("label_names"), list) or not isinstance(classify.get("labels"), dict):
            return "classify.label_names must list the labels"
    elif not isinstance(manifest.get("k"), int):
        return "k and shard_rows must be integers"
    if not isinstance(manifest.get("shard_rows"), int):
        return "k and shard_rows must be integers"
    if not isinstance(manifest.get("tokenizer"), dict) or not isinstance(manifest["tokenizer"].get("vocab_size"), int):
        return "tokenizer.vocab_size must be an integer"
    if not isinstance(manifest.get("source"), dict) or not isinstance(manifest["source"].get("rows"), dict):
        return "source.rows must map splits to row counts"
    if not isinstance(manifest.get("splits"), dict):
        return "splits must map split names to shards"
    for name, split in manifest["splits"].items():
        if not isinstance(split, dict) or not all(isinstance(split.get(key), int) for key in counts) or not isinstance(split.get("shards"), list):
            return f"split '{name}' needs integer rows, tokens, bytes and a list of shards"
        for entry in split["shards"]:
            if not isinstance(entry, dict) or not all(isinstance(entry.get(key), int) for key in counts) or not all(isinstance(entry.get(key), str) for key in ("file", "sha256")):
                return f"a shard of split '{name}' needs file, sha256 and integer rows, tokens, bytes"
    return None


def _manifest_problems(manifest: dict[str, Any]) -> list[str]:
    """The manifest against itself: planned shards listed once each, totals that add up."""
    problems = []
    planned = {shard.file for shard in planned_shards(manifest)}
    listed = [entry["file"] for split in manifest["splits"].values() for entry in split["shards"]]
    problems += [f"manifest.json does not list planned shard {file}" for file in sorted(planned - set(listed))]
    problems += [f"manifest.json lists {file}, which is not a planned shard" for file in sorted(set(listed) - planned)]
    problems += [f"manifest.json lists {file} more than once" for file in sorted({f for f in listed if listed.count(f) > 1})]
    for name, split in manifest["splits"].items():
        for key in ("rows", "tokens", "bytes"):
            total = sum(entry[key] for entry in split["shards"])
            if split[key] != total:
                problems.append(f"manifest.json: split '{name}' says {split[key]} {key}, its shards add up to {total}")
        if split["rows"] != manifest["source"]["rows"].get(name):
            problems.append(f"manifest.json: split '{name}' has {split['rows']} rows, the prepared data had {manifest['source']['rows'].get(name)}")
    return problems


def _shard_problems(cache_dir: Path, entry: dict[str, Any], manifest: dict[str, Any], seen_ids: set[str]) -> list[str]:
    file, path = entry["file"], cache_dir / entry["file"]
    if not path.exists():
        return [f"{file}: missing"]
    problems = []
    size = path.stat().st_size
    if size != entry["bytes"]:
        problems.append(f"{file}: {size} bytes, the manifest says {entry['bytes']} (truncated or rewritten)")
    if sha256_file(path) != entry["sha256"]:
        problems.append(f"{file}: sha256 differs from the manifest (the file changed after it was written)")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as error:
        return problems + [f"{file}: cannot be read as Parquet ({str(error).splitlines()[0]})"]
    task, block = manifest.get("task"), manifest_encoding(manifest)
    try:
        schema = manifest_schema(manifest)
    except PipelineError as error:
        return problems + [f"{file}: {error}"]
    if not table.schema.remove_metadata().equals(schema.remove_metadata()):
        return problems + [f"{file}: schema differs from the kd-topk-cache v{manifest['format_version']} {task or 'causal_lm_topk'} schema" + ("" if task == CLASSIFY_TASK else f" ({block['name']} encoding)")]
    if table.num_rows != entry["rows"]:
        problems.append(f"{file}: {table.num_rows} rows, the manifest says {entry['rows']}")
    tokens = cached_tokens(table, task)
    if tokens != entry["tokens"]:
        problems.append(f"{file}: {tokens} cached tokens, the manifest says {entry['tokens']}")
    duplicates = []
    for row_id in table.column("id").to_pylist():
        if row_id in seen_ids:
            duplicates.append(row_id)
        seen_ids.add(row_id)
    if duplicates:
        problems.append(f"{file}: {len(duplicates)} id(s) appear more than once in the cache, first '{duplicates[0]}'")
    vocab_size = manifest["tokenizer"]["vocab_size"]
    if task == CLASSIFY_TASK:
        from pipeline.classify_cache import classify_value_problems

        found = classify_value_problems(table, manifest)
    elif block["name"] == "compact":
        found = compact_problems(table, block, manifest["k"], vocab_size)
    else:
        found = value_problems(table, manifest["k"], vocab_size, exact_k=manifest["format_version"] == 1)
    return problems + [f"{file}: {problem}" for problem in found]


def compact_problems(table: pa.Table, block: dict[str, Any], k: int, vocab_size: int) -> list[str]:
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
    most = k if block["storage"] == "topk" else min(block["draws"], vocab_size)
    checks = [
        (_rows(row_of_position, (rows.entries < 1) | (rows.entries > most), len(ids)), f"a position lists no id or more than {most}"),
        (_rows(row_of_entry, rows.entry_ids >= vocab_size, len(ids)), f"a listed id is outside the vocabulary (0..{vocab_size - 1})"),
        (_rows(np.repeat(np.arange(len(ids)), seq_len), rows.input_ids >= vocab_size, len(ids)), f"an input id is outside the vocabulary (0..{vocab_size - 1})"),
    ]
    if rows.entry_counts is not None:
        draws = np.bincount(np.repeat(np.arange(len(rows.entries)), rows.entries), weights=rows.entry_counts, minlength=len(rows.entries))
        checks.append((_rows(row_of_position, draws != block["draws"], len(ids)), f"a position's counts do not add up to {block['draws']} draws"))
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
