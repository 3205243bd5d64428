"""`kd judge`: the teacher and each student answer held-out prompts; the teacher scores what they wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import Overwrite, ParamsFile, clean_errors, student_folders
from pipeline.errors import PipelineError
from pipeline.settings import read_section

app = typer.Typer()


def compared_pairs(items: list[str]) -> list[tuple[str, str]]:
    """`--compare MODEL:BASELINE` options as (model, baseline) pairs."""
    pairs = []
    for item in items:
        model, sep, baseline = item.partition(":")
        if not sep or not model or not baseline:
            raise PipelineError(f"--compare expects MODEL:BASELINE (two student names), got '{item}'")
        pairs.append((model, baseline))
    return pairs


@app.command()
@clean_errors
def judge(
    teacher_model: Path = typer.Option(..., "--teacher", help="teacher model folder: it answers too, and scores every answer"),
    student_dirs: list[str] = typer.Option(..., "--student", help="NAME=FOLDER, repeatable (the teacher's tokenizer)"),
    prompts: Optional[Path] = typer.Option(None, help="JSONL, CSV or Parquet with a prompt column [default: judge.prompts of --params]"),
    params: ParamsFile = None,
    sample: Optional[int] = typer.Option(None, help="a seeded sample of this many prompts [default: judge.sample]"),
    decoding: Optional[list[str]] = typer.Option(None, help="greedy and/or sampled, repeatable [default: judge.decoding]"),
    max_new_tokens: Optional[int] = None,
    backend: Optional[str] = typer.Option(None, help="transformers or vllm: every model generates through it"),
    compare: list[str] = typer.Option([], help="MODEL:BASELINE, repeatable: paired differences and the share of the baseline's gap to the teacher closed"),
    out: Optional[Path] = typer.Option(None, help="write the metrics JSON here"),
    answers: Optional[Path] = typer.Option(None, help="write every answer (JSON) here"),
    markdown: Optional[Path] = typer.Option(None, help="write the side-by-side answers (Markdown) here"),
    overwrite: Overwrite = False,
) -> None:
    """Judge students by what they write: answers to held-out prompts, scored by the teacher, ROUGE-L and degeneration, with 95% intervals."""
    from pipeline.lm.generation import JudgeSettings, format_judge_table, judge_models
    from pipeline.lm.teacher import TeacherSettings

    settings = read_section(params, "judge", JudgeSettings).updated("judge", prompts=prompts, sample=sample, decoding=decoding, max_new_tokens=max_new_tokens, backend=backend)
    teacher = read_section(params, "teacher", TeacherSettings)  # the sampled decoding is the teacher stage's; its chat template too
    report = judge_models(settings, teacher_model, student_folders(student_dirs), teacher.generation, teacher.chat_template, compared_pairs(compare), out, answers, markdown, overwrite)
    for mode in report.models:
        typer.echo(format_judge_table(report, mode))
        typer.echo("")
