"""`Cache`: a cache opened once, the handle training, evaluation, verify, inspect and convert share.

Opening reads and checks the manifest (format, version, checksum, the task's own checks). Before a
run, `check_shards` opens every shard with the checks that cost no scan (present, full size, schema,
row count), so a missing or truncated file stops it at once. Every shard a command streams is read
whole and checked against the manifest's sha256 before any of its rows is used (`read_shard`), so
no command trains on, scores or summarises a shard that changed after the teacher wrote it. `kd
verify` is the full audit (pipeline.cache.verify).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.cache.codec import longest_sequence
from pipeline.cache.format import CAUSAL_LM_TASK, CLASSIFY_TASK, MANIFEST_FILE, TOKENIZER_DIR
from pipeline.cache.manifest import ClassifyRecord, Manifest, SplitRecord, open_manifest
from pipeline.cache.schema import EncodingBlock, Storage
from pipeline.cache.tasks import CacheTask, task_named
from pipeline.errors import PipelineError
from pipeline.storage import local_folder, location, open_for_reading


@dataclass(frozen=True)
class CachedShard:
    """A shard as the manifest describes it, so a reader can tell a damaged file at open time."""

    path: Path
    rows: int
    bytes: int
    schema: pa.Schema
    sha256: str


def open_shard(shard: CachedShard) -> pq.ParquetFile:
    """Open a shard after the checks that cost no scan: present, full size, schema, row count."""
    _check_size(shard)
    return _opened(shard, open_for_reading(shard.path))


def read_shard(shard: CachedShard) -> pq.ParquetFile:
    """A shard read whole into memory and checked against the manifest's sha256, then opened: what every reader streams.

    The bytes are read anyway; hashing them costs a fraction of decoding them (bench/checksum_cost.py).
    """
    _check_size(shard)
    try:
        data = shard.path.read_bytes()
    except OSError as error:
        raise PipelineError(f"shard {shard.path} cannot be read: {error.strerror or error}") from error
    if hashlib.sha256(data).hexdigest() != shard.sha256:
        raise PipelineError(f"shard {shard.path} changed after the teacher wrote it (its sha256 is not the manifest's): nothing was read from it; run `kd verify {shard.path.parent.parent}`")
    return _opened(shard, pa.BufferReader(data))


def _check_size(shard: CachedShard) -> None:
    path = shard.path
    if not path.exists():
        raise PipelineError(f"shard {path} listed in the manifest is missing; rerun the teacher stage with the same --out to regenerate it")
    size = path.stat().st_size
    if size != shard.bytes:
        raise PipelineError(f"shard {path} is {size} bytes but the manifest says {shard.bytes} (truncated or rewritten); run `kd verify`")


def _opened(shard: CachedShard, source: Any) -> pq.ParquetFile:
    """The shard as Parquet, with its schema and row count checked against the manifest."""
    try:
        parquet = pq.ParquetFile(source)
    except (OSError, pa.ArrowInvalid) as error:
        raise PipelineError(f"shard {shard.path} cannot be read: {str(error).splitlines()[0]}") from error
    if not parquet.schema_arrow.remove_metadata().equals(shard.schema.remove_metadata()):
        raise PipelineError(f"shard {shard.path} does not have the schema of its manifest's encoding")
    if parquet.metadata.num_rows != shard.rows:
        raise PipelineError(f"shard {shard.path} has {parquet.metadata.num_rows} rows but the manifest says {shard.rows}; run `kd verify`")
    return parquet


def iter_record_batches(shards: Sequence[CachedShard], batch_rows: int, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream record batches shard by shard, each shard checked by its sha256 first: memory is one shard's bytes plus a batch."""
    for shard in shards:
        parquet = read_shard(shard)
        try:
            yield from parquet.iter_batches(batch_size=batch_rows, columns=list(columns) if columns else None)
        except (OSError, pa.ArrowInvalid) as error:
            raise PipelineError(f"shard {shard.path} cannot be read: {str(error).splitlines()[0]}") from error


@dataclass(frozen=True)
class Cache:
    """A complete cache: its manifest (parsed once), task, encoding, tokenizer folder and shards per split."""

    path: Path
    manifest: Manifest

    @classmethod
    def open(cls, path: Path, check_checksum: bool = True) -> Cache:
        """The cache at `path`; check_checksum False opens an edited manifest too (for `kd verify`)."""
        path = location(path)
        return cls.of(path, open_manifest(path, check_checksum))

    @classmethod
    def of(cls, path: Path, manifest: Manifest) -> Cache:
        """The cache at `path` with its parsed manifest, after the task's own checks."""
        task_named(manifest.task).check_manifest(manifest, path / MANIFEST_FILE)
        return cls(path, manifest)

    @cached_property
    def task(self) -> CacheTask:
        return task_named(self.manifest.task)

    @property
    def encoding(self) -> EncodingBlock:
        """The manifest's `encoding` block (version 1 caches: float32)."""
        return self.manifest.encoding_block

    @property
    def storage(self) -> Storage:
        """What a position lists (top-k, sampled or hybrid): the rules that follow from it are its methods."""
        return self.manifest.storage

    @property
    def vocab_size(self) -> int:
        return self.manifest.tokenizer.vocab_size

    @property
    def labels(self) -> ClassifyRecord:
        """A soft-label cache's labels (the task's check at open time makes sure it has them)."""
        self.require_task(CLASSIFY_TASK, "the labels")
        assert self.manifest.classify is not None
        return self.manifest.classify

    @cached_property
    def tokenizer_dir(self) -> Path:
        """The shipped tokenizer as a local folder (downloaded once from an object store)."""
        return local_folder(self.path / TOKENIZER_DIR)

    @property
    def splits(self) -> dict[str, SplitRecord]:
        return self.manifest.splits

    def require_task(self, task: str, consumer: str, hint: str = "") -> None:
        """Refuse a cache of another task, naming what needed which (and, with `hint`, how to make the right one)."""
        if self.task.name != task:
            raise PipelineError(f"the cache holds task '{self.task.name}', but {consumer} needs '{task}' ({self.path})" + (f"; {hint}" if hint else ""))

    def has_split(self, split: str) -> bool:
        """The split is there and has rows (an evaluation-only cache has no train split; a prompt set may have no validation rows)."""
        return split in self.splits and bool(self.splits[split].shards)

    def shards(self, split: str) -> list[CachedShard]:
        """The shards of a split; a split that is absent or has no rows is a one-line error."""
        if not self.has_split(split):
            raise PipelineError(self._missing_split(split))
        schema = self.task.schema(self.encoding)
        return [CachedShard(self.path / entry.file, entry.rows, entry.bytes, schema, entry.sha256) for entry in self.splits[split].shards]

    def _missing_split(self, split: str) -> str:
        """Why a split cannot be read: an evaluation-only cache has no train split (its prompt set was all validation)."""
        rows = self.manifest.source.rows
        others = [name for name, entry in self.splits.items() if entry.shards]
        if split == "train" and rows.get("train") == 0 and others and self.task.name == CAUSAL_LM_TASK:
            return f"{self.path} has no train split: it is an evaluation-only cache (made from a prompt set with validation_fraction 1), for `kd evaluate`; train on a cache made with validation_fraction below 1"
        if rows.get(split) == 0:
            return f"cache {self.path} has no '{split}' split: its prepared data had no '{split}' rows (it has: {', '.join(others) or 'none'})"
        return f"cache {self.path} has no '{split}' split (it has: {', '.join(others) or 'none'})"

    def longest_sequence(self, split: str) -> int:
        """The longest sequence of a split: from the manifest, or (a cache from before it recorded one) read from the shards' input_ids."""
        entries = self.splits[split].shards
        if all(entry.longest_sequence is not None for entry in entries):
            return max((entry.longest_sequence or 0 for entry in entries), default=0)
        return max((longest_sequence(read_shard(shard).read(columns=["input_ids"])) for shard in self.shards(split)), default=0)

    def check_shards(self, split: str) -> None:
        """Open every shard of a split: a damaged one stops a run now, not hours in."""
        for shard in self.shards(split):
            open_shard(shard)

    def batches(self, split: str, batch_rows: int, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        return iter_record_batches(self.shards(split), batch_rows, columns)
