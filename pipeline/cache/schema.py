"""What a causal-LM cache position lists, as one typed value: top-k, sampled or hybrid.

The manifest stores it as the encoding block's `storage` string (with `draws` and `head`); it is parsed
here once (`storage_of`, or `storage_for` from the teacher settings) and every rule that depends on it
lives on these classes: which ids a position may list, the format version it is written as, whether
entries carry draw counts, and what a student may do with it (divergences, tail treatment,
cross-tokenizer training). Callers ask the storage; they do not compare strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pipeline.cache.encoding import byte_width
from pipeline.cache.format import FORMAT_VERSION, HYBRID_FORMAT_VERSION
from pipeline.errors import PipelineError

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


def storage_of(block: dict[str, Any], k: int = 0) -> Storage:
    """The storage a manifest's encoding block declares (`k`, the manifest's, matters for top-k only)."""
    name = block.get("storage", "topk")
    if name == "topk":
        return TopK(k)
    if name == "sampled":
        return Sampled(block["draws"])
    if name == "hybrid":
        return Hybrid(block["draws"], block["head"])
    raise PipelineError(f"unknown cache storage '{name}' (this version reads topk, sampled and hybrid)")


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
