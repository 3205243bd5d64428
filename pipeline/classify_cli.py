"""`kd classify ...`: the text-classification path without DVC (teacher, student, evaluate)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

# Defined before importing pipeline.cli: under `python -m pipeline.cli` that import runs cli.py a second
# time, and its registration of this sub-app must find `app` on this partly initialised module.
app = typer.Typer(help="Text classification by distillation: LLM soft labels into a small classifier.", no_args_is_help=True)

from pipeline.cli import EmbeddedDir, NumWorkers, TeacherModel, WorkerIndex, clean_errors, echo_fill_result, params_section, student_folders  # noqa: E402
from pipeline.teacher_model import EMBEDDED_DIR  # noqa: E402


def classify_section(params: Optional[Path], name: str) -> dict:
    return dict(params_section(params, "classify").get(name, {}))


@app.command()
@clean_errors
def teacher(
    train: Path = typer.Option(..., help="JSONL, CSV or Parquet with a text column (and optionally a label column)"),
    test: Optional[Path] = typer.Option(None, help="held-out texts with gold labels, for `kd classify evaluate`"),
    out: Path = typer.Option(Path("data/classify-cache"), help="cache directory (resumed if it exists with the same settings)"),
    params: Optional[Path] = typer.Option(None, help="params.yaml whose 'classify.teacher' section gives labels, prompt and settings"),
    model: TeacherModel = "embedded",
    text_column: Optional[str] = typer.Option(None, help="text column [default: classify.data.text_column of --params, else 'text']"),
    label_column: Optional[str] = typer.Option(None, help="gold label column [default: classify.data.label_column of --params, else 'label']"),
    batch_size: Optional[int] = None,
    scoring: Optional[str] = typer.Option(None, help="'sequence' (whole verbalizers) or 'first_token'"),
    embedded_dir: EmbeddedDir = EMBEDDED_DIR,
    num_workers: NumWorkers = 1,
    worker_index: WorkerIndex = 0,
) -> None:
    """Label texts zero-shot with the teacher and write the soft-label cache."""
    from pipeline.classify_data import read_labelled
    from pipeline.classify_teacher import run_classify_teacher
    from pipeline.config import classify_teacher_settings
    from pipeline.teacher_model import resolve_teacher

    settings = classify_teacher_settings(classify_section(params, "teacher"))
    if batch_size is not None:
        settings = replace(settings, batch_size=batch_size)
    if scoring is not None:
        settings = replace(settings, prompt=replace(settings.prompt, scoring=scoring))
    names = list(settings.prompt.labels)
    files = {"train": train, **({"test": test} if test is not None else {})}
    columns = classify_section(params, "data")
    text_column, label_column = text_column or columns.get("text_column", "text"), label_column or columns.get("label_column", "label")
    data = {split: read_labelled(path, names, text_column, label_column) for split, path in files.items()}
    manifest = run_classify_teacher(data, resolve_teacher(model, embedded_dir), out, settings, worker_index, num_workers)
    echo_fill_result(manifest, out, worker_index, "rows", "texts")


@app.command()
@clean_errors
def student(
    cache: Path = typer.Option(Path("data/classify-cache"), help="soft-label cache written by `kd classify teacher`"),
    out: Path = typer.Option(..., help="folder for the trained classifier"),
    params: Optional[Path] = typer.Option(None, help="params.yaml whose 'classify.student' section gives the settings"),
    arch: str = typer.Option("bilstm", help="bilstm or bag"),
    targets: str = typer.Option("soft", help="soft (teacher distribution) or hard (teacher argmax)"),
    alpha: Optional[float] = typer.Option(None, help="weight of the soft-label term; the rest is CE on gold labels"),
    temperature: Optional[float] = None,
    epochs: Optional[int] = None,
    loss_log: Optional[Path] = typer.Option(None, help="CSV file for the per-step loss log"),
) -> None:
    """Train a BiLSTM or bag-of-embeddings classifier on the cache's train split."""
    from pipeline.classify_training import train_classifier_from_cache
    from pipeline.config import classify_train_settings
    from pipeline.training import write_loss_log

    section = classify_section(params, "student")
    models = section.pop("models", {})
    settings = classify_train_settings({**section, "model": {"arch": arch, **models.get(arch, {})}})
    overrides = {"alpha": alpha, "temperature": temperature, "epochs": epochs, "targets": targets}
    settings = replace(settings, **{name: value for name, value in overrides.items() if value is not None})
    log = train_classifier_from_cache(cache, settings, out)
    if loss_log is not None:
        write_loss_log(log, loss_log)


@app.command()
@clean_errors
def evaluate(
    cache: Path = typer.Option(Path("data/classify-cache"), help="soft-label cache with a split that has gold labels"),
    teacher_model: Path = typer.Option(..., "--teacher", help="teacher checkpoint folder (for parameters and latency)"),
    student_dirs: list[str] = typer.Option(..., "--student", help="NAME=FOLDER, repeatable"),
    split: str = "test",
    out: Optional[Path] = typer.Option(None, help="write metrics JSON here"),
    chart: Optional[Path] = typer.Option(None, help="write the reliability diagram PNG here"),
    latency_examples: int = 32,
    calibration_bins: int = 10,
) -> None:
    """Accuracy, agreement, ECE, size and latency of the teacher and the classifiers."""
    from pipeline.cache import write_json
    from pipeline.classify_charts import plot_reliability
    from pipeline.classify_eval import evaluate_classifiers, format_classify_table

    students = student_folders(student_dirs)
    metrics = evaluate_classifiers(cache, teacher_model, students, split, latency_examples, calibration_bins)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, metrics)
    if chart is not None:
        plot_reliability(metrics, chart)
    typer.echo(format_classify_table(metrics))
