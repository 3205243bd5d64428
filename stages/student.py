"""Stage student@VARIANT: train the distilled student, or the CE-only baseline (alpha = 0) on the same cache."""

import sys
from dataclasses import replace
from pathlib import Path

from pipeline.config import train_settings
from pipeline.errors import run_main
from pipeline.training import train_student, write_loss_log
from stages import load_params

VARIANTS = ("distilled", "ce_only")


def main() -> None:
    variant = sys.argv[1]
    if variant not in VARIANTS:
        raise SystemExit(f"usage: python -m stages.student {{{','.join(VARIANTS)}}}")
    section = load_params()["student"]
    settings = train_settings(section)
    if variant == "ce_only":
        settings = replace(settings, alpha=0.0)
    log = train_student(Path("data/cache"), None, section.get("model", {}), settings, Path(f"models/student-{variant}"))
    write_loss_log(log, Path(f"reports/loss/{variant}.csv"))


if __name__ == "__main__":
    run_main(main)
