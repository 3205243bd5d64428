"""Teacher backends: engines (transformers, vLLM) that turn token sequences into teacher rows (`pipeline.cache.rows.TeacherRow`)."""

from pipeline.backends.base import BACKENDS, EngineSettings, GenerationSettings, TeacherBackend
from pipeline.backends.registry import backend_class, load_backend

__all__ = [
    "BACKENDS",
    "EngineSettings",
    "GenerationSettings",
    "TeacherBackend",
    "backend_class",
    "load_backend",
]
