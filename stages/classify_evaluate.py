"""Stage classify_evaluate: teacher and students on every test split; metrics JSON and the headline split's reliability diagram."""

from pathlib import Path

from pipeline.classify.evaluate import ClassifyEvaluateSettings, evaluate_classifier_students, format_classify_table
from pipeline.errors import run_main
from stages import params, teacher_ref
from stages.classify_student import VARIANTS


def main() -> None:
    students = {variant: Path(f"models/classify-{variant}") for variant in VARIANTS}
    settings = params("classify.evaluate", ClassifyEvaluateSettings)
    metrics = evaluate_classifier_students(
        Path("data/classify-cache"), Path(teacher_ref()["path"]), students, None, settings, Path("reports/classify_metrics.json"), Path("reports/classify_reliability.png"), overwrite=True
    )
    print(format_classify_table(metrics))


if __name__ == "__main__":
    run_main(main)
