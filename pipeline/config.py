"""Turn plain dicts (a params file section, CLI options) into typed settings, rejecting unknown keys."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

from pipeline.backends import EngineSettings, GenerationSettings
from pipeline.codec import CacheEncoding
from pipeline.errors import PipelineError
from pipeline.teacher import TeacherSettings
from pipeline.training import TrainSettings

T = TypeVar("T")


def settings_from(cls: type[T], values: dict[str, Any], section: str, ignore: tuple[str, ...] = ()) -> T:
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known - set(ignore))
    if unknown:
        raise PipelineError(f"unknown setting(s) in '{section}': {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return cls(**{k: v for k, v in values.items() if k in known})


def teacher_settings(section: dict[str, Any]) -> TeacherSettings:
    values = dict(section)
    generation = settings_from(GenerationSettings, values.pop("generation", {}), "teacher.generation")
    engine = settings_from(EngineSettings, values.pop("engine", None) or {}, "teacher.engine")
    cache = settings_from(CacheEncoding, values.pop("cache", None) or {}, "teacher.cache")
    return settings_from(TeacherSettings, {**values, "generation": generation, "engine": engine, "cache": cache}, "teacher", ignore=("model",))


def train_settings(section: dict[str, Any]) -> TrainSettings:
    return settings_from(TrainSettings, section, "student", ignore=("model",))
