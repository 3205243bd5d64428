"""Stage teacher: run the teacher over the prepared prompts and write the top-k cache."""

from pathlib import Path

from pipeline.config import teacher_settings
from pipeline.teacher import run_teacher
from stages import load_params, run_stage, teacher_ref


def main() -> None:
    manifest = run_teacher(Path("data/prepared"), teacher_ref(), Path("data/cache"), teacher_settings(load_params()["teacher"]))
    print(f"cache: {sum(s['tokens'] for s in manifest['splits'].values())} tokens in data/cache")


if __name__ == "__main__":
    run_stage(main)
