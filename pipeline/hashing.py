"""Content hashes recorded in manifests, so a cache says exactly what produced it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.storage import is_remote

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def sha256_file(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") if is_remote(path) else open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    """Hash of a JSON-serialisable value, independent of dict order."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def sha256_rows(rows: Iterable[Any]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def weights_sha256(model_dir: Path) -> str:
    """Hash of every weight file in a checkpoint folder (names and bytes, in name order)."""
    files = sorted(p for p in Path(model_dir).iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) in {model_dir}")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def tokenizer_sha256(tokenizer: Any) -> str:
    """Hash of the token -> id mapping and special tokens: what a cached id means."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return sha256_json({"vocab": vocab, "special": tokenizer.all_special_tokens})


TOKENIZER_RUNTIME_KEYS = ("version", "truncation", "padding")  # settings of a call, not of what text becomes which ids


def tokenizer_definition_sha256(tokenizer: Any) -> str | None:
    """Hash of the whole tokenizer: vocabulary, merges, normaliser, pre-tokeniser, post-processor, decoder,
    added tokens, and which tokens are BOS, EOS, PAD and the other special ones.

    Two tokenizers with this hash in common turn every text into the same ids and back. None for a
    tokenizer without a `tokenizers` definition (a slow, Python-only one).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    definition = {key: value for key, value in json.loads(backend.to_str()).items() if key not in TOKENIZER_RUNTIME_KEYS}
    model = definition.get("model") or {}
    if isinstance(model.get("merges"), list):  # older `tokenizers` write a merge as "a b", newer ones as ["a", "b"]
        model["merges"] = [merge.split(" ", 1) if isinstance(merge, str) else merge for merge in model["merges"]]
    return sha256_json({"definition": definition, "special": tokenizer.special_tokens_map})
