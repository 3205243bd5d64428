"""Which backends exist and how to start one by name."""

from __future__ import annotations

from pathlib import Path

from pipeline.backends.base import BACKENDS, EngineSettings, TeacherBackend
from pipeline.errors import PipelineError


def load_backend(
    name: str,
    model_dir: Path,
    dtype: str = "float32",
    batch_size: int = 8,
    device: str = "cpu",
    k: int = 20,
    engine: EngineSettings | None = None,
    sampling: bool = False,
) -> TeacherBackend:
    """`k` is the most log-probs per position the backend will be asked for (vLLM sizes its engine by it);
    `sampling`: it will be asked for draws (vLLM then serves the full distribution from a pooling engine)."""
    backend = backend_class(name)
    if name == "vllm":
        return backend(model_dir, dtype=dtype, batch_size=batch_size, device=device, k=k, engine=engine or EngineSettings(), sampling=sampling)
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
