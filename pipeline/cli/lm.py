"""`kd prepare`, `kd teacher`, `kd student`, `kd evaluate`, `kd report`: the language-model path without DVC."""

from __future__ import annotations

import os
import sys
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
    ray_runner,
    student_folders,
)
from pipeline.settings import read_section
from pipeline.teacher_model import EMBEDDED_DIR

app = typer.Typer()


@app.command()
@clean_errors
def prepare(
    prompts: Path = typer.Argument(..., help="JSONL, CSV or Parquet with a prompt column"),
    out: Path = typer.Option(Path("data/prepared"), help="folder for train.parquet and validation.parquet"),
    text_column: str = "prompt",
    validation_fraction: float = typer.Option(0.2, help="share of prompts held out for validation; 1 makes an evaluation-only set (train empty)"),
    seed: int = 0,
    overwrite: Overwrite = False,
) -> None:
    """Validate a prompt set, assign stable ids and split it."""
    from pipeline.data import DataSettings, prepare_prompts

    settings = DataSettings.from_section({"prompts": prompts, "text_column": text_column, "validation_fraction": validation_fraction, "seed": seed}, "data")
    splits = prepare_prompts(settings, out, overwrite)
    typer.echo(", ".join(f"{name}: {frame.height} prompts" for name, frame in splits.items()))


@app.command()
@clean_errors
def teacher(
    model: TeacherModel = None,
    prepared: Path = typer.Option(Path("data/prepared"), help="output of `kd prepare`"),
    out: Path = typer.Option(Path("data/cache"), parser=cache_location, help="cache directory or object-store URL (s3://bucket/prefix), resumed if it exists with the same settings"),
    params: ParamsFile = None,
    k: Optional[int] = typer.Option(None, help="top-k log-probs per position"),
    draws: Optional[int] = typer.Option(None, help="write a sampled cache: this many ids drawn per position"),
    head: Optional[int] = typer.Option(None, help="with --draws: a hybrid cache, the exact top-HEAD ids plus the draws from the rest"),
    backend: Optional[str] = None,
    batch_size: Optional[int] = None,
    max_new_tokens: Optional[int] = None,
    device: Optional[str] = typer.Option(None, help="'cpu' or 'cuda' (refused when no GPU is present)"),
    too_long: Optional[str] = typer.Option(None, help="a prompt over the teacher's length limit: 'refuse' (default) or 'truncate'"),
    embedded_dir: EmbeddedDir = EMBEDDED_DIR,
    num_workers: NumWorkers = 1,
    worker_index: WorkerIndex = 0,
    use_ray: UseRay = False,
    ray_address: RayAddress = None,
    overwrite: Overwrite = False,
) -> None:
    """Run the teacher over prepared prompts and write the top-k (or sampled, or hybrid) cache."""
    from pipeline.lm.teacher import TeacherSettings, run_teacher
    from pipeline.teacher_model import resolve_teacher

    generation = {"max_new_tokens": max_new_tokens} if max_new_tokens is not None else None
    settings = read_section(params, "teacher", TeacherSettings).updated(
        "teacher", model=model, k=k, draws=draws, head=head, backend=backend, batch_size=batch_size, device=device, too_long=too_long, generation=generation, **ray_runner(use_ray, ray_address)
    )
    manifest = run_teacher(prepared, resolve_teacher(settings.model, embedded_dir), out, settings, worker_index, num_workers, overwrite=overwrite)
    echo_fill_result(manifest, out, worker_index, "tokens", "tokens")


@app.command()
@clean_errors
def student(
    cache: Path = typer.Option(..., parser=cache_location, help="cache directory written by the teacher, or its object-store URL"),
    tokenizer: Optional[Path] = typer.Option(None, help="tokenizer folder (must match the cache's unless --cross-tokenizer); default: student.tokenizer, else the one shipped in the cache"),
    cross_tokenizer: Optional[str] = typer.Option(None, help="distil across tokenizers with this loss: exact_map, uld or gold (student.cross_tokenizer.loss)"),
    out: Path = typer.Option(..., help="folder for the trained student (an HF model folder with its model card)"),
    params: ParamsFile = None,
    init: Optional[str] = typer.Option(None, help="'scratch' (a random student from student.model), 'prune' (cut from --teacher) or a pretrained HF causal-LM folder"),
    teacher_model: Optional[Path] = typer.Option(None, "--teacher", help="teacher model folder, for --init prune"),
    alpha: Optional[float] = typer.Option(None, help="weight of the KD term; 0 trains on CE only"),
    loss: Optional[str] = typer.Option(None, help="divergence: forward_kl, reverse_kl, jsd, skew_kl or tvd"),
    tail: Optional[str] = typer.Option(None, help="mass outside the top-k: bucket or renormalize"),
    epochs: Optional[int] = None,
    max_steps: Optional[int] = typer.Option(None, help="optimizer steps (replaces epochs)"),
    batch_size: Optional[int] = typer.Option(None, help="sequences per micro-batch and process"),
    grad_accumulation: Optional[int] = typer.Option(None, help="micro-batches per optimizer step"),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N"),
    precision: Optional[str] = typer.Option(None, help="fp32, or bf16 (mixed precision, float32 master weights)"),
    save_every: Optional[int] = typer.Option(None, help="write a resumable training state every N steps (0: none)"),
    checkpoints: Optional[Path] = typer.Option(None, help="folder of the training state [default: .OUT-partial beside --out]; a rerun resumes from it"),
    nproc: int = typer.Option(1, help="processes to train on (DDP, or FSDP2 with student.parallel fsdp): relaunches this command under torchrun"),
    loss_log: Optional[Path] = typer.Option(None, help="CSV file for the per-step loss log (the validation log goes beside it)"),
    overwrite: Overwrite = False,
) -> None:
    """Train a student from a cache (resuming from its training state when one is there)."""
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        launch_torchrun(nproc)
    from pipeline.lm.student_settings import StudentSettings
    from pipeline.lm.trainer import train_student

    settings = read_section(params, "student", StudentSettings).updated(
        "student",
        init=init,
        alpha=alpha,
        loss=loss,
        tail=tail,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        grad_accumulation=grad_accumulation,
        device=device,
        precision=precision,
        save_every=save_every,
        cross_tokenizer=None if cross_tokenizer is None else {"loss": cross_tokenizer},
    )
    checkpoints = checkpoints or out.parent / f".{out.name}-partial"
    train_student(cache, settings, out, tokenizer, loss_log, checkpoint_dir=checkpoints, teacher=teacher_model, overwrite=overwrite)


def launch_torchrun(nproc: int) -> None:
    """Replace this process by torchrun running the same `kd` command line in `nproc` processes (single node).

    exec, not a child: a scheduler's SIGTERM or SIGKILL then reaches torchrun, which stops its workers.
    """
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg.startswith("--nproc="):
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        args.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "pipeline.cli", *args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


@app.command()
@clean_errors
def evaluate(
    cache: Path = typer.Option(..., parser=cache_location, help="cache directory (or object-store URL) with a validation split (an evaluation-only cache works too)"),
    teacher_model: Path = typer.Option(..., "--teacher", help="teacher checkpoint folder (for parameters and speed)"),
    student_dirs: list[str] = typer.Option(..., "--student", help="NAME=FOLDER, repeatable"),
    out: Optional[Path] = typer.Option(None, help="write metrics JSON here"),
    params: ParamsFile = None,
    speed_sequences: Optional[int] = typer.Option(None, help="validation sequences timed [default: evaluate.speed_sequences of --params, else 16]"),
    split: str = typer.Option("validation", help="the cache split scored: validation, or train to compare with the prompts a student trained on"),
    any_teacher: bool = typer.Option(False, "--any-teacher", help="compare with a --teacher other than the one that made the cache (its weights hash differs)"),
    overwrite: Overwrite = False,
) -> None:
    """Compare students with the teacher on the cache's validation split (or --split)."""
    from pipeline.lm.metrics import EvaluateSettings, evaluate_students, format_table

    settings = read_section(params, "evaluate", EvaluateSettings).updated("evaluate", speed_sequences=speed_sequences)
    metrics = evaluate_students(cache, teacher_model, student_folders(student_dirs), settings, out, split=split, overwrite=overwrite, any_teacher=any_teacher)
    typer.echo(format_table(metrics))


@app.command()
@clean_errors
def report(
    metrics: Path = typer.Argument(Path("reports/metrics.json")),
    classify_metrics: Path = typer.Option(Path("reports/classify_metrics.json"), help="classification metrics, printed too when the file exists"),
    generation: Path = typer.Option(Path("reports/generation.json"), help="generation metrics of the judge stage, printed too when the file exists"),
    answers: Path = typer.Option(Path("reports/generation-answers.json"), help="the judge stage's answers: the first --examples are printed side by side"),
    examples: int = typer.Option(2, help="held-out prompts whose answers are printed (greedy), 0 for none"),
) -> None:
    """Print the metrics table written by the evaluate stage (and the generation and classification tables when they exist)."""
    from pipeline.lm.metrics import METRICS_FILE, format_table

    typer.echo(format_table(METRICS_FILE.read(metrics)))
    if generation.exists():
        from pipeline.lm.generation import ANSWERS_FILE, GENERATION_FILE, format_examples, format_judge_table

        judged = GENERATION_FILE.read(generation)
        for mode in judged["models"]:
            typer.echo("")
            typer.echo(format_judge_table(judged, mode))
        if examples and answers.exists():
            typer.echo("")
            typer.echo(f"answers to the first {examples} held-out prompts (all of them: reports/generation.md)")
            typer.echo(format_examples(ANSWERS_FILE.read(answers), examples))
    if classify_metrics.exists():
        from pipeline.classify.evaluate import CLASSIFY_METRICS_FILE, format_classify_table

        typer.echo("")
        typer.echo(format_classify_table(CLASSIFY_METRICS_FILE.read(classify_metrics)))
