"""Stage teacher: run the teacher over the prepared prompts and write the top-k cache.

DVC deletes a stage's outputs before running it, so the teacher writes into WORK, outside the
outputs, and moves the finished cache into place: after a crash, `dvc repro` resumes from the
shards already in WORK instead of starting over.
"""

import os
import shutil
from pathlib import Path

from pipeline.cache import OtherSettingsError
from pipeline.config import teacher_settings
from pipeline.errors import run_main
from pipeline.teacher import run_teacher
from stages import load_params, teacher_ref

CACHE = Path("data/cache")
WORK = Path("data/.cache-partial")


def main() -> None:
    settings = teacher_settings(load_params()["teacher"])
    try:
        manifest = run_teacher(Path("data/prepared"), teacher_ref(), WORK, settings)
    except OtherSettingsError:
        print(f"teacher: {WORK} holds an unfinished run with other settings; starting over")
        shutil.rmtree(WORK)
        manifest = run_teacher(Path("data/prepared"), teacher_ref(), WORK, settings)
    shutil.rmtree(CACHE, ignore_errors=True)
    os.replace(WORK, CACHE)
    print(f"cache: {sum(s['tokens'] for s in manifest['splits'].values())} tokens in {CACHE}")


if __name__ == "__main__":
    run_main(main)
