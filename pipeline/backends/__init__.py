"""Teacher backends: engines (transformers, vLLM) that turn token sequences into cache rows."""

from pipeline.backends.base import (
    BACKENDS,
    EngineSettings,
    GenerationSettings,
    SampledOutput,
    TeacherBackend,
    TeacherOutput,
    outputs_to_rows,
    outputs_to_table,
)
from pipeline.backends.registry import backend_class, load_backend

__all__ = [
    "BACKENDS",
    "EngineSettings",
    "GenerationSettings",
    "SampledOutput",
    "TeacherBackend",
    "TeacherOutput",
    "backend_class",
    "load_backend",
    "outputs_to_rows",
    "outputs_to_table",
]
