"""Teacher backends: engines that turn token sequences into TeacherOutput records.

Every backend returns the same TeacherOutput (raw log-probs at temperature 1, top-k sorted
descending), so the cache writer never knows which engine produced a shard.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

from pipeline.cache import SampledOutput, TeacherOutput
from pipeline.errors import PipelineError


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EngineSettings:
    """Knobs of a serving engine (vLLM); the transformers backend has none of these."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9  # GPU: share of GPU memory for weights + KV cache
    kv_cache_gib: float | None = None  # KV cache size; on CPU None means 4 GiB, on GPU it overrides the share above
    max_model_len: int | None = None  # None: the model's own limit
    enforce_eager: bool = False  # skip torch.compile / CUDA graphs: faster start, slower steps


class TeacherBackend(Protocol):
    name: str
    tokenizer: Any
    vocab_size: int  # size of the model's output distribution (ids in the cache are below it)
    max_length: int  # longest sequence the model accepts
    max_k: int  # most log-probs per position the engine returns
    can_sample: bool  # sees the full distribution at every position, so it can draw ids for a sampled cache

    def generate(self, prompts: Sequence[list[int]], settings: GenerationSettings, k: int, seed: int, draws: int | None = None) -> list[TeacherOutput | SampledOutput]:
        """Answer each tokenised prompt and return top-k records (or, with `draws`, sampled ones) for every response position."""

    def score(
        self, sequences: Sequence[list[int]], response_starts: Sequence[int], k: int, draws: int | None = None, seed: int = 0
    ) -> list[TeacherOutput | SampledOutput]:
        """Top-k records for positions response_start.. of existing sequences; with `draws`, that many ids drawn per position (seeded)."""


BACKENDS = ("transformers", "vllm")
SAMPLING_UNSUPPORTED = (
    "teacher.draws needs the teacher's full distribution at every position, which the {backend} backend does not return; use the transformers backend"
)


def load_backend(
    name: str,
    model_dir: Path,
    dtype: str = "float32",
    batch_size: int = 8,
    device: str = "cpu",
    k: int = 20,
    engine: EngineSettings | None = None,
) -> TeacherBackend:
    """`k` is the most log-probs per position the backend will be asked for (vLLM sizes its engine by it)."""
    backend = backend_class(name)
    if name == "vllm":
        return backend(model_dir, dtype=dtype, batch_size=batch_size, device=device, k=k, engine=engine or EngineSettings())
    return backend(model_dir, dtype=dtype, batch_size=batch_size, device=device)


def backend_class(name: str) -> type:
    """The class of a backend, without starting it: what it can do (`can_sample`) is known before any model loads."""
    if name == "transformers":
        from pipeline.backends.transformers_backend import TransformersBackend

        return TransformersBackend
    if name == "vllm":
        from pipeline.backends.vllm_backend import VLLMBackend

        return VLLMBackend
    raise PipelineError(f"unknown teacher backend '{name}' (choose one of: {', '.join(BACKENDS)})")
