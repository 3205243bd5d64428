"""`kd classify ...`: the text-classification path without DVC (teacher, student, evaluate)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import EmbeddedDir, NumWorkers, ParamsFile, RayAddress, TeacherModel, UseRay, WorkerIndex, cache_location, clean_errors, echo_fill_result, ray_runner, student_folders
from pipeline.settings import read_section
from pipeline.teacher_model import EMBEDDED_DIR

app = typer.Typer(help="Text classification by distillation: LLM soft labels into a small classifier.", no_args_is_help=True)


@app.command()
@clean_errors
def teacher(
    train: Path = typer.Option(..., help="JSONL, CSV or Parquet with a text column (and optionally a label column)"),
    test: Optional[Path] = typer.Option(None, help="held-out texts with gold labels, for `kd classify evaluate`"),
    out: Path = typer.Option(Path("data/classify-cache"), parser=cache_location, help="cache directory or object-store URL (s3://bucket/prefix), resumed if it exists with the same settings"),
    params: ParamsFile = None,
    model: TeacherModel = None,
    text_column: Optional[str] = typer.Option(None, help="text column [default: classify.data.text_column of --params, else 'text']"),
    label_column: Optional[str] = typer.Option(None, help="gold label column [default: classify.data.label_column of --params, else 'label']"),
    batch_size: Optional[int] = None,
    scoring: Optional[str] = typer.Option(None, help="'sequence' (whole verbalizers) or 'first_token'"),
    embedded_dir: EmbeddedDir = EMBEDDED_DIR,
    num_workers: NumWorkers = 1,
    worker_index: WorkerIndex = 0,
    use_ray: UseRay = False,
    ray_address: RayAddress = None,
) -> None:
    """Label texts zero-shot with the teacher and write the soft-label cache."""
    from pipeline.classify.data import ClassifyDataSettings, read_classify_data
    from pipeline.classify.teacher import ClassifyTeacherSettings, run_classify_teacher
    from pipeline.lm.teacher import TeacherSettings
    from pipeline.teacher_model import resolve_teacher

    settings = read_section(params, "classify.teacher", ClassifyTeacherSettings).updated("classify.teacher", batch_size=batch_size, scoring=scoring, **ray_runner(use_ray, ray_address))
    columns = read_section(params, "classify.data", ClassifyDataSettings).updated("classify.data", text_column=text_column, label_column=label_column)
    files = ClassifyDataSettings.from_section({**columns.model_dump(), "train": train, "test": test}, "classify.data")
    data = read_classify_data(files, settings.prompt.label_names)
    teacher_ref = resolve_teacher(model or read_section(params, "teacher", TeacherSettings).model, embedded_dir)
    manifest = run_classify_teacher(data, teacher_ref, out, settings, worker_index, num_workers)
    echo_fill_result(manifest, out, worker_index, "rows", "texts")


@app.command()
@clean_errors
def student(
    cache: Path = typer.Option(Path("data/classify-cache"), parser=cache_location, help="soft-label cache written by `kd classify teacher` (a directory or an object-store URL)"),
    out: Path = typer.Option(..., help="folder for the trained classifier"),
    params: ParamsFile = None,
    arch: str = typer.Option("bilstm", help="bilstm or bag"),
    targets: str = typer.Option("soft", help="soft (teacher distribution) or hard (teacher argmax)"),
    alpha: Optional[float] = typer.Option(None, help="weight of the soft-label term; the rest is CE on gold labels"),
    temperature: Optional[float] = None,
    epochs: Optional[int] = None,
    loss_log: Optional[Path] = typer.Option(None, help="CSV file for the per-step loss log"),
    teacher_model: Optional[Path] = typer.Option(None, "--teacher", help="teacher model folder, for embedding_init teacher"),
) -> None:
    """Train a BiLSTM or bag-of-embeddings classifier on the cache's train split."""
    from pipeline.classify.training import ClassifyStudentSettings, train_classifier_from_cache

    section = read_section(params, "classify.student", ClassifyStudentSettings).updated("classify.student", alpha=alpha, temperature=temperature, epochs=epochs)
    train_classifier_from_cache(cache, section.variant(arch, targets), out, loss_log, teacher_model)


@app.command()
@clean_errors
def evaluate(
    cache: Path = typer.Option(Path("data/classify-cache"), parser=cache_location, help="soft-label cache (a directory or an object-store URL) with a split that has gold labels"),
    teacher_model: Path = typer.Option(..., "--teacher", help="teacher checkpoint folder (for parameters and latency)"),
    student_dirs: list[str] = typer.Option(..., "--student", help="NAME=FOLDER, repeatable"),
    split: str = "test",
    out: Optional[Path] = typer.Option(None, help="write metrics JSON here"),
    chart: Optional[Path] = typer.Option(None, help="write the reliability diagram PNG here"),
    params: ParamsFile = None,
    latency_examples: Optional[int] = typer.Option(None, help="test texts timed one by one [default: classify.evaluate of --params, else 32]"),
    calibration_bins: Optional[int] = typer.Option(None, help="confidence bins of ECE and the diagram [default: classify.evaluate of --params, else 10]"),
) -> None:
    """Accuracy, agreement, ECE, size and latency of the teacher and the classifiers."""
    from pipeline.classify.evaluate import ClassifyEvaluateSettings, evaluate_classifier_students, format_classify_table

    settings = read_section(params, "classify.evaluate", ClassifyEvaluateSettings).updated("classify.evaluate", latency_examples=latency_examples, calibration_bins=calibration_bins)
    metrics = evaluate_classifier_students(cache, teacher_model, student_folders(student_dirs), split, settings, out, chart)
    typer.echo(format_classify_table(metrics))
