"""Stage student@VARIANT: train the distilled student, or the CE-only baseline (alpha = 0) on the same cache;
stage student_start saves their common untrained start (`student.init`), the row that shows what training did.

The training state is saved outside the stage's outputs (which DVC deletes before a run), so after a
crash `dvc repro` resumes it; a state left by a run with other settings is started over. For several
processes, run the same module under torchrun: `torchrun --nproc_per_node 2 -m stages.student distilled`.
"""

import sys
from pathlib import Path

from pipeline.errors import run_main
from pipeline.lm.student_settings import StudentSettings
from pipeline.lm.trainer import save_initial_student, train_student
from stages import params, teacher_ref

VARIANTS = ("distilled", "ce_only")
START = "start"


def main() -> None:
    variant = sys.argv[1] if len(sys.argv) > 1 else ""
    if variant not in (*VARIANTS, START):
        raise SystemExit(f"usage: python -m stages.student {{{','.join((*VARIANTS, START))}}}")
    settings = params("student", StudentSettings)
    if variant == START:
        save_initial_student(Path("data/cache"), settings, Path(f"models/student-{START}"), teacher=Path(teacher_ref()["path"]), overwrite=True)
        return
    if variant == "ce_only":
        settings = settings.updated("student", alpha=0.0)
    train_student(
        Path("data/cache"),
        settings,
        Path(f"models/student-{variant}"),
        loss_log=Path(f"reports/loss/{variant}.csv"),
        checkpoint_dir=Path(f"models/.partial/student-{variant}"),
        teacher=Path(teacher_ref()["path"]),
        restart_other_runs=True,
        overwrite=True,  # DVC owns the stage's outputs
    )


if __name__ == "__main__":
    run_main(main)
