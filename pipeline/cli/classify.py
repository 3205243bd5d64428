"""`kd classify ...`: the text-classification path without DVC (teacher, student, evaluate)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import (
    EmbeddedDir,
    NumWorkers,
    Overwrite,
    ParamsFile,
    RayAddress,
    TeacherModel,
    UseRay,
    WorkerIndex,
    cache_location,
    clean_errors,
    echo_fill_result,
    named_files,
    ray_runner,
    student_folders,
)
from pipeline.settings import read_section
from pipeline.teacher_model import EMBEDDED_DIR

app = typer.Typer(help="Text classification by distillation: LLM soft labels into a small classifier.", no_args_is_help=True)


@app.command()
@clean_errors
def teacher(
    train: Optional[Path] = typer.Option(None, help="JSONL, CSV or Parquet with a text column (and optionally a label column) [default: classify.data.train of --params]"),
    tests: Optional[list[str]] = typer.Option(
        None, "--test", help="NAME=FILE (or FILE, named test), repeatable: held-out texts with gold labels, each a split for `kd classify evaluate` [default: classify.data.tests of --params]"
    ),
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
    overwrite: Overwrite = False,
) -> None:
    """Label texts zero-shot with the teacher and write the soft-label cache."""
    from pipeline.classify.data import ClassifyDataSettings, read_classify_data
    from pipeline.classify.teacher import ClassifyTeacherSettings, run_classify_teacher
    from pipeline.lm.teacher import TeacherSettings
    from pipeline.teacher_model import resolve_teacher

    settings = read_section(params, "classify.teacher", ClassifyTeacherSettings).updated("classify.teacher", batch_size=batch_size, scoring=scoring, **ray_runner(use_ray, ray_address))
    files = read_section(params, "classify.data", ClassifyDataSettings).updated("classify.data", text_column=text_column, label_column=label_column)
    if train is not None or tests:  # files on the command line replace the params file's (a --train alone: no test set)
        given = {"train": {"path": train} if train is not None else files.train.model_dump(), "tests": named_files(tests or [], "test")}
        files = ClassifyDataSettings.from_section({**files.model_dump(), **given}, "classify.data")
    data = read_classify_data(files, settings.prompt.label_names)
    teacher_ref = resolve_teacher(model or read_section(params, "teacher", TeacherSettings).model, embedded_dir)
    data_files = [files.train.path, *(test.path for test in files.tests.values())]
    manifest = run_classify_teacher(data, teacher_ref, out, settings, worker_index, num_workers, overwrite=overwrite, data_files=data_files)
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
    overwrite: Overwrite = False,
) -> None:
    """Train a BiLSTM or bag-of-embeddings classifier on the cache's train split."""
    from pipeline.classify.trainer import ClassifyStudentSettings, train_classifier_from_cache

    section = read_section(params, "classify.student", ClassifyStudentSettings).updated("classify.student", alpha=alpha, temperature=temperature, epochs=epochs)
    train_classifier_from_cache(cache, section.variant(arch, targets), out, loss_log, teacher_model, overwrite)


@app.command()
@clean_errors
def evaluate(
    cache: Path = typer.Option(Path("data/classify-cache"), parser=cache_location, help="soft-label cache (a directory or an object-store URL) with a split that has gold labels"),
    teacher_model: Path = typer.Option(..., "--teacher", help="teacher checkpoint folder (for parameters and latency)"),
    student_dirs: list[str] = typer.Option(..., "--student", help="NAME=FOLDER, repeatable"),
    splits: Optional[list[str]] = typer.Option(None, "--split", help="test split to score, repeatable [default: every split but train]"),
    out: Optional[Path] = typer.Option(None, help="write metrics JSON here"),
    chart: Optional[Path] = typer.Option(None, help="write the reliability diagram PNG here"),
    params: ParamsFile = None,
    headline: Optional[str] = typer.Option(None, help="split printed first and drawn in the chart [default: classify.evaluate.headline of --params, else the first split]"),
    latency_examples: Optional[int] = typer.Option(None, help="texts of the headline split timed one by one [default: classify.evaluate of --params, else 32]"),
    calibration_bins: Optional[int] = typer.Option(None, help="confidence bins of ECE and the diagram [default: classify.evaluate of --params, else 10]"),
    overwrite: Overwrite = False,
) -> None:
    """Accuracy, agreement, ECE, size and latency of the teacher and the classifiers."""
    from pipeline.classify.evaluate import ClassifyEvaluateSettings, evaluate_classifier_students, format_classify_table

    settings = read_section(params, "classify.evaluate", ClassifyEvaluateSettings).updated("classify.evaluate", headline=headline, latency_examples=latency_examples, calibration_bins=calibration_bins)
    metrics = evaluate_classifier_students(cache, teacher_model, student_folders(student_dirs), splits or None, settings, out, chart, overwrite)
    typer.echo(format_classify_table(metrics))


@app.command()
@clean_errors
def augment(
    texts: Path = typer.Option(..., "--texts", help="JSONL, CSV or Parquet with a text column: the transfer set to augment"),
    out: Path = typer.Option(..., help="JSONL of the new texts (no labels: `kd classify teacher` labels them)"),
    sample: Optional[int] = typer.Option(None, help="augment this seeded sample of --texts (as classify.data.train.sample picks it)"),
    sample_seed: int = typer.Option(0, help="seed of the sample (classify.data.seed)"),
    lexicon: Optional[Path] = typer.Option(None, help="word -> part-of-speech tags (JSON, or lexicon.js of npm `pos`); without it nothing is substituted"),
    copies: int = typer.Option(20, help="augmentation passes over each text"),
    mask: float = typer.Option(0.1, help="probability that a word becomes [MASK]"),
    substitute: float = typer.Option(0.1, help="probability that a word becomes a corpus word of the same part of speech"),
    ngram: float = typer.Option(0.25, help="probability that only a random 1- to 5-gram is kept"),
    seed: int = typer.Option(0, help="seed of the augmentation"),
    text_column: str = "text",
    overwrite: Overwrite = False,
) -> None:
    """Tang et al.'s augmentation (masking, same-class word substitution, n-gram sampling): unlabelled texts for the teacher to label."""
    from pipeline.classify.augment import AugmentSettings, augment_texts, read_lexicon
    from pipeline.classify.data import TextSet, read_text_set
    from pipeline.classify.generated import TEXTS_FILE, write_jsonl
    from pipeline.outputs import claim_file

    claim_file(out, TEXTS_FILE, "--out", [texts, lexicon], overwrite)
    settings = AugmentSettings(copies=copies, mask=mask, substitute=substitute, ngram=ngram, seed=seed)
    source = read_text_set(TextSet(path=texts, sample=sample), [], text_column, label_column="", seed=sample_seed)
    new = augment_texts(source["text"].to_list(), settings, read_lexicon(lexicon) if lexicon else None)
    write_jsonl([{"text": text} for text in new], out)
    typer.echo(f"{len(new)} augmented texts from {source.height} in {out}")


@app.command()
@clean_errors
def answers(
    cache: Path = typer.Argument(..., help="language-model cache that `kd teacher` wrote from text-writing prompts"),
    out: Path = typer.Option(..., help="JSONL of the answers as texts (no labels: `kd classify teacher` labels them)"),
    split: str = typer.Option("validation", help="cache split (an evaluation-only prompt set puts every prompt in validation)"),
    min_words: int = typer.Option(3, help="drop answers shorter than this"),
    overwrite: Overwrite = False,
) -> None:
    """The teacher's answers in a cache as texts: what the LLM wrote, for a generated transfer set."""
    from pipeline.classify.generated import TEXTS_FILE, answers_as_texts, write_jsonl
    from pipeline.outputs import claim_file

    claim_file(out, TEXTS_FILE, "--out", [cache], overwrite)
    rows = answers_as_texts(cache, split, min_words)
    write_jsonl(rows, out)
    typer.echo(f"{len(rows)} texts in {out}")
