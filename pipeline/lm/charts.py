"""PNG charts for people who read results without DVC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.atomic import atomic_path  # noqa: E402
from pipeline.reporting import CHART_METADATA  # noqa: E402


def plot_training(logs: dict[str, list[dict[str, float]]], metrics: dict[str, Any], path: Path) -> None:
    """Loss curves of every student beside their validation KL to the teacher."""
    figure, (curves, kl_bars) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    for name, log in logs.items():
        curves.plot([row["step"] for row in log], [row["ce"] for row in log], label=f"{name}: CE on teacher tokens")
        curves.plot([row["step"] for row in log], [row["kd"] for row in log], linestyle="--", label=f"{name}: distillation term")
    curves.set_xlabel("step")
    curves.set_ylabel("nats per token (train)")
    curves.set_title("Student training")
    curves.legend(fontsize=8)
    names = [name for name in metrics["models"] if name != "teacher"]
    kl_bars.bar(names, [metrics["models"][name]["kl_to_teacher"] for name in names], color=["tab:blue", "tab:orange", "tab:green"][: len(names)])
    kl_bars.set_ylabel("KL to teacher (validation, nats/token)")
    kl_bars.set_title("Lower is closer to the teacher")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png", metadata=CHART_METADATA)
    plt.close(figure)
