"""A causal-LM cache's encoding block and what its positions list, as typed values.

The manifest's `encoding` block is parsed once, with the manifest, into a `Float32Block` or a
`CompactBlock` (`EncodingBlock`, told apart by `name`); readers and writers take the typed block,
never the JSON. Its `storage` string (with `draws` and `head`) becomes a `Storage`: top-k, sampled or
hybrid (`storage_of`, or `storage_for` from the teacher settings). Every rule that depends on the
storage lives on those classes: which ids a position may list, the format version it is written as,
whether entries carry draw counts, and what a student may do with it (divergences, tail treatment,
cross-tokenizer training). Callers ask the block and the storage; they do not compare strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from pipeline.cache.encoding import byte_width
from pipeline.cache.format import FORMAT_VERSION, HYBRID_FORMAT_VERSION
from pipeline.errors import PipelineError
from pipeline.settings import Number

StorageName = Literal["topk", "sampled", "hybrid"]


@dataclass(frozen=True)
class TopK:
    """The teacher's k most likely ids per position, with their log-probs and the mass of the rest."""

    k: int
    name: ClassVar[StorageName] = "topk"
    drawn: ClassVar[bool] = False  # entries carry draw counts
    format_version: ClassVar[int] = FORMAT_VERSION

    def most_ids(self, vocab_size: int) -> int:
        """The most ids one position lists."""
        return self.k

    def holds(self) -> str:
        """What a position holds, in words (the dataset card)."""
        return f"Top-{self.k} next-token log-probabilities"

    def describe(self) -> str:
        """The storage in words (`kd inspect`)."""
        return "top-k"

    def block_fields(self) -> dict[str, Any]:
        """The encoding block's fields beyond `storage` that describe it (after the others: manifests keep their key order)."""
        return {}

    def student_problem(self, loss: str, tail: str) -> str | None:
        """Why a student with this divergence and tail treatment cannot train on the cache, or None."""
        return None

    def cross_tokenizer_problem(self) -> str | None:
        """Why cross-tokenizer training cannot use the cache, or None."""
        return None


class _Drawn:
    """What sampled and hybrid caches share: ids drawn from the teacher with their counts, after an exact head of `head` ids."""

    draws: int
    head: int
    name: ClassVar[StorageName]
    drawn: ClassVar[bool] = True

    def most_ids(self, vocab_size: int) -> int:
        """The head plus one id per draw, within the vocabulary."""
        return self.head + min(self.draws, vocab_size - self.head)

    def block_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"draws": self.draws, "count_bytes": byte_width(self.draws)}
        return fields | ({"head": self.head} if self.head else {})

    def student_problem(self, loss: str, tail: str) -> str | None:
        if loss != "forward_kl":
            return f"it supports student.loss forward_kl only (its unbiased estimator), not '{loss}'"
        if tail != "bucket":
            return f"it has no top-k tail to treat, so student.tail '{tail}' does not apply (leave it at bucket)"
        return None

    def cross_tokenizer_problem(self) -> str | None:
        return "cross-tokenizer distillation needs a top-k cache (draws cannot be mapped onto another vocabulary)"


@dataclass(frozen=True)
class Sampled(_Drawn):
    """`draws` ids drawn (with replacement) from the teacher's full distribution per position, with their counts."""

    draws: int
    head: ClassVar[int] = 0
    name: ClassVar[StorageName] = "sampled"
    format_version: ClassVar[int] = FORMAT_VERSION

    def holds(self) -> str:
        return f"{self.draws} next-token ids drawn (with replacement) from the distribution"

    def describe(self) -> str:
        return f"sampled, {self.draws} draws per position"


@dataclass(frozen=True)
class Hybrid(_Drawn):
    """The exact top-`head` ids (count 0) plus `draws` ids drawn from the rest of the distribution."""

    draws: int
    head: int
    name: ClassVar[StorageName] = "hybrid"
    format_version: ClassVar[int] = HYBRID_FORMAT_VERSION  # a reader from before hybrids refuses it instead of misreading its counts

    def holds(self) -> str:
        return f"The exact top-{self.head} next-token log-probabilities plus {self.draws} ids drawn from the rest of the distribution"

    def describe(self) -> str:
        return f"hybrid, exact top-{self.head} plus {self.draws} draws from the rest per position"


Storage = TopK | Sampled | Hybrid


def storage_for(k: int, draws: int | None, head: int = 0) -> Storage:
    """The storage the teacher settings choose: top-k without draws, sampled with them, hybrid with a head too."""
    if draws is None:
        return TopK(k)
    return Hybrid(draws, head) if head else Sampled(draws)


class _Block(BaseModel):
    """An encoding block: strict types, fields this version does not model kept (as every manifest block)."""

    model_config = ConfigDict(frozen=True, strict=True, extra="allow")

    def document(self) -> dict[str, Any]:
        """The block as the manifest lists it, fields in order (absent optional fields left out)."""
        return self.model_dump(exclude_none=True)


class Float32Block(_Block):
    """The version 1 columns: int32 ids and float32 log-probs, most likely first; exact, top-k only."""

    name: Literal["float32"]
    storage: Literal["topk"] = "topk"
    error_bound: dict[str, Number]
    zstd_level: ClassVar[None] = None  # pyarrow's default compression
    drawn: ClassVar[bool] = False


class CompactBlock(_Block):
    """Narrow input ids and per-row byte streams (docs/cache-format.md): what a reader needs to decode them."""

    name: Literal["compact"]
    storage: StorageName = "topk"  # caches from before sampled storage are top-k
    id_bytes: int = Field(ge=1, le=4)
    entry_bytes: int = Field(ge=1, le=4)
    level_bytes: int = Field(ge=1, le=4)
    input_ids: Literal["uint16", "uint32"]
    sqrt_step: Number
    drop_zero_level: bool
    tail_log_step: Number
    token_logprob_step: Number
    zstd_level: int
    error_bound: dict[str, Number]
    draws: int | None = Field(None, ge=1)  # sampled and hybrid caches
    count_bytes: int | None = Field(None, ge=1, le=4)
    head: int | None = Field(None, ge=1)  # hybrid caches

    @model_validator(mode="after")
    def _storage_fields(self) -> CompactBlock:
        drawn = self.storage != "topk"
        if drawn and (self.draws is None or self.count_bytes is None):
            raise ValueError(f"a {self.storage} encoding needs draws and count_bytes")
        if (self.storage == "hybrid") != (self.head is not None):
            raise ValueError("head is given for hybrid storage, and only for it")
        return self

    @property
    def drawn(self) -> bool:
        """Its entries carry draw counts (a sampled or hybrid cache)."""
        return self.storage != "topk"


EncodingBlock = Annotated[Float32Block | CompactBlock, Field(discriminator="name")]
FLOAT32_BLOCK = Float32Block(name="float32", error_bound={"logprob": 0.0, "token_logprob": 0.0})  # also what version 1 caches (no block) are
_ENCODING_BLOCK: TypeAdapter[Float32Block | CompactBlock] = TypeAdapter(EncodingBlock)


def encoding_of(document: dict[str, Any]) -> Float32Block | CompactBlock:
    """The encoding block of a manifest or plan document (the typed manifest parses its own); version 1 caches have none and are float32."""
    block = document.get("encoding")
    return FLOAT32_BLOCK if block is None else _ENCODING_BLOCK.validate_python(block)


def storage_of(block: Float32Block | CompactBlock, k: int = 0) -> Storage:
    """The storage an encoding block declares (`k`, the manifest's, matters for top-k only)."""
    if block.storage == "sampled":
        assert isinstance(block, CompactBlock) and block.draws is not None  # checked when the block was parsed
        return Sampled(block.draws)
    if block.storage == "hybrid":
        assert isinstance(block, CompactBlock) and block.draws is not None and block.head is not None
        return Hybrid(block.draws, block.head)
    return TopK(k)


def check_student(storage: Storage, path: Path, loss: str, tail: str) -> None:
    """Refuse a student setting the cache's storage does not support, naming the cache."""
    problem = storage.student_problem(loss, tail)
    if problem:
        raise PipelineError(f"{path} is a {storage.name} cache: {problem}")


def check_cross_tokenizer(storage: Storage, path: Path) -> None:
    """Refuse cross-tokenizer training on a cache whose ids cannot be mapped."""
    problem = storage.cross_tokenizer_problem()
    if problem:
        raise PipelineError(f"{path} is a {storage.name} cache: {problem}")
