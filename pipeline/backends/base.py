"""What a teacher backend is: the protocol and its settings (pipeline.backends.registry starts one).

Every backend returns one `pipeline.cache.rows.TeacherRow` per sequence (raw log-probs at
temperature 1; top-k sorted descending, or drawn ids with their counts), so the cache writer never
knows which engine produced a shard.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, get_args

import numpy as np
from pydantic import Field

from pipeline.cache.rows import TeacherRow
from pipeline.settings import Number, Positive, Settings


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

    def generate(self, prompts: Sequence[list[int]], settings: GenerationSettings, k: int, seed: int, draws: int | None = None, head: int = 0) -> list[TeacherRow]:
        """Answer each tokenised prompt and return its top-k row (or, with `draws`, its sampled or hybrid row) over the response positions."""

    def answer(self, prompts: Sequence[list[int]], settings: GenerationSettings, seed: int, stop_ids: Sequence[int] | None = None) -> list[list[int]]:
        """Only the answers (token ids, ending with the stop id when the model stopped): what a judged model writes, without the scoring pass."""

    def score(self, sequences: Sequence[list[int]], response_starts: Sequence[int], k: int, draws: int | None = None, seed: int = 0, head: int = 0) -> list[TeacherRow]:
        """Top-k rows for positions response_start.. of existing sequences; with `draws`, that many ids drawn per position (seeded),
        after the `head` most likely ids (a hybrid cache; `pipeline.backends.sampling.draw_teacher_samples`)."""

    def verbalizer_logprobs(self, prompts: Sequence[Sequence[int]], verbalizers: Sequence[Sequence[int]]) -> np.ndarray:
        """Raw log-prob of each verbalizer's token sequence after each prompt (classification): float64 [prompts, verbalizers]."""


BackendName = Literal["transformers", "vllm"]
BACKENDS = get_args(BackendName)
SAMPLING_UNSUPPORTED = "teacher.draws needs the teacher's full distribution at every position, which the {backend} backend does not return; use the transformers or vllm backend"
