"""Stage evaluate: compare the students with the teacher on the validation split."""

from pathlib import Path

from pipeline.cache import write_json
from pipeline.charts import plot_training
from pipeline.errors import run_main
from pipeline.metrics import evaluate_models, format_table
from pipeline.training import read_loss_log
from stages import load_params, teacher_ref
from stages.student import VARIANTS


def main() -> None:
    settings = load_params()["evaluate"]
    students = {variant: Path(f"models/student-{variant}") for variant in VARIANTS}
    metrics = evaluate_models(Path("data/cache"), Path(teacher_ref()["path"]), students, settings["speed_sequences"], settings["batch_size"])
    write_json(Path("reports/metrics.json"), metrics)
    logs = {variant: read_loss_log(Path(f"reports/loss/{variant}.csv")) for variant in VARIANTS}
    plot_training(logs, metrics, Path("reports/training.png"))
    print(format_table(metrics))


if __name__ == "__main__":
    run_main(main)
