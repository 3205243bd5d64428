"""What validation during training costs: the share of a training run spent in validation KL, sampled and whole.

Trains the params file's student on a cache twice, with `student.eval_positions` as the params file
sets it and with the whole split (`eval_positions: null`), and prints for each the seconds in
optimizer steps, the seconds in validation (every `eval_every` steps and at the end) and their ratio.

    python -m bench.validation_cost --cache data/cache --params params.yaml

Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pipeline.lm.trainer as training
from pipeline.cache.reader import Cache
from pipeline.errors import run_main
from pipeline.lm.step_plan import StepPlan
from pipeline.lm.student_settings import StudentSettings
from pipeline.settings import read_section


def timed_run(cache: Path, settings: StudentSettings, work: Path) -> tuple[float, float]:
    """(seconds of the optimizer steps, seconds of validation) of one run."""
    spent = {"validation": 0.0, "validation_in_loop": 0.0, "loop": 0.0}
    in_loop = [False]
    validate, loop = training.validation_kl, training.train_loop

    def timed_validation(*args, **kwargs):
        started = time.perf_counter()
        value = validate(*args, **kwargs)
        seconds = time.perf_counter() - started
        spent["validation"] += seconds
        spent["validation_in_loop"] += seconds if in_loop[0] else 0.0
        return value

    def timed_loop(*args, **kwargs):
        in_loop[0], started = True, time.perf_counter()
        rows = loop(*args, **kwargs)
        spent["loop"] += time.perf_counter() - started
        in_loop[0] = False
        return rows

    training.validation_kl, training.train_loop = timed_validation, timed_loop
    try:
        training.train_student(cache, settings, work / "student", overwrite=True)
    finally:
        training.validation_kl, training.train_loop = validate, loop
    return spent["loop"] - spent["validation_in_loop"], spent["validation"]


def validations(cache: Path, settings: StudentSettings) -> int:
    """How many validations a run makes: every eval_every steps before the last, and one at the end."""
    from pipeline.lm.parallel import training_processes

    with training_processes("cpu") as processes:
        total = StepPlan(Cache.open(cache), settings, processes).total
    return (total - 1) // settings.eval_every + 1 if settings.eval_every else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("data/cache"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    settings = read_section(args.params, "student", StudentSettings).updated("student", save_every=0)
    cache = Cache.open(args.cache)
    print(f"cache {args.cache}: {cache.splits['validation']['tokens']:,} validation positions; params {args.params}, eval_every {settings.eval_every}, {validations(args.cache, settings)} validations")
    with tempfile.TemporaryDirectory() as folder:
        for label, run in (("eval_positions " + str(settings.eval_positions), settings), ("whole split", settings.model_copy(update={"eval_positions": None}))):
            steps, validation = timed_run(args.cache, run, Path(folder))
            print(f"{label:<22} steps {steps:7.1f} s   validation {validation:6.1f} s   = {validation / steps:6.1%} of the steps")


if __name__ == "__main__":
    run_main(main)
