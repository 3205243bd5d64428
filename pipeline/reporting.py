"""Plain-text tables of models and their metrics, for `kd evaluate`, `kd classify evaluate` and `kd report`, and the JSON reports they read."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.outputs import FileKind, claim_file

CHART_METADATA = {"Software": "kd-pipeline"}  # written into every chart's PNG text chunk: how a rerun knows the file is its own


def is_chart(path: Path) -> bool:
    """Whether a file is a PNG chart this package drew (its text chunk names kd-pipeline)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and b"Software\x00kd-pipeline" in head


CHART_FILE = FileKind("chart drawn by kd-pipeline", is_chart)


@dataclass(frozen=True)
class ReportKind:
    """A JSON report a command writes, recognised by its structure: `kd report` reads only these, and a rerun replaces only these."""

    name: str  # in messages: "metrics file"
    writer: str  # the command that writes it: "kd evaluate"
    check: Callable[[Any], bool]

    def read(self, path: Path) -> Any:
        """The report at `path`, or one line saying why it is not one (missing, not JSON, another file)."""
        path = Path(path)
        if not path.is_file():
            raise PipelineError(f"{self.name} not found: {path} (run `dvc repro` first)")
        try:
            value = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise PipelineError(f"{path} is not JSON ({error}); give a {self.name} written by {self.writer}") from None
        if not self.check(value):
            raise PipelineError(f"{path} is not a {self.name} written by {self.writer}")
        return value

    def matches(self, path: Path) -> bool:
        try:
            return self.check(json.loads(Path(path).read_text()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False

    @property
    def output(self) -> FileKind:
        return FileKind(f"{self.name} written by {self.writer}", self.matches)

    def claim(self, metrics_path: Path | None, chart_path: Path | None, inputs: Sequence[Path], overwrite: bool) -> None:
        """Check an evaluation's outputs, this report (`--out`) and its chart (`--chart`), before any work (pipeline.outputs)."""
        if metrics_path is not None:
            claim_file(metrics_path, self.output, "--out", inputs, overwrite)
        if chart_path is not None:
            claim_file(chart_path, CHART_FILE, "--chart", inputs, overwrite)


def model_table(models: dict[str, dict[str, Any]], columns: list[tuple[str, str, str]], name_width: int, cell_width: int) -> list[str]:
    """Header, rule and one line per model; columns are (title, metrics key, format), '-' where a model lacks the key."""
    header = f"{'model':<{name_width}}" + "".join(f"{title:>{cell_width}}" for title, _, _ in columns)
    lines = [header, "-" * len(header)]
    for name, values in models.items():
        cells = [fmt.format(values[key]) if key in values else "-" for _, key, fmt in columns]
        lines.append(f"{name:<{name_width}}" + "".join(f"{cell:>{cell_width}}" for cell in cells))
    return lines
