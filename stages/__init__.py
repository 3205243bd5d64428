"""DVC stage entry points: read params.yaml, call the library, write outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

PARAMS = Path("params.yaml")
TEACHER_REF = Path("models/teacher.json")


def load_params() -> dict[str, Any]:
    return yaml.safe_load(PARAMS.read_text())


def teacher_ref() -> dict[str, Any]:
    return json.loads(TEACHER_REF.read_text())
