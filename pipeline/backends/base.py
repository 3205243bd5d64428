"""What a teacher backend is: the protocol, its settings and its output types (pipeline.backends.registry starts one).

Every backend returns the same TeacherOutput (raw log-probs at temperature 1, top-k sorted
descending) or SampledOutput, turned into cache rows here, so the cache writer never knows which
engine produced a shard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field

from pipeline.backends.sampling import draw_teacher_samples
from pipeline.cache.codec import FLOAT32_BLOCK, CacheRows, encode
from pipeline.errors import PipelineError
from pipeline.settings import Number, Positive, Settings


@dataclass
class TeacherOutput:
    """What the teacher said about one sequence, for positions response_start..len-1.

    Row j describes the prediction of input_ids[response_start + j] from the tokens before it.
    """

    input_ids: np.ndarray  # int32 [L]
    response_start: int
    topk_ids: np.ndarray  # int32 [n, k], most likely first
    topk_logprobs: np.ndarray  # float32 [n, k], descending
    token_logprobs: np.ndarray  # float32 [n], log-prob of the actual next token

    @property
    def num_positions(self) -> int:
        return len(self.input_ids) - self.response_start


@dataclass
class SampledOutput:
    """Ids drawn from the teacher for one sequence (sampled or hybrid storage), positions response_start..len-1.

    Per position: `entries[j]` listed ids; flat over positions: the ids, how often each was drawn
    (0: a hybrid cache's head id; a position's counts add up to the manifest's `encoding.draws`) and
    the teacher's log-prob of each.
    """

    input_ids: np.ndarray  # int [L]
    response_start: int
    entries: np.ndarray  # int [n]
    ids: np.ndarray  # int [sum(entries)]
    counts: np.ndarray  # int [sum(entries)]
    logprobs: np.ndarray  # float [sum(entries)], raw log-softmax at temperature 1
    token_logprobs: np.ndarray  # float [n]

    @classmethod
    def from_positions(cls, input_ids: np.ndarray, response_start: int, positions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], token_logprobs: np.ndarray) -> SampledOutput:
        """From one (ids, counts, logprobs) triple per position."""
        parts = [np.concatenate([np.asarray(p[i]) for p in positions]) if positions else np.zeros(0) for i in range(3)]
        return cls(np.asarray(input_ids), response_start, np.array([len(p[0]) for p in positions], dtype=np.int64), *parts, np.asarray(token_logprobs))

    @classmethod
    def draw(cls, sequence: Sequence[int], response_start: int, logprobs: torch.Tensor, draws: int, generator: torch.Generator, head: int = 0) -> SampledOutput:
        """Draws from the teacher's full log-probs [positions, V] at positions response_start.. (any backend that has them)."""
        logprobs = logprobs.float().cpu()
        targets = torch.as_tensor(sequence[response_start:], dtype=torch.long)
        drawn = draw_teacher_samples(logprobs, draws, generator, head)
        token_logprobs = logprobs.gather(-1, targets[:, None])[:, 0].numpy()
        return cls(np.asarray(sequence, dtype=np.int32), response_start, drawn.entries, drawn.ids, drawn.counts, drawn.logprobs, token_logprobs)

    @property
    def num_positions(self) -> int:
        return len(self.input_ids) - self.response_start


def outputs_to_rows(ids: Sequence[str], outputs: Sequence[TeacherOutput | SampledOutput]) -> CacheRows:
    """Teacher outputs (all top-k or all sampled) as flat rows, ready for any encoding."""
    if len(ids) != len(outputs):
        raise ValueError("one id per teacher output")
    sampled = bool(outputs) and isinstance(outputs[0], SampledOutput)
    if any(isinstance(o, SampledOutput) != sampled for o in outputs):
        raise PipelineError("a shard mixes top-k and sampled teacher outputs")

    def cat(values: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(values).astype(dtype) if values else np.zeros(0, dtype)

    if sampled:
        entries = cat([o.entries for o in outputs], np.int64)  # type: ignore[union-attr]
        entry_ids, logprobs = cat([o.ids for o in outputs], np.int64), cat([o.logprobs for o in outputs], np.float32)  # type: ignore[union-attr]
        counts = cat([o.counts for o in outputs], np.int64)  # type: ignore[union-attr]
    else:
        entries = np.concatenate([np.full(o.num_positions, o.topk_ids.shape[1], np.int64) for o in outputs]) if outputs else np.zeros(0, np.int64)  # type: ignore[union-attr]
        entry_ids = cat([o.topk_ids.reshape(-1) for o in outputs], np.int64)  # type: ignore[union-attr]
        logprobs, counts = cat([o.topk_logprobs.reshape(-1) for o in outputs], np.float32), None  # type: ignore[union-attr]
    return CacheRows(
        row_ids=list(ids),
        input_ids=cat([np.asarray(o.input_ids) for o in outputs], np.int64),
        seq_lengths=np.array([len(o.input_ids) for o in outputs], dtype=np.int64),
        response_start=np.array([o.response_start for o in outputs], dtype=np.int64),
        entries=entries,
        entry_ids=entry_ids,
        entry_logprobs=logprobs,
        token_logprobs=cat([np.asarray(o.token_logprobs) for o in outputs], np.float32),
        entry_counts=counts,
    )


def outputs_to_table(ids: Sequence[str], outputs: Sequence[TeacherOutput | SampledOutput], block: dict[str, Any] | None = None) -> pa.Table:
    """A shard table in the encoding of `block` (a manifest's `encoding`; default float32, the v1 columns)."""
    return encode(outputs_to_rows(ids, outputs), block or FLOAT32_BLOCK)


class GenerationSettings(Settings):
    """`teacher.generation`: how the teacher answers prompts that have no response yet."""

    max_new_tokens: Positive = 64
    temperature: Number = Field(0.7, ge=0)
    top_p: Number = Field(0.9, gt=0, le=1)
    seed: int = 0


class EngineSettings(Settings):
    """`teacher.engine`: knobs of a serving engine (vLLM); the transformers backend has none of these."""

    tensor_parallel_size: Positive = 1
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)  # GPU: share of GPU memory for weights + KV cache
    kv_cache_gib: float | None = Field(None, gt=0)  # KV cache size; on CPU None means 4 GiB, on GPU it overrides the share above
    max_model_len: Positive | None = None  # None: the model's own limit
    enforce_eager: bool = False  # skip torch.compile / CUDA graphs: faster start, slower steps


class TeacherBackend(Protocol):
    name: str
    tokenizer: Any
    vocab_size: int  # size of the model's output distribution (ids in the cache are below it)
    max_length: int  # longest sequence the model accepts
    max_k: int  # most log-probs per position the engine returns
    can_sample: bool  # sees the full distribution at every position, so it can draw ids for a sampled cache

    def generate(self, prompts: Sequence[list[int]], settings: GenerationSettings, k: int, seed: int, draws: int | None = None, head: int = 0) -> list[TeacherOutput | SampledOutput]:
        """Answer each tokenised prompt and return top-k records (or, with `draws`, sampled or hybrid ones) for every response position."""

    def answer(self, prompts: Sequence[list[int]], settings: GenerationSettings, seed: int, stop_ids: Sequence[int] | None = None) -> list[list[int]]:
        """Only the answers (token ids, ending with the stop id when the model stopped): what a judged model writes, without the scoring pass."""

    def score(self, sequences: Sequence[list[int]], response_starts: Sequence[int], k: int, draws: int | None = None, seed: int = 0, head: int = 0) -> list[TeacherOutput | SampledOutput]:
        """Top-k records for positions response_start.. of existing sequences; with `draws`, that many ids drawn per position (seeded),
        after the `head` most likely ids (a hybrid cache; `pipeline.backends.sampling.draw_teacher_samples`)."""

    def verbalizer_logprobs(self, prompts: Sequence[Sequence[int]], verbalizers: Sequence[Sequence[int]]) -> np.ndarray:
        """Raw log-prob of each verbalizer's token sequence after each prompt (classification): float64 [prompts, verbalizers]."""


BackendName = Literal["transformers", "vllm"]
BACKENDS = get_args(BackendName)
SAMPLING_UNSUPPORTED = "teacher.draws needs the teacher's full distribution at every position, which the {backend} backend does not return; use the transformers or vllm backend"
