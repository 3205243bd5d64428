"""Stage classify_student@ARCH-TARGETS: train a classifier (bilstm or bag) on the teacher's soft or hard labels."""

import sys
from dataclasses import replace
from pathlib import Path

from pipeline.classify_training import TARGETS, train_classifier_from_cache
from pipeline.config import classify_train_settings
from pipeline.errors import run_main
from pipeline.training import write_loss_log
from stages import load_params

ARCHS = ("bilstm", "bag")
VARIANTS = tuple(f"{arch}-{targets}" for arch in ARCHS for targets in TARGETS)


def main() -> None:
    variant = sys.argv[1] if len(sys.argv) > 1 else ""
    if variant not in VARIANTS:
        raise SystemExit(f"usage: python -m stages.classify_student {{{','.join(VARIANTS)}}}")
    arch, targets = variant.split("-")
    section = dict(load_params()["classify"]["student"])
    models = section.pop("models")
    settings = classify_train_settings({**section, "model": {"arch": arch, **models[arch]}})
    log = train_classifier_from_cache(Path("data/classify-cache"), replace(settings, targets=targets), Path(f"models/classify-{variant}"))
    write_loss_log(log, Path(f"reports/classify/loss-{variant}.csv"))


if __name__ == "__main__":
    run_main(main)
