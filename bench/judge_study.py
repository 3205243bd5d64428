"""Distilled against CE-only students from the same start, judged by what they write, over student seeds.

For each seed the student of `--params` (default params.yaml: the pruned start of the default run) is
trained twice on the cache, with its `alpha` (distilled) and with alpha 0 (CE only), as the two
student stages do; the untrained start is saved once (a pruned start does not depend on the seed).
Then `kd judge`'s library function lets the teacher, the start and every student answer the same
held-out prompts (`judge` section of the params file, `--sample` overrides its sample) and compares
each seed's distilled student with its CE-only twin (paired bootstrap over the prompts).

    python -m bench.judge_study --cache data/cache --teacher models/smollm2-135m-instruct --seeds 0 1 2 --sample 100 --out /tmp/judge-study

Students already in `--out` are reused, so an interrupted study resumes; `--jobs 2` trains two
students at once, each in its own process with one thread. Prints, per decoding, the table of every
model and a summary over seeds (mean and range of the seeds' figures); writes `generation.json`,
`generation-answers.json` and `generation.md` into `--out`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pipeline.errors import run_main
from pipeline.lm.generation import JudgeReport, JudgeSettings, format_judge_table, judge_models
from pipeline.lm.student_settings import StudentSettings
from pipeline.lm.teacher import TeacherSettings
from pipeline.lm.trainer import save_initial_student
from pipeline.settings import read_section

METRICS = ("teacher_nll", "rouge_l_teacher", "rouge_l_reference", "loop_share", "distinct_2", "eos_share")


def train(cache: Path, params: Path, teacher: Path, out: Path, seed: int, alpha: float | None) -> Path:
    """One student by `kd student` in its own process (one thread), unless `out` already holds it."""
    if (out / "config.json").exists():
        return out
    command = [sys.executable, "-m", "pipeline.cli", "student", "--cache", str(cache), "--params", str(params), "--teacher", str(teacher), "--out", str(out)]
    command += ["--loss-log", str(out.with_suffix(".csv")), "--save-every", "0"]
    if alpha is not None:
        command += ["--alpha", str(alpha)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    seeded = out.parent / f"params-seed{seed}.yaml"
    if not seeded.exists():
        import yaml

        values = yaml.safe_load(params.read_text())
        values["student"]["seed"] = seed
        seeded.write_text(yaml.safe_dump(values))
    command[command.index(str(params))] = str(seeded)
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return out


def summary(report: JudgeReport, seeds: list[int]) -> str:
    """Per decoding: the mean over seeds of each metric (and the seeds' range), and the paired differences per seed."""
    lines = []
    for mode, models in report.models.items():
        lines.append(f"{mode}: mean over seeds {seeds} (min-max of the seeds' values)")
        for kind in ("distilled", "ce_only"):
            cells = []
            for metric in METRICS:
                values = [getattr(models[f"{kind}-{seed}"], metric) for seed in seeds]
                if values[0] is None:
                    continue
                points = np.array([v.value for v in values])
                cells.append(f"{metric} {points.mean():.3f} ({points.min():.3f}-{points.max():.3f})")
            lines.append(f"  {kind:<10} " + ", ".join(cells))
        for comparison in report.comparisons.get(mode, []):
            d, g = comparison.differences, comparison.gap_closed
            lines.append(
                f"  {comparison.model} - {comparison.baseline}: NLL {d['teacher_nll'].value:+.3f} [{d['teacher_nll'].low:+.3f}, {d['teacher_nll'].high:+.3f}], "
                f"ROUGE-L vs teacher {d['rouge_l_teacher'].value:+.3f} [{d['rouge_l_teacher'].low:+.3f}, {d['rouge_l_teacher'].high:+.3f}], "
                f"NLL gap closed {g['teacher_nll'].value:.2f} [{g['teacher_nll'].low:.2f}, {g['teacher_nll'].high:.2f}]"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("data/cache"))
    parser.add_argument("--teacher", type=Path, default=Path("models/smollm2-135m-instruct"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sample", type=int, default=None, help="held-out prompts judged [default: judge.sample of --params]")
    parser.add_argument("--jobs", type=int, default=1, help="students trained at once (one thread each)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    student = read_section(args.params, "student", StudentSettings)
    start = args.out / "start"
    if not (start / "config.json").exists():
        save_initial_student(args.cache, student, start, args.teacher)
    jobs = [(args.out / f"{kind}-{seed}", seed, None if kind == "distilled" else 0.0) for seed in args.seeds for kind in ("distilled", "ce_only")]
    with ThreadPoolExecutor(args.jobs) as pool:
        folders = list(pool.map(lambda job: train(args.cache, args.params, args.teacher, *job), jobs))
    students = {"start": start} | {folder.name: folder for folder in folders}
    judge = read_section(args.params, "judge", JudgeSettings).updated("judge", sample=args.sample)
    teacher = read_section(args.params, "teacher", TeacherSettings)
    pairs = [(f"distilled-{seed}", f"ce_only-{seed}") for seed in args.seeds]
    report = judge_models(
        judge, args.teacher, students, teacher.generation, teacher.chat_template, pairs, args.out / "generation.json", args.out / "generation-answers.json", args.out / "generation.md"
    )
    for mode in report.models:
        print(format_judge_table(report, mode) + "\n")
    print(summary(report, args.seeds))


if __name__ == "__main__":
    run_main(main)
