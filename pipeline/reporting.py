"""Plain-text tables of models and their metrics, for `kd evaluate`, `kd classify evaluate` and `kd report`."""

from __future__ import annotations

from typing import Any


def model_table(models: dict[str, dict[str, Any]], columns: list[tuple[str, str, str]], name_width: int, cell_width: int) -> list[str]:
    """Header, rule and one line per model; columns are (title, metrics key, format), '-' where a model lacks the key."""
    header = f"{'model':<{name_width}}" + "".join(f"{title:>{cell_width}}" for title, _, _ in columns)
    lines = [header, "-" * len(header)]
    for name, values in models.items():
        cells = [fmt.format(values[key]) if key in values else "-" for _, key, fmt in columns]
        lines.append(f"{name:<{name_width}}" + "".join(f"{cell:>{cell_width}}" for cell in cells))
    return lines
