"""The resumable, parallel cache writer every task shares: plan first, shards, manifest last.

Any worker can fill any shard (boundaries come from row counts alone); a shard file that exists
is complete (written under a temporary name, then renamed); the manifest is written once every
planned shard exists, with a checksum of itself. A rerun resumes: finished shards are kept and
what dead writers left is removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.atomic import atomic_dir, remove_temp_files, write_bytes, write_error, write_json
from pipeline.cache.codec import longest_sequence
from pipeline.cache.format import CACHE_FOLDER, CARD_FILE, FORMAT_NAME, MANIFEST_CHECKSUM, MANIFEST_FILE, PLAN_FILE, TOKENIZER_DIR, manifest_checksum
from pipeline.cache.manifest import Manifest, ShardEntry, open_manifest
from pipeline.cache.plan import ShardSpec, planned_shards, worker_shards
from pipeline.cache.schema import EncodingBlock
from pipeline.cache.tasks import CacheTask, task_of
from pipeline.errors import PipelineError
from pipeline.outputs import OVERWRITE_FLAG, claim_folder
from pipeline.storage import is_remote, location, remove_tree, upload_folder

log = logging.getLogger(__name__)

REHASH_FLAG = "--rehash"  # kd finalize: checksum shards that an earlier manifest listed with other checksums


class OtherSettingsError(PipelineError):
    """The output directory holds (part of) a cache made with another plan."""


def parquet_options(rows: int, zstd_level: int | None) -> dict[str, Any]:
    """pq.write_table options of a shard (also what bench/cache_size.py measures)."""
    options: dict[str, Any] = {"compression": "zstd", "row_group_size": max(1, min(rows, 1024))}
    if zstd_level is not None:
        options.update(compression_level=zstd_level, use_dictionary=["id"], write_statistics=False, store_schema=False)
    return options


def zstd_level(block: EncodingBlock) -> int | None:
    """The zstd level shards of this encoding are written with (None: pyarrow's default)."""
    return block.zstd_level


def entry_of(file: str, data: bytes, table: pa.Table, task: CacheTask) -> ShardEntry:
    """The one rule for a shard's entry: its Parquet bytes and the table they hold (as written, or parsed back from them)."""
    return ShardEntry(
        file=file,
        rows=table.num_rows,
        tokens=task.count_tokens(table),
        longest_sequence=longest_sequence(table),
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def shard_bytes(table: pa.Table, zstd_level: int | None = None) -> bytes:
    """A shard's Parquet bytes, serialised in memory: the same bytes pq.write_table writes to a file with these options.

    zstd_level None is pyarrow's default (the float32 encoding, byte-identical to version 1 shards).
    Compact shards skip column statistics (min/max of byte streams are noise, and cost about 3 bytes
    per token) and the embedded Arrow schema (Parquet's own types say uint16 and string already).
    """
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **parquet_options(len(table), zstd_level))
    return sink.getvalue().to_pybytes()


def write_shard(table: pa.Table, cache_dir: Path, shard: ShardSpec, task: CacheTask, zstd_level: int | None = None) -> ShardEntry:
    """Write a zstd Parquet shard under a temporary name, then rename (a shard file is never partial); returns its entry.

    The shard is serialised in memory and its entry computed from those bytes, so the process that
    wrote it can finalize without reading it back; on an object store the same bytes are PUT whole.
    """
    data = shard_bytes(table, zstd_level)
    entry = entry_of(shard.file, data, table, task)
    path = cache_dir / shard.file
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, data)
    return entry


T = TypeVar("T")


class BackgroundWriter(Generic[T]):
    """Encodes and writes shards in one background thread while the teacher computes the next ones.

    zstd and Parquet encoding release the GIL, so on a GPU teacher the writer costs the teacher
    nothing; at most `depth` shards wait, so memory stays bounded. Each write is still whole or absent
    (write_shard), so a crash loses at most the shards in flight, which a rerun recomputes (same seeds).
    An error in a write is raised in the caller at its next `submit` or at `close`. What each write
    returns (its shard's entry) is kept in `results`, in submit order, for finalize_cache.
    """

    def __init__(self, depth: int = 1) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._pending: list[Future[T]] = []
        self._depth = depth
        self.results: list[T] = []

    def submit(self, write: Callable[[], T]) -> None:
        while len(self._pending) >= self._depth:
            self.results.append(self._pending.pop(0).result())
        self._pending.append(self._pool.submit(write))

    def close(self) -> list[T]:
        """Wait for every write; the first error among them is raised. Returns every write's result."""
        try:
            while self._pending:
                self.results.append(self._pending.pop(0).result())
        finally:
            self._pool.shutdown(wait=True)
        return self.results

    def __enter__(self) -> BackgroundWriter[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:  # the caller failed: let the writes in flight finish (each whole or absent), keep the caller's error
            self._pool.shutdown(wait=True)


def open_cache_for_writing(cache_dir: Path, plan: dict[str, Any]) -> None:
    """Record the plan every worker must share.

    A rerun with the same plan resumes; a different plan in the same directory is refused, so
    shards made with other settings are never mixed in.
    """
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(cache_dir, error) from error
    plan_path = cache_dir / PLAN_FILE
    if plan_path.exists():
        existing = json.loads(plan_path.read_text())
        if existing != plan:
            changed = sorted(k for k in set(existing) | set(plan) if existing.get(k) != plan.get(k))
            raise OtherSettingsError(f"{cache_dir} holds a cache made with other settings ({', '.join(changed)} differ); use a new output directory, or pass {OVERWRITE_FLAG} to replace it")
    else:
        write_json(plan_path, plan)


def claim_cache_folder(out_dir: Path, inputs: Sequence[Path | None], overwrite: bool = False, num_workers: int = 1, option: str = "--out") -> None:
    """Check a cache's output folder before any work (pipeline.outputs); nothing is deleted here.

    Without `overwrite` an existing cache is resumed (same settings) or refused (other settings), and a
    folder of anything else is refused. With it, `fill_cache(replace=True)` clears the folder once the
    run's own checks have passed, so the cache starts afresh.
    """
    if overwrite and num_workers > 1:
        raise PipelineError(f"{OVERWRITE_FLAG} replaces the whole cache, which other workers are filling: run it with one worker")
    claim_folder(out_dir, CACHE_FOLDER, option, inputs, overwrite)


def ship_tokenizer(cache_dir: Path, save: Callable[[Path], Any]) -> None:
    """Ship the tokenizer with the cache, so a consumer can train a student without the teacher.

    `save` writes it into a temporary folder (tokenizer.save_pretrained, or a copy), renamed into place.
    Parallel workers may all save one; the first rename wins and the others drop theirs. On an
    object store it is uploaded on every run (the same files again), so one a killed run left half
    uploaded is completed.
    """
    target = cache_dir / TOKENIZER_DIR
    if is_remote(target):
        with tempfile.TemporaryDirectory() as folder:
            save(Path(folder) / TOKENIZER_DIR)  # a path that does not exist yet, as atomic_dir gives
            upload_folder(Path(folder) / TOKENIZER_DIR, target)
        return
    if target.exists():
        return
    with atomic_dir(target, replace=False) as tmp:
        save(tmp)


@dataclass(frozen=True)
class CacheJob:
    """What a task needs to fill a cache once its backend is loaded: the plan, a shard writer, the tokenizer's saver.

    The local runner calls `fill` with its worker's missing shards; the Ray runner builds one in each
    actor and calls it with one shard at a time. `fill` returns the entries of the shards it wrote
    (write_shard's), so a lone worker's finalize need not read them back.
    """

    plan: dict[str, Any]
    fill: Callable[[list[ShardSpec]], Sequence[ShardEntry]]
    save_tokenizer: Callable[[Path], Any] | None

    @property
    def shards(self) -> list[ShardSpec]:
        return planned_shards(self.plan)


def pending_shards(cache_dir: Path, shards: Sequence[ShardSpec]) -> list[ShardSpec]:
    return [shard for shard in shards if not (cache_dir / shard.file).exists()]


def fill_cache(
    out_dir: Path,
    plan: dict[str, Any],
    shards: Sequence[ShardSpec],
    fill: Callable[[list[ShardSpec]], Sequence[ShardEntry]],
    save_tokenizer: Callable[[Path], Any] | None,
    worker_index: int = 0,
    num_workers: int = 1,
    replace: bool = False,
) -> Manifest | None:
    """Write this worker's missing shards; returns the manifest once every shard exists.

    The plan is written (or checked) first, then `fill` writes this worker's missing shards, and the
    manifest comes last. A single-worker run that fails before its first shard removes the directory
    it created. `replace` (`--overwrite`, checked by claim_cache_folder) first clears what `out_dir` holds.

    A lone worker owns the folder, so its finalize takes the entries `fill` recorded for the shards it
    wrote and reads only the shards an earlier run left. With several workers the last one reads every
    shard, as `kd finalize` does: another process may have written (or rewritten) any of them.
    """
    own = worker_shards(shards, worker_index, num_workers)
    if replace:
        remove_tree(out_dir)
    created = not out_dir.exists()
    try:
        open_cache_for_writing(out_dir, plan)
        remove_temp_files(out_dir, None if num_workers == 1 else [s.file for s in own])  # a lone worker owns it all
        if save_tokenizer is not None:
            ship_tokenizer(out_dir, save_tokenizer)
        todo = pending_shards(out_dir, own)
        written: Sequence[ShardEntry] = ()
        if todo:
            (out_dir / MANIFEST_FILE).unlink(missing_ok=True)  # shards are missing: the cache is not complete
            written = fill(todo)
    except BaseException:
        if created and num_workers == 1 and len(pending_shards(out_dir, shards)) == len(shards):
            remove_tree(out_dir)
        raise
    if pending_shards(out_dir, shards):
        return None
    if (out_dir / MANIFEST_FILE).exists():
        return open_manifest(out_dir)
    return finalize_cache(out_dir, shards, written=written if num_workers == 1 else ())


def shard_entry(cache_dir: Path, shard: ShardSpec, task: CacheTask) -> ShardEntry:
    """A shard's manifest entry, from one read of its bytes (hashed, and parsed as Parquet from memory)."""
    data = (cache_dir / shard.file).read_bytes()
    return entry_of(shard.file, data, pq.ParquetFile(pa.BufferReader(data)).read(columns=list(task.token_columns)), task)


def _add_entry(cache_dir: Path, shard: ShardSpec, entry: ShardEntry, listed: dict[str, str] | None, splits: dict[str, Any]) -> None:
    """Add a shard's manifest entry to its split, refusing a shard that changed since an earlier manifest listed it."""
    if listed and shard.file in listed and listed[shard.file] != entry.sha256:
        raise PipelineError(
            f"cannot finalize {cache_dir}: {shard.file} changed after {MANIFEST_FILE} listed it (its sha256 differs); "
            f"delete it and rerun the teacher with the same --out to regenerate it, or pass {REHASH_FLAG} to accept the shards as they are now"
        )
    split = splits.setdefault(shard.split, {"rows": 0, "tokens": 0, "bytes": 0, "shards": []})
    split["rows"] += entry.rows
    split["tokens"] += entry.tokens
    split["bytes"] += entry.bytes
    split["shards"].append(entry.document())


def finalize_cache(cache_dir: Path, shards: Sequence[ShardSpec], listed: dict[str, str] | None = None, written: Sequence[ShardEntry] = ()) -> Manifest:
    """Write the dataset card and manifest.json once every planned shard exists; returns the manifest.

    `listed` maps shard files to the sha256 an earlier manifest gave them: a shard that no longer
    matches is refused, so finalizing never approves a shard that changed after it was checksummed.
    `written` are the entries this process recorded as it wrote its shards (write_shard): those
    shards are not read again; every other shard (an earlier run's, another worker's) is read.
    """
    missing = pending_shards(cache_dir, shards)
    if missing:
        raise PipelineError(f"cannot finalize {cache_dir}: {len(missing)} shard(s) missing, first {missing[0].file}")
    remove_temp_files(cache_dir, [shard.file for shard in shards])
    plan = json.loads((cache_dir / PLAN_FILE).read_text())
    task = task_of(plan)
    splits: dict[str, Any] = {}
    recorded = {entry.file: entry for entry in written}
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # reading and hashing release the GIL; entries come back in shard order
        read = pool.map(lambda shard: shard_entry(cache_dir, shard, task), [shard for shard in shards if shard.file not in recorded])
        try:
            for shard in shards:
                _add_entry(cache_dir, shard, recorded[shard.file] if shard.file in recorded else next(read), listed, splits)
        except BaseException:
            pool.shutdown(cancel_futures=True)  # a refused shard stops the run now, not after hashing the rest
            raise
    document = {
        "format": FORMAT_NAME,
        "format_version": task.format_version(plan),
        "created_by": {"package": "kd-pipeline", "version": __version__},
        **plan,
        "splits": splits,
    }
    document[MANIFEST_CHECKSUM] = manifest_checksum(document)
    manifest = Manifest.parse(document, cache_dir)  # what readers will parse: a writer never writes what they refuse
    task.check_manifest(manifest, cache_dir / MANIFEST_FILE)
    write_bytes(cache_dir / CARD_FILE, task.card(manifest).encode())
    write_json(cache_dir / MANIFEST_FILE, document)
    return manifest


def finalize_from_plan(cache_dir: Path, rehash: bool = False) -> Manifest:
    """`kd finalize`: write the manifest of a cache that parallel workers filled.

    A shard an existing manifest lists must still have the sha256 it lists (see finalize_cache), unless
    `rehash`: then the shards are taken as they are now.
    """
    cache_dir = location(cache_dir)
    plan_path = cache_dir / PLAN_FILE
    if not plan_path.exists():
        raise PipelineError(f"nothing to finalize in {cache_dir}: {PLAN_FILE} not found (run the teacher stage first)")
    listed = {}
    if (cache_dir / MANIFEST_FILE).exists() and not rehash:
        try:
            listed = {entry.file: entry.sha256 for entry in open_manifest(cache_dir, check_checksum=False).shard_entries}
        except PipelineError as error:
            raise PipelineError(
                f"cannot finalize {cache_dir}: the shard checksums of its {MANIFEST_FILE} cannot be read ({error}); pass {REHASH_FLAG} to checksum the shards as they are now"
            ) from None
    remove_temp_files(cache_dir)
    return finalize_cache(cache_dir, planned_shards(json.loads(plan_path.read_text())), listed)


def publish(fill: Callable[[Path], Manifest | None], work_dir: Path, final_dir: Path, name: str = "teacher") -> Manifest:
    """Fill a cache in `work_dir`, then move it to `final_dir` once complete (a DVC stage's output).

    DVC deletes a stage's outputs before running it, so the cache is written outside them: after a
    crash the rerun resumes from the shards in `work_dir`. A `work_dir` left by a run with other
    settings is started over.
    """
    try:
        manifest = fill(work_dir)
    except OtherSettingsError:
        log.warning("%s: %s holds an unfinished run with other settings; starting over", name, work_dir)
        shutil.rmtree(work_dir)
        manifest = fill(work_dir)
    if manifest is None:
        raise PipelineError(f"{work_dir} is not complete: shards of other workers are missing")
    shutil.rmtree(final_dir, ignore_errors=True)
    os.replace(work_dir, final_dir)
    return manifest
