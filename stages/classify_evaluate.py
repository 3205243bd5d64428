"""Stage classify_evaluate: teacher and students on the test split; metrics JSON and a reliability diagram."""

from pathlib import Path

from pipeline.cache import write_json
from pipeline.classify_charts import plot_reliability
from pipeline.classify_eval import evaluate_classifiers, format_classify_table
from pipeline.errors import run_main
from stages import load_params, teacher_ref
from stages.classify_student import VARIANTS


def main() -> None:
    settings = load_params()["classify"]["evaluate"]
    students = {variant: Path(f"models/classify-{variant}") for variant in VARIANTS}
    metrics = evaluate_classifiers(Path("data/classify-cache"), Path(teacher_ref()["path"]), students, "test", settings["latency_examples"], settings["calibration_bins"])
    write_json(Path("reports/classify_metrics.json"), metrics)
    plot_reliability(metrics, Path("reports/classify_reliability.png"))
    print(format_classify_table(metrics))


if __name__ == "__main__":
    run_main(main)
