"""Stage classify_student@ARCH-TARGETS: train a classifier (bilstm or bag) on the teacher's soft or hard labels."""

import sys
from pathlib import Path

from pipeline.classify.student import ARCHS
from pipeline.classify.trainer import TARGETS, ClassifyStudentSettings, train_classifier_from_cache
from pipeline.errors import run_main
from stages import params, teacher_ref

VARIANTS = tuple(f"{arch}-{targets}" for arch in ARCHS for targets in TARGETS)


def main() -> None:
    variant = sys.argv[1] if len(sys.argv) > 1 else ""
    if variant not in VARIANTS:
        raise SystemExit(f"usage: python -m stages.classify_student {{{','.join(VARIANTS)}}}")
    arch, targets = variant.split("-")
    settings = params("classify.student", ClassifyStudentSettings).variant(arch, targets)
    train_classifier_from_cache(Path("data/classify-cache"), settings, Path(f"models/classify-{variant}"), Path(f"reports/classify/loss-{variant}.csv"), Path(teacher_ref()["path"]), overwrite=True)


if __name__ == "__main__":
    run_main(main)
