"""The teacher cache: a versioned, self-describing set of Parquet shards (see docs/cache-format.md).

The core (format, plan, writer, reader, verify, summary) is task-agnostic; each task (top-k /
sampled language-model caches, soft-label classification caches) registers its schema, checks,
card and summary in pipeline.cache.tasks. Open a finished cache once with `Cache.open`.
"""

from pipeline.cache.format import MANIFEST_CHECKSUM, MANIFEST_FILE, PLAN_FILE, TOKENIZER_DIR, manifest_checksum, read_manifest
from pipeline.cache.reader import Cache
from pipeline.cache.writer import OtherSettingsError, fill_cache, finalize_from_plan, publish, ship_tokenizer, write_shard

__all__ = [
    "MANIFEST_CHECKSUM",
    "MANIFEST_FILE",
    "PLAN_FILE",
    "TOKENIZER_DIR",
    "Cache",
    "OtherSettingsError",
    "fill_cache",
    "finalize_from_plan",
    "manifest_checksum",
    "publish",
    "read_manifest",
    "ship_tokenizer",
    "write_shard",
]
