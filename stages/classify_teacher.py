"""Stage classify_teacher: label the train and test texts zero-shot with the teacher, write the soft-label cache.

Like the teacher stage, it fills WORK and moves the finished cache into place, so a crash
resumes from the shards already written.
"""

from functools import partial
from pathlib import Path

from pipeline.cache import publish
from pipeline.classify.data import ClassifyDataSettings, read_classify_data
from pipeline.classify.teacher import ClassifyTeacherSettings, run_classify_teacher
from pipeline.errors import run_main
from stages import params, teacher_ref

CACHE = Path("data/classify-cache")
WORK = Path("data/.classify-cache-partial")


def main() -> None:
    settings = params("classify.teacher", ClassifyTeacherSettings)
    data = read_classify_data(params("classify.data", ClassifyDataSettings), settings.prompt.label_names)
    manifest = publish(partial(run_classify_teacher, data, teacher_ref(), settings=settings), WORK, CACHE, "classify teacher")
    print(f"classify cache: {sum(split.rows for split in manifest.splits.values())} texts in {CACHE}")


if __name__ == "__main__":
    run_main(main)
