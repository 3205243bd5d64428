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

from pipeline.cache.codec import CacheEncoding, decode, encode
from pipeline.cache.format import CAUSAL_LM_TASK, LOGPROBS_MEANING, MANIFEST_ONLY
from pipeline.cache.manifest import Manifest, ShardEntry
from pipeline.cache.plan import ShardSpec
from pipeline.cache.reader import Cache, CachedShard, read_shard
from pipeline.cache.schema import EncodingBlock
from pipeline.cache.topk import TOPK
from pipeline.cache.writer import claim_cache_folder, fill_cache, write_shard, zstd_level
from pipeline.errors import PipelineError
from pipeline.storage import location, same_location


def conversion_plan(manifest: Manifest, block: EncodingBlock) -> dict[str, Any]:
    """The source's settings with the new encoding block, and which cache (by checksum) it was made from."""
    plan = {key: value for key, value in manifest.document.items() if key not in MANIFEST_ONLY}
    plan.update(
        logprobs=LOGPROBS_MEANING,
        encoding=block.document(),
        converted_from={"format_version": manifest.format_version, "encoding": manifest.document.get("encoding") or manifest.encoding_block.document(), "manifest_sha256": manifest.manifest_sha256},
    )
    return plan


def convert_cache(src: Path, dst: Path, encoding: CacheEncoding, overwrite: bool = False) -> Manifest:
    """Write `dst`, the cache at `src` in `encoding`; returns the new manifest. `overwrite` replaces what `dst` holds."""
    source = Cache.open(src)
    source.require_task(CAUSAL_LM_TASK, "kd convert", "a classification cache has one encoding, there is nothing to convert")
    dst = location(dst)
    if same_location(dst, source.path):
        raise PipelineError(f"convert writes a new cache: {dst} is the source itself")
    claim_cache_folder(dst, [source.path], overwrite, option="DST")
    block = encoding.block(source.vocab_size, source.manifest.storage)
    plan = conversion_plan(source.manifest, block)
    shards = {entry.file: shard for split in source.splits for entry, shard in zip(source.splits[split].shards, source.shards(split))}
    copy_tokenizer = partial(shutil.copytree, source.tokenizer_dir) if source.tokenizer_dir.is_dir() else None
    fill = partial(_convert_shards, shards, dst, source.encoding, block, source.vocab_size)
    manifest = fill_cache(dst, plan, source.manifest.planned_shards(), fill, copy_tokenizer, replace=overwrite)
    assert manifest is not None  # one worker fills every shard
    return manifest


def _convert_shards(sources: dict[str, CachedShard], dst: Path, source_block: EncodingBlock, block: EncodingBlock, vocab_size: int, shards: list[ShardSpec]) -> list[ShardEntry]:
    written: list[ShardEntry] = []
    for shard in shards:
        source = sources[shard.file]
        try:
            table = read_shard(source).read()
        except (OSError, pa.ArrowInvalid) as error:
            raise PipelineError(f"shard {source.path} cannot be read: {str(error).splitlines()[0]}") from error
        rows = decode(table, source_block)
        outside = rows.id_outside(vocab_size)
        if outside:
            raise PipelineError(f"shard {source.path}: {outside}; the cache is damaged: run `kd verify`")
        written.append(write_shard(encode(rows, block), dst, shard, TOPK, zstd_level(block)))
    return written
