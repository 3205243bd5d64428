"""Stage teacher: run the teacher over the prepared prompts and write the top-k cache.

The cache is filled in WORK, outside the stage's outputs (which DVC deletes before a run), and
moved into place when complete: after a crash, `dvc repro` resumes from the shards in WORK.
"""

from functools import partial
from pathlib import Path

from pipeline.cache import publish
from pipeline.errors import run_main
from pipeline.lm.teacher import TeacherSettings, run_teacher
from stages import params, teacher_ref

CACHE = Path("data/cache")
WORK = Path("data/.cache-partial")


def main() -> None:
    manifest = publish(partial(run_teacher, Path("data/prepared"), teacher_ref(), settings=params("teacher", TeacherSettings)), WORK, CACHE)
    print(f"cache: {manifest.tokens} tokens in {CACHE}")


if __name__ == "__main__":
    run_main(main)
