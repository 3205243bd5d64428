"""`kd convert`: rewrite a cache in another encoding, shard by shard, resumable.

The output goes through the same machinery as the teacher's: a plan first (the source manifest's
settings, the new encoding and the source it came from), each shard written to a temporary name and
renamed, the manifest last. A rerun skips finished shards; a directory holding another conversion
(or a teacher run) is refused. Memory is one shard.
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.cache import (
    CLASSIFY_TASK,
    LOGPROBS_MEANING,
    MANIFEST_CHECKSUM,
    TOKENIZER_DIR,
    CachedShard,
    ShardSpec,
    fill_cache,
    open_shard,
    planned_shards,
    read_manifest,
    write_shard,
    zstd_level,
)
from pipeline.codec import CacheEncoding, decode, encode, manifest_encoding, shard_schema
from pipeline.errors import PipelineError

MANIFEST_ONLY = ("format", "format_version", "created_by", "splits", MANIFEST_CHECKSUM)


def conversion_plan(manifest: dict[str, Any], encoding: CacheEncoding) -> dict[str, Any]:
    """The source's settings with the new encoding, and which cache (by checksum) it was made from."""
    source = manifest_encoding(manifest)
    block = encoding.block(manifest["tokenizer"]["vocab_size"], manifest["k"], source.get("draws"))
    plan = {key: value for key, value in manifest.items() if key not in MANIFEST_ONLY}
    plan.update(
        logprobs=LOGPROBS_MEANING,
        encoding=block,
        converted_from={"format_version": manifest["format_version"], "encoding": source, "manifest_sha256": manifest.get(MANIFEST_CHECKSUM)},
    )
    return plan


def convert_cache(src: Path, dst: Path, encoding: CacheEncoding) -> dict[str, Any]:
    """Write `dst`, the cache at `src` in `encoding`; returns the new manifest."""
    src, dst = Path(src), Path(dst)
    manifest = read_manifest(src)
    if manifest.get("task") == CLASSIFY_TASK:
        raise PipelineError(f"{src} is a classification cache (soft labels): it has one encoding, there is nothing to convert")
    if dst.resolve() == src.resolve():
        raise PipelineError(f"convert writes a new cache: {dst} is the source itself")
    plan = conversion_plan(manifest, encoding)
    block, source_block = plan["encoding"], manifest_encoding(manifest)
    entries = {entry["file"]: entry for split in manifest["splits"].values() for entry in split["shards"]}
    shards = planned_shards(manifest)
    source_tokenizer = src / TOKENIZER_DIR
    copy_tokenizer = partial(shutil.copytree, source_tokenizer) if source_tokenizer.is_dir() else None
    return fill_cache(dst, plan, shards, partial(_convert_shards, src, dst, entries, source_block, block), copy_tokenizer)


def _convert_shards(src: Path, dst: Path, entries: dict[str, dict[str, Any]], source_block: dict[str, Any], block: dict[str, Any], shards: list[ShardSpec]) -> None:
    for shard in shards:
        entry = entries[shard.file]
        parquet = open_shard(CachedShard(src / shard.file, entry["rows"], entry["bytes"], shard_schema(source_block)))
        try:
            table = parquet.read()
        except (OSError, pa.ArrowInvalid) as error:
            raise PipelineError(f"shard {src / shard.file} cannot be read: {str(error).splitlines()[0]}") from error
        write_shard(encode(decode(table, source_block), block), dst / shard.file, zstd_level(block))
