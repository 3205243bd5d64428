"""Stage judge: the teacher, the untrained start and both students answer a seeded sample of the held-out prompts; the teacher scores the answers."""

from pathlib import Path

from pipeline.errors import run_main
from pipeline.lm.generation import JudgeSettings, format_judge_table, judge_models
from pipeline.lm.teacher import TeacherSettings
from stages import params, teacher_ref
from stages.student import START, VARIANTS

COMPARED = [("distilled", "ce_only")]


def main() -> None:
    students = {name: Path(f"models/student-{name}") for name in (START, *VARIANTS)}
    teacher = params("teacher", TeacherSettings)
    report = judge_models(
        params("judge", JudgeSettings),
        Path(teacher_ref()["path"]),
        students,
        teacher.generation,
        teacher.chat_template,
        COMPARED,
        Path("reports/generation.json"),
        Path("reports/generation-answers.json"),
        Path("reports/generation.md"),
        overwrite=True,  # DVC owns the stage's outputs
    )
    for mode in report.models:
        print(format_judge_table(report, mode) + "\n")


if __name__ == "__main__":
    run_main(main)
