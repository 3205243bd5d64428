"""Whether a student can learn from a cache: the task, the tokenizer, the storage and the sequence lengths, checked before any work."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from pipeline.cache.format import CAUSAL_LM_TASK, DEFINITION_PARTS, VOCABULARY_ONLY
from pipeline.cache.reader import Cache
from pipeline.cache.schema import check_student
from pipeline.errors import PipelineError
from pipeline.hashing import tokenizer_sha256
from pipeline.lm.student import SCRATCH
from pipeline.lm.student_settings import StudentSettings

log = logging.getLogger(__name__)


def tokenizer_mismatch(cache: Cache, tokenizer: Any, tokenizer_path: Path) -> str | None:
    """Why a student's tokenizer is not the one the cache was made with (the whole tokenizer, where the cache records it), or None."""
    record = cache.manifest.tokenizer
    difference = record.difference(tokenizer)
    if difference is None:
        return None
    actual = f"{tokenizer_sha256(tokenizer)[:12]} ({len(tokenizer)} tokens)" if difference == "vocabulary" else f"the same vocabulary with other {DEFINITION_PARTS}"
    made_with = f"the cache was made with tokenizer {record.sha256[:12]} ({record.tokenizer_size} tokens)"
    if Path(tokenizer_path) == Path(cache.tokenizer_dir):
        return f"tokenizer mismatch: {made_with}, but the one shipped in {tokenizer_path} is {actual}: it was changed after the teacher wrote it; restore it, or give the teacher's tokenizer with --tokenizer"
    hint = "to distil across tokenizers set student.cross_tokenizer" if difference == "vocabulary" else "the same text would become other ids: use the tokenizer the cache was made with"
    return f"tokenizer mismatch: {made_with}, the student's at {tokenizer_path} is {actual}; {hint}"


def check_compatibility(cache: Cache, tokenizer: Any, tokenizer_path: Path, settings: StudentSettings) -> None:
    """Refuse a cache this student cannot learn from, saying what differs."""
    cache.require_task(CAUSAL_LM_TASK, "a causal LM student")
    mismatch = tokenizer_mismatch(cache, tokenizer, tokenizer_path)
    if mismatch:
        raise PipelineError(mismatch)
    if cache.manifest.tokenizer.definition_sha256 is None:
        log.warning("%s: %s", cache.path, VOCABULARY_ONLY)
    check_student(cache.storage, cache.path, settings.loss, settings.tail)


def check_positions(student: torch.nn.Module, cache: Cache, init: str) -> None:
    """Refuse a student whose position limit is below the cache's longest sequence: it would train past what it was built for."""
    limit = student.config.max_position_embeddings
    longest = max(cache.longest_sequence(split) for split in cache.splits if cache.has_split(split))
    if longest > limit:
        where = "student.model.max_position_embeddings" if init == SCRATCH else f"the student's max_position_embeddings ({init})"
        raise PipelineError(f"{where} is {limit}, but {cache.path} holds a sequence of {longest} tokens: raise it to at least {longest}")


def student_tokenizer_path(cache: Cache, tokenizer_path: Path | None, init: str = SCRATCH) -> Path:
    """The tokenizer given, else a pretrained student's own, else the one shipped inside the cache."""
    own = Path(init) if init != SCRATCH and (Path(init) / "tokenizer_config.json").exists() else None
    path = tokenizer_path or own or cache.tokenizer_dir
    if not path.exists():
        raise PipelineError(f"no tokenizer at {path}: this cache does not ship one, pass the teacher's tokenizer folder")
    return path
