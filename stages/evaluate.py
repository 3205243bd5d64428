"""Stage evaluate: compare the students (and their untrained start) with the teacher on the validation split."""

from pathlib import Path

from pipeline.errors import run_main
from pipeline.lm.metrics import EvaluateSettings, evaluate_students, format_table
from stages import params, teacher_ref
from stages.student import START, VARIANTS


def main() -> None:
    students = {variant: Path(f"models/student-{variant}") for variant in (START, *VARIANTS)}
    logs = {variant: Path(f"reports/loss/{variant}.csv") for variant in VARIANTS}
    metrics = evaluate_students(
        Path("data/cache"), Path(teacher_ref()["path"]), students, params("evaluate", EvaluateSettings), Path("reports/metrics.json"), Path("reports/training.png"), logs, overwrite=True
    )
    print(format_table(metrics))


if __name__ == "__main__":
    run_main(main)
