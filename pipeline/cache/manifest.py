"""The manifest as a typed value: parsed once when a cache is opened (and before one is written).

`manifest.json` is the contract between teams, so its fields are checked here, once, with their
types: a hand edit that breaks one is a one-line error naming the field, and no reader looks a
field up by string. The model keeps the JSON document it was parsed from (`document`): that is
what the checksum covers and what is written, so a manifest's bytes never depend on this model.
Fields this version does not model (a task's own settings such as `generation`) are kept as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from pipeline.cache.format import CAUSAL_LM_TASK, MANIFEST_FILE, TOKENIZER_DIR, load_manifest, read_manifest
from pipeline.cache.plan import ShardSpec, plan_shards
from pipeline.cache.schema import FLOAT32_BLOCK, EncodingBlock, Storage, storage_of
from pipeline.errors import PipelineError
from pipeline.hashing import tokenizer_definition_sha256, tokenizer_sha256
from pipeline.storage import location

TokenizerDifference = Literal["vocabulary", "definition"]


class _Record(BaseModel):
    """A manifest block: strict types (a hand-edited "12" is not 12), fields this version does not model kept."""

    model_config = ConfigDict(frozen=True, strict=True, extra="allow")


class ShardEntry(_Record):
    """One shard as the teacher wrote it: what a reader checks the file against."""

    file: str
    rows: int
    tokens: int
    longest_sequence: int | None = None  # caches from before it was recorded
    bytes: int
    sha256: str

    def document(self) -> dict[str, Any]:
        """The entry as manifest.json lists it, fields in order."""
        return self.model_dump()


class SplitRecord(_Record):
    rows: int
    tokens: int
    bytes: int
    shards: list[ShardEntry]


class TokenizerRecord(_Record):
    """What a cached id means: the tokenizer's hashes and sizes, and where its files ship."""

    sha256: str
    definition_sha256: str | None = None  # caches from before whole-tokenizer hashes
    vocab_size: int
    tokenizer_size: int | None = None
    chat_template: str | None = None
    files: str = TOKENIZER_DIR

    def difference(self, tokenizer: Any) -> TokenizerDifference | None:
        """How `tokenizer` differs from the one recorded here, or None when it is that one.

        "vocabulary": another token -> id mapping or other special tokens; "definition": the same
        vocabulary, but merges, normaliser, pre-tokeniser, post-processor or special-token roles differ,
        so the same text becomes other ids. A record without `definition_sha256` checks the vocabulary only.
        """
        if tokenizer_sha256(tokenizer) != self.sha256:
            return "vocabulary"
        if self.definition_sha256 is not None and tokenizer_definition_sha256(tokenizer) != self.definition_sha256:
            return "definition"
        return None


class TeacherRecord(_Record):
    name: str
    path: str | None = None
    weights_sha256: str | None = None
    backend: str | None = None
    dtype: str | None = None


class SourceRecord(_Record):
    """The prepared data the cache was made from: its hash and rows per split (which fix the shards)."""

    sha256: str | None = None
    rows: dict[str, int]


class CreatedBy(_Record):
    package: str
    version: str


class ClassifyRecord(_Record):
    """A soft-label cache's labels: their names in index order, verbalizers and how they were scored."""

    labels: dict[str, str]
    template: str
    system: str | None
    assistant_prefix: str
    chat_template: bool
    scoring: str
    label_names: list[str]
    verbalizer_ids: list[list[int]]


class OnPolicyRecord(_Record):
    """An on-policy round cache: the teacher scored answers that this student wrote (pipeline.lm.on_policy).

    `answers` are the sampling settings the student answered with (answers per prompt, temperature,
    top-p, new tokens, seed, batch size, backend); `prompts_sha256` is the hash of the prepared train
    rows the prompts came from.
    """

    round: int
    student_sha256: str
    student_path: str
    prompts_sha256: str | None = None
    answers: dict[str, Any] = {}


class Manifest(_Record):
    """A complete cache's manifest. `format`, `format_version` and `requires` are checked before parsing (pipeline.cache.format)."""

    format: str
    format_version: int
    created_by: CreatedBy | None = None
    task: str = CAUSAL_LM_TASK  # version 1 caches have none: they are top-k caches
    teacher: TeacherRecord
    tokenizer: TokenizerRecord
    k: int | None = None  # language-model caches
    encoding: EncodingBlock | None = None  # version 1 caches have none (float32); see pipeline.cache.schema
    classify: ClassifyRecord | None = None  # soft-label caches
    generation: dict[str, Any] | None = None
    converted_from: dict[str, Any] | None = None  # `kd convert`: the source's version, encoding and manifest checksum
    on_policy: OnPolicyRecord | None = None  # a round cache: which student wrote the answers the teacher scored
    logprobs: str | None = None
    source: SourceRecord
    shard_rows: int
    splits: dict[str, SplitRecord]
    requires: list[str] = []
    manifest_sha256: str | None = None  # caches from before manifests were checksummed
    _document: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def parse(cls, document: dict[str, Any], path: Path) -> Manifest:
        """The manifest a JSON document holds, or a one-line PipelineError naming the malformed field."""
        try:
            manifest = cls.model_validate(document)
        except ValidationError as error:
            raise PipelineError(f"{path / MANIFEST_FILE} is malformed: {_problems(error)}") from None
        manifest._document = document
        return manifest

    @property
    def document(self) -> dict[str, Any]:
        """The JSON document, as written: what the checksum covers, and what a copy or conversion starts from."""
        return self._document

    @property
    def encoding_block(self) -> EncodingBlock:
        """The `encoding` block (version 1 caches: float32)."""
        return self.encoding or FLOAT32_BLOCK

    @property
    def storage(self) -> Storage:
        """What a position lists (top-k, sampled or hybrid)."""
        return storage_of(self.encoding_block, self.k or 0)

    def planned_shards(self) -> list[ShardSpec]:
        """Every shard the cache's rows and shard size call for."""
        return plan_shards(self.source.rows, self.shard_rows)

    @property
    def shard_entries(self) -> list[ShardEntry]:
        """Every shard, in manifest order."""
        return [entry for split in self.splits.values() for entry in split.shards]

    @property
    def tokens(self) -> int:
        return sum(split.tokens for split in self.splits.values())

    @property
    def bytes(self) -> int:
        return sum(split.bytes for split in self.splits.values())

    def teacher_summary(self) -> dict[str, Any]:
        """The teacher block as `kd inspect --json` prints it."""
        return self._document["teacher"]

    def tokenizer_summary(self) -> dict[str, Any]:
        return {"sha256": self.tokenizer.sha256, "vocab_size": self.tokenizer.vocab_size, "tokenizer_size": self.tokenizer.tokenizer_size}


def _problems(error: ValidationError) -> str:
    """Each problem with its field path, and the value found where it is short."""
    problems = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"])
        found = item["input"]
        shown = "" if item["type"] == "missing" or isinstance(found, (dict, list)) else f", got {json.dumps(found)[:40]}"
        problems.append(f"{path}: {item['msg'][0].lower()}{item['msg'][1:]}{shown}")
    return "; ".join(problems)


def open_manifest(cache_dir: Path, check_checksum: bool = True) -> Manifest:
    """The typed manifest of a complete cache: format, version and `requires` checked, then its checksum (unless not asked), then its fields."""
    cache_dir = location(cache_dir)
    document = read_manifest(cache_dir) if check_checksum else load_manifest(cache_dir)
    return Manifest.parse(document, cache_dir)
