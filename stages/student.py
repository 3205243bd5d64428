"""Stage student@VARIANT: train the distilled student, or the CE-only baseline (alpha = 0) on the same cache."""

import sys
from pathlib import Path

from pipeline.errors import run_main
from pipeline.lm.training import StudentSettings, train_student
from stages import params

VARIANTS = ("distilled", "ce_only")


def main() -> None:
    variant = sys.argv[1] if len(sys.argv) > 1 else ""
    if variant not in VARIANTS:
        raise SystemExit(f"usage: python -m stages.student {{{','.join(VARIANTS)}}}")
    settings = params("student", StudentSettings)
    if variant == "ce_only":
        settings = settings.updated("student", alpha=0.0)
    train_student(Path("data/cache"), settings, Path(f"models/student-{variant}"), loss_log=Path(f"reports/loss/{variant}.csv"))


if __name__ == "__main__":
    run_main(main)
