"""Typed settings: pydantic models validated once, where params.yaml or CLI options are read.

Every section model derives from `Settings`: unknown keys are refused, choices are `Literal`s,
bounds are `Field` constraints, and a bad value is one PipelineError line that names its key path
(`student.loss: 'fkl' is not one of 'forward_kl', 'reverse_kl', ...`).
"""

from __future__ import annotations

import difflib
import types
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from pipeline.errors import PipelineError

S = TypeVar("S", bound="Settings")
_validating: ContextVar[bool] = ContextVar("settings_validating", default=False)  # inside an outer model's validation

Number = Union[int, float]  # a whole number stays one: settings copied into a cache plan keep their YAML form
Alpha = Annotated[float, Field(ge=0, le=1)]  # weight of the distillation term; 1 - alpha on CE
Temperature = Annotated[float, Field(gt=0)]
Positive = Annotated[int, Field(ge=1)]

# The sections a params file may have, and those of its sections made of sections. pipeline.params
# assembles their models (a test checks that both agree); the names live here so that every entry
# point refuses a misspelled section (`studnet:`) without importing every task's code.
PARAMS_SECTIONS: dict[str, tuple[str, ...]] = {"data": (), "teacher": (), "student": (), "evaluate": (), "judge": (), "on_policy": (), "classify": ("data", "teacher", "student", "evaluate")}


class Settings(BaseModel):
    """A settings section: frozen, no unknown keys, errors as one line with the key path."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_are_defaults(cls, values: Any) -> Any:
        """A section key with nothing under it (YAML `engine:`) means that section's defaults."""
        if isinstance(values, dict):
            return {key: ({} if value is None and _is_section(cls, key) else value) for key, value in values.items()}
        return {} if values is None else values

    @field_validator("*", mode="before")
    @classmethod
    def _booleans_are_not_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML `true` is not a number, nor 1 a boolean: pydantic would read `lr: true` as 1.0 and `chat_template: 1` as true."""
        field = cls.model_fields.get(info.field_name or "")
        if field is None:
            return value
        if _takes_number(field.annotation) and _holds_bool(value):
            raise ValueError(f"expected a number, got {_yaml(value)}")
        if _takes_bool(field.annotation) and value is not None and not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_yaml(value)}")
        return value

    def __init__(self, **values: Any) -> None:
        # pydantic calls a custom __init__ for nested models too: only the outermost call turns the
        # validation error (with every key path) into a PipelineError.
        outermost = not _validating.get()
        token = _validating.set(True)
        try:
            super().__init__(**values)
        except ValidationError as error:
            if not outermost:
                raise
            raise PipelineError(describe(error, type(self))) from None
        finally:
            _validating.reset(token)

    @classmethod
    def from_section(cls: type[S], values: dict[str, Any] | None, section: str = "") -> S:
        """Validate a params section (a dict, or None for all defaults); `section` prefixes error paths."""
        token = _validating.set(True)
        try:
            return cls.model_validate(values or {})
        except ValidationError as error:
            raise PipelineError(describe(error, cls, section)) from None
        finally:
            _validating.reset(token)

    def updated(self: S, section: str = "", **changes: Any) -> S:
        """A copy with `changes` (None values skipped), validated like the section itself: the CLI's overrides."""
        given = {name: value for name, value in changes.items() if value is not None}
        return type(self).from_section(merge(self.model_dump(), given), section)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: merged keys may be overridden, as YAML means
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key '{key}' appears twice in one section (lines {seen[key]} and {key_node.start_mark.line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_params_file(path: Path) -> dict[str, Any]:
    """A YAML params file (params.yaml, or one given with --params) as a dict of sections."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"params file not found: {path}")
    try:
        values: Any = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}  # noqa: S506  # a SafeLoader
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None)
        where = f" (line {error.problem_mark.line + 1})" if getattr(error, "problem_mark", None) is not None and "line" not in str(problem) else ""
        raise PipelineError(f"{path} is not valid YAML: {problem or str(error).splitlines()[0]}{where}") from error
    if not isinstance(values, dict):
        raise PipelineError(f"{path} must hold a mapping of sections (data, teacher, student, ...)")
    for key, value in values.items():
        _check_section_name(path, str(key), list(PARAMS_SECTIONS))
        if PARAMS_SECTIONS.get(key) and isinstance(value, dict):
            for inner in value:
                _check_section_name(path, f"{key}.{inner}", [f"{key}.{name}" for name in PARAMS_SECTIONS[key]])
    return values


def _check_section_name(path: Path, name: str, known: list[str]) -> None:
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise PipelineError(f"{path}: unknown section '{name}' ({hint}known: {', '.join(sorted(known))})")


def read_section(path: Path | None, section: str, model: type[S]) -> S:
    """One section of a params file (dotted for nested ones: 'classify.teacher'), validated by `model`.

    Each entry point reads only the sections it uses, as each DVC stage declares only those params;
    no file (path None) or no such section means the model's defaults.
    """
    values: Any = read_params_file(path) if path is not None else {}
    for key in section.split("."):
        values = values.get(key) if isinstance(values, dict) else None
    return model.from_section(values, section)


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied, nested dicts merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def describe(error: ValidationError, model: type[BaseModel], section: str = "") -> str:
    """One line for a validation error: each problem with its key path, unknown keys grouped by section."""
    problems: list[str] = []
    unknown: dict[tuple[str, ...], list[str]] = {}
    for item in error.errors():
        loc = tuple(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            unknown.setdefault(loc[:-1], []).append(loc[-1])
            continue
        path = ".".join(part for part in (section, *loc) if part)
        if item["type"] == "literal_error":
            problems.append(f"{path}: {item['input']!r} is not one of {item['ctx']['expected']}")
        elif item["type"] == "value_error":
            problems.append(f"{path}: {str(item['ctx']['error'])}" if path else str(item["ctx"]["error"]))
        else:
            message = f"{item['msg'][0].lower()}{item['msg'][1:]}"
            problems.append(f"{path}: {message}" + ("" if "got" in message else f", got {item['input']!r}"))
    for loc, names in unknown.items():
        where = ".".join(part for part in (section, *loc) if part) or model.__name__
        known = _known_keys(model, loc)
        problems.append(f"unknown setting(s) in '{where}': {', '.join(names)}" + (f" (known: {', '.join(known)})" if known else ""))
    return "; ".join(problems)


def _known_keys(model: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    """The field names of the (nested) model at `loc`, for the unknown-key message."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", {})
        if part not in fields:
            return []
        current = _model_type(fields[part].annotation)
    return sorted(getattr(current, "model_fields", {}))


def _takes_number(annotation: Any) -> bool:
    """Whether a field's type is a number (or an optional one, or a list of them), not a bool."""
    if get_origin(annotation) is Annotated:
        return _takes_number(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType, list, tuple):
        args = [arg for arg in get_args(annotation) if arg is not type(None) and arg is not Ellipsis]
        return bool(args) and bool not in args and any(_takes_number(arg) for arg in args)
    return annotation in (int, float)


def _takes_bool(annotation: Any) -> bool:
    """Whether a field's type is a bool (or an optional one)."""
    args = [arg for arg in get_args(annotation) if arg is not type(None)] if get_origin(annotation) in (Union, types.UnionType) else [annotation]
    return args == [bool]


def _yaml(value: Any) -> str:
    """A value as the YAML that gave it (true, not True)."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _holds_bool(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, (list, tuple)) and any(isinstance(item, bool) for item in value))


def _is_section(model: type[BaseModel], key: str) -> bool:
    """Whether field `key` holds a nested settings model (not an optional value, where None means None)."""
    field = model.model_fields.get(key)
    return field is not None and isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)


def _model_type(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        return next((arg for arg in get_args(annotation) if isinstance(arg, type) and issubclass(arg, BaseModel)), None)
    return annotation
