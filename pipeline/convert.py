"""`kd convert`: rewrite a cache in another encoding, shard by shard, resumable.

The output goes through the same machinery as the teacher's: a plan first (the source manifest's
settings, the new encoding and the source it came from), each shard written to a temporary name and
renamed, the manifest last. A rerun skips finished shards; a directory holding another conversion
(or a teacher run) is refused. Memory is one shard.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.cache import (
    CLASSIFY_TASK,
    LOGPROBS_MEANING,
    MANIFEST_CHECKSUM,
    MANIFEST_FILE,
    PLAN_FILE,
    TOKENIZER_DIR,
    CachedShard,
    finalize_cache,
    open_cache_for_writing,
    open_shard,
    pending_shards,
    planned_shards,
    read_manifest,
    remove_temp_files,
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
    created = not dst.exists()
    try:
        open_cache_for_writing(dst, plan)
        _copy_tokenizer(src, dst)
        todo = pending_shards(dst, shards)
        if todo:
            (dst / MANIFEST_FILE).unlink(missing_ok=True)
            remove_temp_files(dst, [shard.file for shard in shards] + [PLAN_FILE, MANIFEST_FILE])
        for shard in todo:
            entry = entries[shard.file]
            parquet = open_shard(CachedShard(src / shard.file, entry["rows"], entry["bytes"], shard_schema(source_block)))
            try:
                table = parquet.read()
            except (OSError, pa.ArrowInvalid) as error:
                raise PipelineError(f"shard {src / shard.file} cannot be read: {str(error).splitlines()[0]}") from error
            write_shard(encode(decode(table, source_block), block), dst / shard.file, zstd_level(block))
    except BaseException:
        if created and len(pending_shards(dst, shards)) == len(shards):
            shutil.rmtree(dst, ignore_errors=True)
        raise
    if (dst / MANIFEST_FILE).exists():
        return read_manifest(dst)
    return finalize_cache(dst, shards)


def _copy_tokenizer(src: Path, dst: Path) -> None:
    """Ship the source's tokenizer (if it has one) with the converted cache."""
    source, target = src / TOKENIZER_DIR, dst / TOKENIZER_DIR
    if not source.is_dir() or target.exists():
        return
    tmp = dst / f".{TOKENIZER_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    os.replace(tmp, target)
