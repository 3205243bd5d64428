"""DVC stage entry points: one thin module per stage, wiring params.yaml to the library.

Each stage reads and validates only the params sections its dvc.yaml entry declares.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pipeline.settings import Settings, read_section

PARAMS = Path("params.yaml")
TEACHER_REF = Path("models/teacher.json")

S = TypeVar("S", bound=Settings)


def params(section: str, model: type[S]) -> S:
    """The validated `section` of params.yaml (dotted for nested ones: 'classify.teacher')."""
    return read_section(PARAMS, section, model)


def teacher_ref() -> dict[str, Any]:
    return json.loads(TEACHER_REF.read_text())
