"""`kd verify`: read a whole cache back and report every way it differs from what its manifest promises.

Readers only do the checks that cost no scan (see pipeline.cache.reader.open_shard); this module is
the full audit to run after copying a cache, or before spending GPU hours training on one. What the
shards' values must satisfy is the task's (pipeline.cache.tasks); the rest is common to every task.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from transformers import AutoTokenizer

from pipeline.cache.codec import longest_sequence
from pipeline.cache.format import DEFINITION_PARTS, checksum_problem, load_manifest
from pipeline.cache.manifest import Manifest, ShardEntry
from pipeline.cache.reader import Cache
from pipeline.cache.tasks import task_named
from pipeline.errors import PipelineError
from pipeline.hashing import sha256_file, tokenizer_sha256
from pipeline.storage import local_folder, location, open_for_reading


def verify_cache(cache_dir: Path) -> list[str]:
    """One line per problem; an empty list means the cache is exactly what its manifest says."""
    cache_dir = location(cache_dir)
    try:
        document = load_manifest(cache_dir)
    except PipelineError as error:
        return [str(error)]
    problems = [p for p in [checksum_problem(cache_dir, document)] if p]
    try:
        manifest = Cache.of(cache_dir, Manifest.parse(document, cache_dir)).manifest
    except PipelineError as error:
        return problems + [str(error)]
    problems += manifest_problems(manifest)
    problems += _tokenizer_problems(cache_dir, manifest)
    entries = manifest.shard_entries
    id_hashes: list[np.ndarray] = []
    shard_problems = [_shard_problems(cache_dir, entry, manifest, id_hashes) for entry in entries]
    for found, entry, repeated in zip(shard_problems, entries, _repeated_ids(cache_dir, entries, id_hashes)):
        if repeated:
            found.append(f"{entry.file}: {len(repeated)} id(s) appear more than once in the cache, first '{repeated[0]}'")
    return problems + [problem for found in shard_problems for problem in found]


def _id_hashes(ids: list[str]) -> np.ndarray:
    """64-bit hashes of row ids: what the uniqueness check keeps in memory (8 bytes a row, not the ids)."""
    return np.array([int.from_bytes(hashlib.blake2b(row_id.encode(), digest_size=8).digest(), "little") for row_id in ids], dtype=np.uint64)


def _repeated_ids(cache_dir: Path, entries: list[ShardEntry], id_hashes: list[np.ndarray]) -> list[list[str]]:
    """Per shard, the ids an earlier row of the cache already had (in manifest order).

    The first pass kept only 64-bit hashes; rows whose hash occurs twice are read again and compared
    by their ids, so a hash collision never reports a duplicate that is not one.
    """
    every = np.concatenate(id_hashes) if id_hashes else np.zeros(0, dtype=np.uint64)
    values, counts = np.unique(every, return_counts=True)
    suspects = values[counts > 1]
    repeated: list[list[str]] = [[] for _ in entries]
    if not len(suspects):
        return repeated
    seen: set[str] = set()
    for index, (entry, hashes) in enumerate(zip(entries, id_hashes)):
        rows = np.flatnonzero(np.isin(hashes, suspects))
        if not len(rows):
            continue
        ids = pq.read_table(open_for_reading(cache_dir / entry.file), columns=["id"]).column("id").to_pylist()
        for row in rows:
            if ids[row] in seen:
                repeated[index].append(ids[row])
            seen.add(ids[row])
    return repeated


def manifest_problems(manifest: Manifest) -> list[str]:
    """The manifest against itself: planned shards listed once each, totals that add up."""
    problems = []
    planned = {shard.file for shard in manifest.planned_shards()}
    listed = [entry.file for entry in manifest.shard_entries]
    problems += [f"manifest.json does not list planned shard {file}" for file in sorted(planned - set(listed))]
    problems += [f"manifest.json lists {file}, which is not a planned shard" for file in sorted(set(listed) - planned)]
    problems += [f"manifest.json lists {file} more than once" for file, count in sorted(Counter(listed).items()) if count > 1]
    for name, split in manifest.splits.items():
        for key in ("rows", "tokens", "bytes"):
            total = sum(getattr(entry, key) for entry in split.shards)
            if getattr(split, key) != total:
                problems.append(f"manifest.json: split '{name}' says {getattr(split, key)} {key}, its shards add up to {total}")
        if split.rows != manifest.source.rows.get(name):
            problems.append(f"manifest.json: split '{name}' has {split.rows} rows, the prepared data had {manifest.source.rows.get(name)}")
    return problems


def _tokenizer_problems(cache_dir: Path, manifest: Manifest) -> list[str]:
    """The shipped tokenizer against the manifest's record of the one the cache was made with."""
    record = manifest.tokenizer
    folder = cache_dir / record.files
    if not folder.exists():
        return [f"{folder.name}/: missing (the manifest says the tokenizer ships there)"]
    try:
        tokenizer = AutoTokenizer.from_pretrained(local_folder(folder))
    except Exception as error:  # transformers raises many types for a broken tokenizer folder
        return [f"{folder.name}/: cannot be loaded ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"]
    difference = record.difference(tokenizer)
    if difference == "vocabulary":
        return [f"{folder.name}/: its vocabulary is {tokenizer_sha256(tokenizer)[:12]} ({len(tokenizer)} tokens), the cache was made with {record.sha256[:12]} ({record.tokenizer_size} tokens)"]
    if difference == "definition":
        return [f"{folder.name}/: it has the cache's vocabulary, but its {DEFINITION_PARTS} differ from those the cache was made with"]
    return []


def _shard_problems(cache_dir: Path, entry: ShardEntry, manifest: Manifest, id_hashes: list[np.ndarray]) -> list[str]:
    """What is wrong with one shard; appends its row-id hashes to `id_hashes` (empty for a shard that cannot be read)."""
    file, path = entry.file, cache_dir / entry.file
    id_hashes.append(np.zeros(0, dtype=np.uint64))
    if not path.exists():
        return [f"{file}: missing"]
    problems = []
    size = path.stat().st_size
    if size != entry.bytes:
        problems.append(f"{file}: {size} bytes, the manifest says {entry.bytes} (truncated or rewritten)")
    if sha256_file(path) != entry.sha256:
        problems.append(f"{file}: sha256 differs from the manifest (the file changed after it was written)")
    try:
        table = pq.read_table(open_for_reading(path))
    except (OSError, pa.ArrowInvalid) as error:
        return problems + [f"{file}: cannot be read as Parquet ({str(error).splitlines()[0]})"]
    task = task_named(manifest.task)
    if not table.schema.remove_metadata().equals(task.schema(manifest.encoding_block).remove_metadata()):
        encoding = f", {manifest.encoding.name} encoding" if manifest.encoding is not None else ""
        return problems + [f"{file}: schema differs from the one its manifest calls for (kd-topk-cache v{manifest.format_version}, {task.name}{encoding})"]
    if table.num_rows != entry.rows:
        problems.append(f"{file}: {table.num_rows} rows, the manifest says {entry.rows}")
    tokens = task.count_tokens(table)
    if tokens != entry.tokens:
        problems.append(f"{file}: {tokens} cached tokens, the manifest says {entry.tokens}")
    if entry.longest_sequence is not None and longest_sequence(table) != entry.longest_sequence:
        problems.append(f"{file}: its longest sequence is {longest_sequence(table)} tokens, the manifest says {entry.longest_sequence}")
    id_hashes[-1] = _id_hashes(table.column("id").to_pylist())
    return problems + [f"{file}: {problem}" for problem in task.value_problems(table, manifest)]
