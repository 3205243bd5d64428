"""Reliability diagram of the classifiers: how far each model's confidence is from its accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.atomic import atomic_path  # noqa: E402
from pipeline.reporting import CHART_METADATA  # noqa: E402


def plot_reliability(models: dict[str, Any], split: str, path: Path) -> None:
    """Accuracy against mean confidence per confidence bin (the diagonal is perfect calibration), ECE in the legend."""
    figure, (diagram, counts) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    diagram.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for name, values in models.items():
        used = [b for b in values["reliability"] if b["count"]]
        diagram.plot([b["confidence"] for b in used], [b["accuracy"] for b in used], marker="o", label=f"{name} (ECE {values['ece']:.3f})")
        counts.plot([(b["low"] + b["high"]) / 2 for b in values["reliability"]], [b["count"] for b in values["reliability"]], marker=".", label=name)
    diagram.set_xlabel("confidence (max class probability)")
    diagram.set_ylabel("accuracy on gold labels")
    diagram.set_title(f"Reliability on the {split} split")
    diagram.legend(fontsize=8)
    counts.set_xlabel("confidence bin")
    counts.set_ylabel("examples")
    counts.set_title("Examples per bin")
    counts.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png", metadata=CHART_METADATA)
    plt.close(figure)
