"""`kd`: every pipeline step without DVC. Errors print one line and exit 1."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
import yaml

from pipeline.errors import PipelineError
from pipeline.teacher_model import EMBEDDED_DIR

app = typer.Typer(help="Offline knowledge distillation from LLM teachers.", no_args_is_help=True, add_completion=False)

# Options that `kd teacher` and `kd classify teacher` share.
TeacherModel = Annotated[str, typer.Option(help="'embedded' (SmolLM2-135M-Instruct) or an HF model folder")]
EmbeddedDir = Annotated[Path, typer.Option(help="where the embedded teacher is converted")]
NumWorkers = Annotated[int, typer.Option(help="processes filling disjoint shards of the same cache")]
WorkerIndex = Annotated[int, typer.Option(help="which of the --num-workers processes this is, from 0")]


def clean_errors(command: Callable) -> Callable:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except PipelineError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1)

    return wrapper


def student_folders(items: list[str]) -> dict[str, Path]:
    """`--student NAME=FOLDER` options as {name: folder}; each folder must exist."""
    students = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not Path(folder).is_dir():
            raise PipelineError(f"--student expects NAME=FOLDER with an existing folder, got '{item}'")
        students[name] = Path(folder)
    return students


def echo_fill_result(manifest: Optional[dict[str, Any]], out: Path, worker_index: int, count: str, unit: str) -> None:
    """What a teacher worker leaves behind: a complete cache (`count` summed over splits), or its share of one."""
    if manifest is None:
        typer.echo(f"worker {worker_index} done; other workers' shards are still missing in {out}")
    else:
        typer.echo(f"cache complete: {sum(s[count] for s in manifest['splits'].values())} {unit} in {out}")


def params_section(params: Optional[Path], section: str) -> dict[str, Any]:
    if params is None:
        return {}
    if not params.exists():
        raise PipelineError(f"params file not found: {params}")
    return dict((yaml.safe_load(params.read_text()) or {}).get(section, {}))


@app.command()
@clean_errors
def prepare(
    prompts: Path = typer.Argument(..., help="JSONL, CSV or Parquet with a prompt column"),
    out: Path = typer.Option(Path("data/prepared"), help="folder for train.parquet and validation.parquet"),
    text_column: str = "prompt",
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> None:
    """Validate a prompt set, assign stable ids and split it."""
    from pipeline.data import read_prompts, split_prompts, write_splits

    splits = split_prompts(read_prompts(prompts, text_column), validation_fraction, seed)
    write_splits(splits, out)
    typer.echo(", ".join(f"{name}: {frame.height} prompts" for name, frame in splits.items()))


@app.command()
@clean_errors
def teacher(
    model: TeacherModel = "embedded",
    prepared: Path = typer.Option(Path("data/prepared"), help="output of `kd prepare`"),
    out: Path = typer.Option(Path("data/cache"), help="cache directory (resumed if it exists with the same settings)"),
    params: Optional[Path] = typer.Option(None, help="params.yaml whose 'teacher' section gives the settings"),
    k: Optional[int] = typer.Option(None, help="top-k log-probs per position"),
    draws: Optional[int] = typer.Option(None, help="write a sampled cache: this many ids drawn per position (transformers backend)"),
    backend: Optional[str] = None,
    batch_size: Optional[int] = None,
    max_new_tokens: Optional[int] = None,
    device: Optional[str] = typer.Option(None, help="'cpu' or 'cuda' (refused when no GPU is present)"),
    too_long: Optional[str] = typer.Option(None, help="a prompt over the teacher's length limit: 'refuse' (default) or 'truncate'"),
    embedded_dir: EmbeddedDir = EMBEDDED_DIR,
    num_workers: NumWorkers = 1,
    worker_index: WorkerIndex = 0,
) -> None:
    """Run the teacher over prepared prompts and write the top-k (or sampled) cache."""
    from pipeline.config import teacher_settings
    from pipeline.teacher import run_teacher
    from pipeline.teacher_model import resolve_teacher

    settings = teacher_settings(params_section(params, "teacher"))
    overrides = {"k": k, "draws": draws, "backend": backend, "batch_size": batch_size, "device": device, "too_long": too_long}
    settings = replace(settings, **{name: value for name, value in overrides.items() if value is not None})
    if max_new_tokens is not None:
        settings = replace(settings, generation=replace(settings.generation, max_new_tokens=max_new_tokens))
    manifest = run_teacher(prepared, resolve_teacher(model, embedded_dir), out, settings, worker_index, num_workers)
    echo_fill_result(manifest, out, worker_index, "tokens", "tokens")


@app.command()
@clean_errors
def finalize(path: Path = typer.Argument(..., help="cache directory that parallel workers filled")) -> None:
    """Write manifest.json once every shard exists (the worker that finishes last does this itself)."""
    from pipeline.cache import finalize_from_plan

    echo_fill_result(finalize_from_plan(path), path, 0, "tokens", "tokens")


@app.command()
@clean_errors
def verify(path: Path = typer.Argument(..., help="cache directory")) -> None:
    """Check a cache against its manifest: checksums, schema, counts, log-prob sanity, ids in the vocabulary."""
    from pipeline.cache import read_manifest
    from pipeline.verify import verify_cache

    problems = verify_cache(path)
    for problem in problems:
        typer.echo(f"error: {problem}", err=True)
    if problems:
        raise typer.Exit(1)
    splits = read_manifest(path)["splits"]
    shards = sum(len(s["shards"]) for s in splits.values())
    typer.echo(f"ok: {path}: {shards} shards, {sum(s['rows'] for s in splits.values())} rows, {sum(s['tokens'] for s in splits.values())} tokens match the manifest")


@app.command()
@clean_errors
def student(
    cache: Path = typer.Option(..., help="cache directory written by the teacher"),
    tokenizer: Optional[Path] = typer.Option(None, help="tokenizer folder (must match the cache's); default: the one shipped in the cache"),
    out: Path = typer.Option(..., help="folder for the trained student checkpoint"),
    params: Optional[Path] = typer.Option(None, help="params.yaml whose 'student' section gives the settings"),
    alpha: Optional[float] = typer.Option(None, help="weight of the KD term; 0 trains on CE only"),
    loss: Optional[str] = typer.Option(None, help="divergence: forward_kl, reverse_kl, jsd, skew_kl or tvd"),
    tail: Optional[str] = typer.Option(None, help="mass outside the top-k: bucket or renormalize"),
    epochs: Optional[int] = None,
    loss_log: Optional[Path] = typer.Option(None, help="CSV file for the per-step loss log"),
) -> None:
    """Train a student from a cache."""
    from pipeline.config import train_settings
    from pipeline.training import train_student, write_loss_log

    section = params_section(params, "student")
    settings = train_settings(section)
    settings = replace(settings, **{name: value for name, value in {"alpha": alpha, "loss": loss, "tail": tail, "epochs": epochs}.items() if value is not None})
    log = train_student(cache, tokenizer, section.get("model", {}), settings, out)
    if loss_log is not None:
        write_loss_log(log, loss_log)


@app.command()
@clean_errors
def evaluate(
    cache: Path = typer.Option(..., help="cache directory with a validation split"),
    teacher_model: Path = typer.Option(..., "--teacher", help="teacher checkpoint folder (for parameters and speed)"),
    student_dirs: list[str] = typer.Option(..., "--student", help="NAME=FOLDER, repeatable"),
    out: Optional[Path] = typer.Option(None, help="write metrics JSON here"),
    speed_sequences: int = 16,
) -> None:
    """Compare students with the teacher on the cache's validation split."""
    from pipeline.cache import write_json
    from pipeline.metrics import evaluate_models, format_table

    students = student_folders(student_dirs)
    metrics = evaluate_models(cache, teacher_model, students, speed_sequences)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, metrics)
    typer.echo(format_table(metrics))


@app.command()
@clean_errors
def inspect(path: Path = typer.Argument(..., help="cache directory"), as_json: bool = typer.Option(False, "--json")) -> None:
    """Print what a cache holds: rows, tokens, bytes per token, k, retained top-k mass, provenance."""
    from pipeline.cache_summary import format_summary, summarize_cache

    summary = summarize_cache(path)
    typer.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


@app.command()
@clean_errors
def convert(
    src: Path = typer.Argument(..., help="cache directory to read"),
    dst: Path = typer.Argument(..., help="new cache directory (resumed if it holds the same conversion)"),
    encoding: str = typer.Option("compact", help="compact (version 2 default) or float32 (exact, the version 1 columns)"),
    sqrt_step: Optional[float] = typer.Option(None, help="compact: probability step in sqrt(p); error <= step / 2"),
    drop_zero_level: Optional[bool] = typer.Option(None, help="compact: top-k entries that quantise to level 0 join the tail"),
    tail_log_step: Optional[float] = typer.Option(None, help="compact: step of the log tail mass"),
    token_logprob_step: Optional[float] = typer.Option(None, help="compact: step of the actual token's log-prob"),
    zstd_level: Optional[int] = typer.Option(None, help="compact: Parquet zstd level"),
) -> None:
    """Rewrite a cache in another encoding, shard by shard (rerun to resume); options left unset take the default compact settings (those in params.yaml)."""
    from pipeline.codec import CacheEncoding
    from pipeline.convert import convert_cache

    given = {"sqrt_step": sqrt_step, "drop_zero_level": drop_zero_level, "tail_log_step": tail_log_step, "token_logprob_step": token_logprob_step, "zstd_level": zstd_level}
    settings = CacheEncoding(encoding, **{name: value for name, value in given.items() if value is not None})
    manifest = convert_cache(src, dst, settings)
    tokens = sum(s["tokens"] for s in manifest["splits"].values())
    size = sum(s["bytes"] for s in manifest["splits"].values())
    typer.echo(f"converted: {tokens} tokens in {dst}, encoding {encoding}, {size / max(1, tokens):.1f} bytes/token")


@app.command()
@clean_errors
def report(
    metrics: Path = typer.Argument(Path("reports/metrics.json")),
    classify_metrics: Path = typer.Option(Path("reports/classify_metrics.json"), help="classification metrics, printed too when the file exists"),
) -> None:
    """Print the metrics table written by the evaluate stage (and the classification table when it exists)."""
    from pipeline.metrics import format_table

    if not metrics.exists():
        raise PipelineError(f"metrics file not found: {metrics} (run `dvc repro` first)")
    typer.echo(format_table(json.loads(metrics.read_text())))
    if classify_metrics.exists():
        from pipeline.classify_eval import format_classify_table

        typer.echo("")
        typer.echo(format_classify_table(json.loads(classify_metrics.read_text())))


def _add_classify() -> None:
    from pipeline.classify_cli import app as classify_app

    app.add_typer(classify_app, name="classify")


_add_classify()

if __name__ == "__main__":
    app()
