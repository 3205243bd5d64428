"""The top-k cache format: Parquet shards of teacher log-probs plus a manifest.

A cache directory holds `plan.json` (the settings every worker shares, written first),
`<split>/shard-NNNNN.parquet` (each written to a temporary name, then renamed, so a file
that exists is complete) and `manifest.json` (written last, atomically: a cache without it
is incomplete; it carries a checksum of itself, so a hand edit shows). Shard boundaries depend
only on row counts, so any worker can fill any shard and a rerun skips the shards that already exist.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.codec import FLOAT32_BLOCK, V1_SCHEMA, CacheRows, encode, flat_values, manifest_encoding, shard_schema  # noqa: F401 (flat_values re-exported)
from pipeline.errors import PipelineError
from pipeline.hashing import sha256_file, sha256_json

FORMAT_NAME = "kd-topk-cache"
FORMAT_VERSION = 2  # what new caches are; version 1 (float32 columns, no encoding block) is still read
READ_VERSIONS = (1, 2)
PLAN_FILE = "plan.json"
MANIFEST_FILE = "manifest.json"
TOKENIZER_DIR = "tokenizer"
CARD_FILE = "README.md"
MANIFEST_CHECKSUM = "manifest_sha256"
TEMP_MARK = ".tmp-"
LOGPROBS_MEANING = "raw log-softmax of the teacher at temperature 1"  # the manifest's `logprobs` for top-k and sampled caches

SCHEMA = V1_SCHEMA  # the float32 encoding's columns (all of format version 1)

CAUSAL_LM_TASK = "causal_lm_topk"
CLASSIFY_TASK = "classify_soft_labels"
CLASSIFY_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),  # the text alone, teacher tokenizer, no template
        pa.field("label", pa.int32(), nullable=True),  # gold label index, null where the data has none
        pa.field("label_logprobs", pa.list_(pa.float32()), nullable=False),  # normalised over the labels
        pa.field("verbalizer_logprobs", pa.list_(pa.float32()), nullable=False),  # raw sequence log-probs
        pa.field("verbalizer_mass", pa.float32(), nullable=False),  # sum of exp(verbalizer_logprobs)
    ]
)


def _version_1_plan(plan: dict[str, Any]) -> bool:
    """A top-k plan without an encoding block was started before version 2: it finishes as version 1."""
    return (plan.get("task") or CAUSAL_LM_TASK) == CAUSAL_LM_TASK and "encoding" not in plan


def manifest_schema(manifest: dict[str, Any]) -> pa.Schema:
    """The shard schema a manifest (or plan) calls for: by its task, then by its encoding."""
    task = manifest.get("task") or CAUSAL_LM_TASK
    if task == CLASSIFY_TASK:
        return CLASSIFY_SCHEMA
    if task != CAUSAL_LM_TASK:
        raise PipelineError(f"unknown cache task '{task}' (this kd-pipeline reads: {CAUSAL_LM_TASK}, {CLASSIFY_TASK})")
    return shard_schema(manifest_encoding(manifest))


def cached_tokens(table: pa.Table, task: str | None) -> int:
    """What a manifest's `tokens` counts: answer positions of a top-k cache, text tokens of a classify cache."""
    lengths = pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False)
    if task == CLASSIFY_TASK:
        return int(lengths.sum())
    return int((lengths - table.column("response_start").to_numpy(zero_copy_only=False)).sum())


@dataclass
class TeacherOutput:
    """What the teacher said about one sequence, for positions response_start..len-1.

    Row j describes the prediction of input_ids[response_start + j] from the tokens before it.
    """

    input_ids: np.ndarray  # int32 [L]
    response_start: int
    topk_ids: np.ndarray  # int32 [n, k], most likely first
    topk_logprobs: np.ndarray  # float32 [n, k], descending
    token_logprobs: np.ndarray  # float32 [n], log-prob of the actual next token

    @property
    def num_positions(self) -> int:
        return len(self.input_ids) - self.response_start


@dataclass
class SampledOutput:
    """Ids drawn from the teacher for one sequence (sampled storage), positions response_start..len-1.

    Per position: `entries[j]` unique ids; flat over positions: the ids, how often each was drawn
    (a position's counts add up to the manifest's `encoding.draws`) and the teacher's log-prob of each.
    """

    input_ids: np.ndarray  # int [L]
    response_start: int
    entries: np.ndarray  # int [n]
    ids: np.ndarray  # int [sum(entries)]
    counts: np.ndarray  # int [sum(entries)]
    logprobs: np.ndarray  # float [sum(entries)], raw log-softmax at temperature 1
    token_logprobs: np.ndarray  # float [n]

    @classmethod
    def from_positions(
        cls, input_ids: np.ndarray, response_start: int, positions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], token_logprobs: np.ndarray
    ) -> "SampledOutput":
        """From one (ids, counts, logprobs) triple per position."""
        parts = [np.concatenate([np.asarray(p[i]) for p in positions]) if positions else np.zeros(0) for i in range(3)]
        return cls(np.asarray(input_ids), response_start, np.array([len(p[0]) for p in positions], dtype=np.int64), *parts, np.asarray(token_logprobs))

    @property
    def num_positions(self) -> int:
        return len(self.input_ids) - self.response_start


@dataclass(frozen=True)
class ShardSpec:
    split: str
    index: int
    start: int
    stop: int

    @property
    def file(self) -> str:
        return f"{self.split}/shard-{self.index:05d}.parquet"


def plan_shards(split_rows: dict[str, int], shard_rows: int) -> list[ShardSpec]:
    """Shard boundaries from row counts alone: the same on every worker and every rerun."""
    if shard_rows < 1:
        raise PipelineError(f"shard_rows must be at least 1, got {shard_rows}")
    shards = []
    for split, rows in split_rows.items():
        for index, start in enumerate(range(0, rows, shard_rows)):
            shards.append(ShardSpec(split, index, start, min(start + shard_rows, rows)))
    return shards


def worker_shards(shards: Sequence[ShardSpec], worker_index: int, num_workers: int) -> list[ShardSpec]:
    if num_workers < 1:
        raise PipelineError(f"num_workers must be at least 1, got {num_workers}")
    if not 0 <= worker_index < num_workers:
        raise PipelineError(f"worker index {worker_index} is outside 0..{num_workers - 1}")
    return [shard for i, shard in enumerate(shards) if i % num_workers == worker_index]


def outputs_to_rows(ids: Sequence[str], outputs: Sequence[TeacherOutput | SampledOutput]) -> CacheRows:
    """Teacher outputs (all top-k or all sampled) as flat rows, ready for any encoding."""
    if len(ids) != len(outputs):
        raise ValueError("one id per teacher output")
    sampled = bool(outputs) and isinstance(outputs[0], SampledOutput)
    if any(isinstance(o, SampledOutput) != sampled for o in outputs):
        raise PipelineError("a shard mixes top-k and sampled teacher outputs")

    def cat(values: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(values).astype(dtype) if values else np.zeros(0, dtype)

    if sampled:
        entries = cat([o.entries for o in outputs], np.int64)  # type: ignore[union-attr]
        entry_ids, logprobs = cat([o.ids for o in outputs], np.int64), cat([o.logprobs for o in outputs], np.float32)  # type: ignore[union-attr]
        counts = cat([o.counts for o in outputs], np.int64)  # type: ignore[union-attr]
    else:
        entries = np.concatenate([np.full(o.num_positions, o.topk_ids.shape[1], np.int64) for o in outputs]) if outputs else np.zeros(0, np.int64)  # type: ignore[union-attr]
        entry_ids = cat([o.topk_ids.reshape(-1) for o in outputs], np.int64)  # type: ignore[union-attr]
        logprobs, counts = cat([o.topk_logprobs.reshape(-1) for o in outputs], np.float32), None  # type: ignore[union-attr]
    return CacheRows(
        row_ids=list(ids),
        input_ids=cat([np.asarray(o.input_ids) for o in outputs], np.int64),
        seq_lengths=np.array([len(o.input_ids) for o in outputs], dtype=np.int64),
        response_start=np.array([o.response_start for o in outputs], dtype=np.int64),
        entries=entries,
        entry_ids=entry_ids,
        entry_logprobs=logprobs,
        token_logprobs=cat([np.asarray(o.token_logprobs) for o in outputs], np.float32),
        entry_counts=counts,
    )


def outputs_to_table(ids: Sequence[str], outputs: Sequence[TeacherOutput | SampledOutput], block: dict[str, Any] | None = None) -> pa.Table:
    """A shard table in the encoding of `block` (a manifest's `encoding`; default float32, the v1 columns)."""
    return encode(outputs_to_rows(ids, outputs), block or FLOAT32_BLOCK)


def temp_path(path: Path) -> Path:
    """Where `path` is written before its rename; the pid keeps concurrent writers apart."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def remove_temp_files(cache_dir: Path, files: Sequence[str] | None = None) -> None:
    """Delete what killed writers of these files left behind; only the files' owner may call this.

    files None: every temporary file or folder in the cache, for a caller that owns all of it
    (a single-worker run, or `kd finalize` after the workers are done).
    """
    if files is None:
        leftovers = list(cache_dir.rglob(f".*{TEMP_MARK}*"))
    else:
        leftovers = [p for file in files for p in (cache_dir / file).parent.glob(f".{Path(file).name}{TEMP_MARK}*")]
    for leftover in leftovers:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def write_error(path: Path, error: OSError) -> PipelineError:
    """One line for a failed write; a full disk says so, since the fix is space, not a rerun."""
    if error.errno == errno.ENOSPC:
        return PipelineError(f"disk full while writing {path}; free space and rerun to resume")
    return PipelineError(f"cannot write {path}: {error.strerror or error}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary name beside `path`; when the body succeeds, fsync it and rename it into place.

    A file at `path` is therefore always whole; a failed write leaves nothing and says why in one line.
    """
    tmp = temp_path(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        raise write_error(path, error) from error
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: Path, value: Any) -> None:
    _atomic_write_bytes(Path(path), (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode())


def zstd_level(block: dict[str, Any]) -> int | None:
    """The zstd level shards of this encoding are written with (None: pyarrow's default)."""
    return block.get("zstd_level")


def write_shard(table: pa.Table, path: Path, zstd_level: int | None = None) -> None:
    """Write a zstd Parquet shard under a temporary name, then rename: a shard file is never partial.

    zstd_level None is pyarrow's default (the float32 encoding, byte-identical to version 1 shards).
    Compact shards skip column statistics (min/max of byte streams are noise, and cost about 3 bytes
    per token) and the embedded Arrow schema (Parquet's own types say uint16 and string already).
    """
    with atomic_path(path) as tmp:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp, **parquet_options(len(table), zstd_level))


def parquet_options(rows: int, zstd_level: int | None) -> dict[str, Any]:
    """pq.write_table options of a shard (also what bench/cache_size.py measures)."""
    options: dict[str, Any] = {"compression": "zstd", "row_group_size": max(1, min(rows, 1024))}
    if zstd_level is not None:
        options.update(compression_level=zstd_level, use_dictionary=["id"], write_statistics=False, store_schema=False)
    return options


class OtherSettingsError(PipelineError):
    """The output directory holds (part of) a cache made with another plan."""


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
            raise OtherSettingsError(
                f"{cache_dir} holds a cache made with other settings ({', '.join(changed)} differ); "
                "use a new output directory or delete it"
            )
    else:
        write_json(plan_path, plan)


def ship_tokenizer(cache_dir: Path, save: Callable[[Path], Any]) -> None:
    """Ship the tokenizer with the cache, so a consumer can train a student without the teacher.

    `save` writes it into a temporary folder (tokenizer.save_pretrained, or a copy), renamed into place.
    Parallel workers may all save one; the first rename wins and the others drop theirs.
    """
    target = cache_dir / TOKENIZER_DIR
    if target.exists():
        return
    tmp = temp_path(target)
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    try:
        os.replace(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def fill_cache(
    out_dir: Path,
    plan: dict[str, Any],
    shards: Sequence[ShardSpec],
    fill: Callable[[list[ShardSpec]], None],
    save_tokenizer: Callable[[Path], Any] | None,
    worker_index: int = 0,
    num_workers: int = 1,
) -> dict[str, Any] | None:
    """The resumable, parallel writer every cache shares; returns the manifest once every shard exists.

    The plan is written (or checked) first, then `fill` writes this worker's missing shards, and the
    manifest comes last. A rerun resumes: finished shards are kept and what dead writers left is
    removed. A single-worker run that fails before its first shard removes the directory it created.
    """
    own = worker_shards(shards, worker_index, num_workers)
    created = not out_dir.exists()
    try:
        open_cache_for_writing(out_dir, plan)
        remove_temp_files(out_dir, None if num_workers == 1 else [s.file for s in own])  # a lone worker owns it all
        if save_tokenizer is not None:
            ship_tokenizer(out_dir, save_tokenizer)
        todo = pending_shards(out_dir, own)
        if todo:
            (out_dir / MANIFEST_FILE).unlink(missing_ok=True)  # shards are missing: the cache is not complete
            fill(todo)
    except BaseException:
        if created and num_workers == 1 and len(pending_shards(out_dir, shards)) == len(shards):
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    if pending_shards(out_dir, shards):
        return None
    if (out_dir / MANIFEST_FILE).exists():
        return read_manifest(out_dir)
    return finalize_cache(out_dir, shards)


def pending_shards(cache_dir: Path, shards: Sequence[ShardSpec]) -> list[ShardSpec]:
    return [shard for shard in shards if not (cache_dir / shard.file).exists()]


def shard_entry(cache_dir: Path, shard: ShardSpec, task: str = CAUSAL_LM_TASK) -> dict[str, Any]:
    path = cache_dir / shard.file
    parquet = pq.ParquetFile(path)
    columns = ["input_ids"] if task == CLASSIFY_TASK else ["input_ids", "response_start"]
    tokens = cached_tokens(parquet.read(columns=columns), task)
    return {
        "file": shard.file,
        "rows": parquet.metadata.num_rows,
        "tokens": tokens,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }


def planned_shards(plan: dict[str, Any]) -> list[ShardSpec]:
    """Every shard a plan (or a manifest, which contains it) calls for."""
    return plan_shards(plan["source"]["rows"], plan["shard_rows"])


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """Hash of everything else in the manifest: any later edit shows."""
    return sha256_json({key: value for key, value in manifest.items() if key != MANIFEST_CHECKSUM})


def finalize_cache(cache_dir: Path, shards: Sequence[ShardSpec]) -> dict[str, Any]:
    """Write manifest.json once every planned shard exists; returns the manifest."""
    missing = pending_shards(cache_dir, shards)
    if missing:
        raise PipelineError(f"cannot finalize {cache_dir}: {len(missing)} shard(s) missing, first {missing[0].file}")
    remove_temp_files(cache_dir, [shard.file for shard in shards])
    plan = json.loads((cache_dir / PLAN_FILE).read_text())
    splits: dict[str, Any] = {}
    for shard in shards:
        entry = shard_entry(cache_dir, shard, plan.get("task", CAUSAL_LM_TASK))
        split = splits.setdefault(shard.split, {"rows": 0, "tokens": 0, "bytes": 0, "shards": []})
        for key in ("rows", "tokens", "bytes"):
            split[key] += entry[key]
        split["shards"].append(entry)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": 1 if _version_1_plan(plan) else FORMAT_VERSION,
        "created_by": {"package": "kd-pipeline", "version": __version__},
        **plan,
        "splits": splits,
    }
    manifest[MANIFEST_CHECKSUM] = manifest_checksum(manifest)
    from pipeline.dataset_card import dataset_card

    _atomic_write_bytes(cache_dir / CARD_FILE, dataset_card(manifest).encode())
    write_json(cache_dir / MANIFEST_FILE, manifest)
    return manifest


def finalize_from_plan(cache_dir: Path) -> dict[str, Any]:
    """`kd finalize`: write the manifest of a cache that parallel workers filled."""
    plan_path = Path(cache_dir) / PLAN_FILE
    if not plan_path.exists():
        raise PipelineError(f"nothing to finalize in {cache_dir}: {PLAN_FILE} not found (run the teacher stage first)")
    remove_temp_files(Path(cache_dir))
    return finalize_cache(Path(cache_dir), planned_shards(json.loads(plan_path.read_text())))


def load_manifest(cache_dir: Path) -> dict[str, Any]:
    """The manifest, with its format and version checked but not its checksum (see read_manifest)."""
    path = Path(cache_dir) / MANIFEST_FILE
    if not path.exists():
        hint = " (incomplete: run the teacher stage again to resume it)" if (Path(cache_dir) / PLAN_FILE).exists() else ""
        raise PipelineError(f"no cache at {cache_dir}: {MANIFEST_FILE} not found{hint}")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PipelineError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise PipelineError(f"{path} is not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") not in READ_VERSIONS:
        raise PipelineError(
            f"{path}: cache format version {manifest.get('format_version')} is not supported "
            f"(this is kd-pipeline {__version__}, reading versions {', '.join(map(str, READ_VERSIONS))})"
        )
    if manifest["format_version"] >= 2 and manifest_encoding(manifest).get("name") not in ("float32", "compact"):
        raise PipelineError(f"{path}: unknown cache encoding '{manifest_encoding(manifest).get('name')}'")
    return manifest


def checksum_problem(cache_dir: Path, manifest: dict[str, Any]) -> str | None:
    if MANIFEST_CHECKSUM not in manifest:
        return f"{Path(cache_dir) / MANIFEST_FILE} has no {MANIFEST_CHECKSUM} (written before kd-pipeline checked manifests); `kd finalize {cache_dir}` rewrites it"
    if manifest.get(MANIFEST_CHECKSUM) != manifest_checksum(manifest):
        return f"{Path(cache_dir) / MANIFEST_FILE} was changed after the teacher wrote it ({MANIFEST_CHECKSUM} does not match)"
    return None


def read_manifest(cache_dir: Path) -> dict[str, Any]:
    """The manifest of a complete, unedited cache, or a PipelineError saying why not."""
    manifest = load_manifest(cache_dir)
    problem = checksum_problem(cache_dir, manifest)
    if problem:
        raise PipelineError(f"{problem}; run `kd verify {cache_dir}`")
    return manifest


@dataclass(frozen=True)
class CachedShard:
    """A shard as the manifest describes it, so a reader can tell a damaged file at open time."""

    path: Path
    rows: int
    bytes: int
    schema: pa.Schema = SCHEMA


def split_shards(cache_dir: Path, manifest: dict[str, Any], split: str) -> list[CachedShard]:
    if split not in manifest["splits"]:
        raise PipelineError(f"cache {cache_dir} has no '{split}' split (it has: {', '.join(manifest['splits'])})")
    schema = manifest_schema(manifest)
    return [CachedShard(Path(cache_dir) / e["file"], e["rows"], e["bytes"], schema) for e in manifest["splits"][split]["shards"]]


def open_shard(shard: CachedShard) -> pq.ParquetFile:
    """Open a shard after the checks that cost no scan: present, full size, schema, row count."""
    path = shard.path
    if not path.exists():
        raise PipelineError(f"shard {path} listed in the manifest is missing; rerun the teacher stage with the same --out to regenerate it")
    size = path.stat().st_size
    if size != shard.bytes:
        raise PipelineError(f"shard {path} is {size} bytes but the manifest says {shard.bytes} (truncated or rewritten); run `kd verify`")
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise PipelineError(f"shard {path} cannot be read: {str(error).splitlines()[0]}") from error
    if not parquet.schema_arrow.remove_metadata().equals(shard.schema.remove_metadata()):
        raise PipelineError(f"shard {path} does not have the schema of its manifest's encoding")
    if parquet.metadata.num_rows != shard.rows:
        raise PipelineError(f"shard {path} has {parquet.metadata.num_rows} rows but the manifest says {shard.rows}; run `kd verify`")
    return parquet


def iter_record_batches(shards: Sequence[CachedShard], batch_rows: int, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream record batches shard by shard: memory depends on batch_rows, not on the cache size."""
    for shard in shards:
        parquet = open_shard(shard)
        try:
            yield from parquet.iter_batches(batch_size=batch_rows, columns=list(columns) if columns else None)
        except (OSError, pa.ArrowInvalid) as error:
            raise PipelineError(f"shard {shard.path} cannot be read: {str(error).splitlines()[0]}") from error
