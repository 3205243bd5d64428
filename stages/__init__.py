"""DVC stage entry points: read params.yaml, call the library, write outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from pipeline.errors import PipelineError

PARAMS = Path("params.yaml")
TEACHER_REF = Path("models/teacher.json")


def load_params() -> dict[str, Any]:
    return yaml.safe_load(PARAMS.read_text())


def teacher_ref() -> dict[str, Any]:
    return json.loads(TEACHER_REF.read_text())


def run_stage(main: Callable[[], None]) -> None:
    """Print a PipelineError as one line and exit 1 instead of a traceback."""
    try:
        main()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
