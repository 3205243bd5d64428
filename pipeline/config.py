"""Turn plain dicts (a params file section, CLI options) into typed settings, rejecting unknown keys."""

from __future__ import annotations

from dataclasses import fields, replace
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


def classify_teacher_settings(section: dict[str, Any]) -> "ClassifyTeacherSettings":
    """The `classify.teacher` section: prompt fields (labels, template, ...) beside engine fields."""
    from pipeline.classify_teacher import ClassifyTeacherSettings
    from pipeline.verbalizers import ClassifyPrompt

    prompt_keys = {f.name for f in fields(ClassifyPrompt)}
    values = dict(section)
    prompt = settings_from(ClassifyPrompt, {k: v for k, v in values.items() if k in prompt_keys}, "classify.teacher")
    if not isinstance(prompt.labels, dict):
        raise PipelineError("classify.teacher.labels must map each label to its verbalizer")
    prompt = replace(prompt, labels={str(name): verbalizer for name, verbalizer in prompt.labels.items()})
    rest = {k: v for k, v in values.items() if k not in prompt_keys}
    return settings_from(ClassifyTeacherSettings, {**rest, "prompt": prompt}, "classify.teacher", ignore=("prompt",) if "prompt" in rest else ())


def classify_train_settings(section: dict[str, Any]) -> "ClassifyTrainSettings":
    """The `classify.student` section; `model` holds the classifier's architecture and sizes."""
    from pipeline.classify_student import ClassifierConfig
    from pipeline.classify_training import ClassifyTrainSettings

    values = dict(section)
    model = settings_from(ClassifierConfig, values.pop("model", None) or {}, "classify.student.model")
    return settings_from(ClassifyTrainSettings, {**values, "model": model}, "classify.student")
