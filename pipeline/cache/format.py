"""The cache format's names and its manifest: what every task's cache has in common.

A cache directory holds `plan.json` (the settings every worker shares, written first),
`<split>/shard-NNNNN.parquet` (each written to a temporary name, then renamed, so a file that
exists is complete), `tokenizer/`, `README.md` (the dataset card) and `manifest.json` (written
last, atomically: a cache without it is incomplete; it carries a checksum of itself, so a hand
edit shows). What the shards hold depends on the manifest's `task` (see pipeline.cache.tasks).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.errors import PipelineError
from pipeline.hashing import sha256_json, tokenizer_definition_sha256, tokenizer_sha256
from pipeline.outputs import FolderKind, holds_only
from pipeline.storage import location

FORMAT_NAME = "kd-topk-cache"
FORMAT_VERSION = 2  # what new caches are; version 1 (float32 columns, no encoding block) is still read
HYBRID_FORMAT_VERSION = 3  # version 2 plus the hybrid storage: a reader from before it refuses such a cache instead of misreading its counts
READ_VERSIONS = (1, 2, 3)
# Features a manifest's `requires` list may name. A later feature that changes what a column means is
# added to a cache's `requires` (and here, by the version that reads it): a reader refuses a cache that
# requires a feature it does not know instead of misreading it. Features that only add fields need no
# entry. Format versions only go up; none of today's storages needs an entry.
KNOWN_FEATURES: frozenset[str] = frozenset()
PLAN_FILE = "plan.json"
MANIFEST_FILE = "manifest.json"
TOKENIZER_DIR = "tokenizer"
CARD_FILE = "README.md"
MANIFEST_CHECKSUM = "manifest_sha256"
MANIFEST_ONLY = ("format", "format_version", "created_by", "splits", MANIFEST_CHECKSUM)  # what finalize adds to a plan
LOGPROBS_MEANING = "raw log-softmax of the teacher at temperature 1"  # the manifest's `logprobs` for top-k and sampled caches

CAUSAL_LM_TASK = "causal_lm_topk"
CLASSIFY_TASK = "classify_soft_labels"


def is_cache_folder(folder: Path) -> bool:
    """A cache, or the start of one: a manifest of this format, a plan of a known task, or (a worker mid-rename) only a plan's temporary."""
    for name, check in ((MANIFEST_FILE, lambda v: v.get("format") == FORMAT_NAME), (PLAN_FILE, lambda v: v.get("task") in (CAUSAL_LM_TASK, CLASSIFY_TASK) and "shard_rows" in v)):
        try:
            value = json.loads((folder / name).read_text()) if (folder / name).is_file() else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(value, dict) and check(value):
            return True
    return holds_only(folder, [PLAN_FILE], temporaries_only=True)


CACHE_FOLDER = FolderKind("cache", is_cache_folder)


def tokenizer_record(tokenizer: Any, vocab_size: int, chat_template: bool) -> dict[str, Any]:
    """The plan's `tokenizer` block: what a cached id means, and where the shipped tokenizer files are."""
    return {
        "sha256": tokenizer_sha256(tokenizer),
        "definition_sha256": tokenizer_definition_sha256(tokenizer),
        "vocab_size": vocab_size,
        "tokenizer_size": len(tokenizer),
        "chat_template": tokenizer.chat_template if chat_template else None,
        "files": TOKENIZER_DIR,
    }


DEFINITION_PARTS = "merges, normaliser, pre-tokeniser, post-processor or special tokens"  # what a "definition" difference is, in every message
VOCABULARY_ONLY = (
    "the cache records a hash of its tokenizer's vocabulary and special tokens only (it predates whole-tokenizer hashes, or its tokenizer has no `tokenizers` definition), "
    "so merges and normalisation are not checked"
)


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """Hash of everything else in the manifest: any later edit shows."""
    return sha256_json({key: value for key, value in manifest.items() if key != MANIFEST_CHECKSUM})


def load_manifest(cache_dir: Path) -> dict[str, Any]:
    """The manifest, with its format and version checked but not its checksum (see read_manifest)."""
    cache_dir = location(cache_dir)
    path = cache_dir / MANIFEST_FILE
    if not path.exists():
        hint = " (incomplete: run the teacher stage again to resume it)" if (cache_dir / PLAN_FILE).exists() else ""
        raise PipelineError(f"no cache at {cache_dir}: {MANIFEST_FILE} not found{hint}")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PipelineError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise PipelineError(f"{path} is not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") not in READ_VERSIONS:
        raise PipelineError(
            f"{path}: cache format version {manifest.get('format_version')} is not supported (this is kd-pipeline {__version__}, reading versions {', '.join(map(str, READ_VERSIONS))})"
        )
    unknown = _unknown_features(manifest.get("requires", []))
    if unknown:
        raise PipelineError(f"{path}: the cache requires {', '.join(unknown)}, which kd-pipeline {__version__} does not know: read it with the version that wrote it ({_writer(manifest)}) or later")
    return manifest


def _unknown_features(requires: Any) -> list[str]:
    """The features of a `requires` list this version cannot read (a malformed list is one unknown feature)."""
    if not isinstance(requires, list) or not all(isinstance(feature, str) for feature in requires):
        return [f"a malformed `requires` list ({json.dumps(requires)[:60]})"]
    return sorted(set(requires) - KNOWN_FEATURES)


def _writer(manifest: dict[str, Any]) -> str:
    created_by = manifest.get("created_by")
    return f"kd-pipeline {created_by.get('version')}" if isinstance(created_by, dict) and created_by.get("version") else "not recorded"


def checksum_problem(cache_dir: Path, manifest: dict[str, Any]) -> str | None:
    if MANIFEST_CHECKSUM not in manifest:
        return f"{location(cache_dir) / MANIFEST_FILE} has no {MANIFEST_CHECKSUM} (written before kd-pipeline checked manifests); `kd finalize {cache_dir}` rewrites it"
    if manifest.get(MANIFEST_CHECKSUM) != manifest_checksum(manifest):
        return f"{location(cache_dir) / MANIFEST_FILE} was changed after the teacher wrote it ({MANIFEST_CHECKSUM} does not match)"
    return None


def read_manifest(cache_dir: Path) -> dict[str, Any]:
    """The manifest of a complete, unedited cache, or a PipelineError saying why not."""
    manifest = load_manifest(cache_dir)
    problem = checksum_problem(cache_dir, manifest)
    if problem:
        raise PipelineError(f"{problem}; run `kd verify {cache_dir}`")
    return manifest
