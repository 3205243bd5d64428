"""Stage classify_teacher: label the train and test texts zero-shot with the teacher, write the soft-label cache.

Like the teacher stage, it writes into WORK and moves the finished cache into place, so a crash
resumes from the shards already written.
"""

import os
import shutil
from pathlib import Path

from pipeline.cache import OtherSettingsError
from pipeline.classify_data import read_labelled
from pipeline.classify_teacher import run_classify_teacher
from pipeline.config import classify_teacher_settings
from pipeline.errors import run_main
from stages import load_params, teacher_ref

CACHE = Path("data/classify-cache")
WORK = Path("data/.classify-cache-partial")


def main() -> None:
    section = load_params()["classify"]
    settings = classify_teacher_settings(section["teacher"])
    data_params = section["data"]
    names = list(settings.prompt.labels)
    data = {
        split: read_labelled(Path(data_params[split]), names, data_params.get("text_column", "text"), data_params.get("label_column", "label"))
        for split in ("train", "test")
    }
    try:
        manifest = run_classify_teacher(data, teacher_ref(), WORK, settings)
    except OtherSettingsError:
        print(f"classify teacher: {WORK} holds an unfinished run with other settings; starting over")
        shutil.rmtree(WORK)
        manifest = run_classify_teacher(data, teacher_ref(), WORK, settings)
    shutil.rmtree(CACHE, ignore_errors=True)
    os.replace(WORK, CACHE)
    print(f"classify cache: {sum(s['rows'] for s in manifest['splits'].values())} texts in {CACHE}")


if __name__ == "__main__":
    run_main(main)
