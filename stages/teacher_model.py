"""Stage teacher_model: resolve teacher.model (converting the embedded GGUF once) into models/teacher.json."""

from pathlib import Path

from pipeline.cache import write_json
from pipeline.teacher_model import resolve_teacher
from stages import TEACHER_REF, load_params, run_stage

EMBEDDED_DIR = Path("models/smollm2-135m-instruct")


def main() -> None:
    TEACHER_REF.parent.mkdir(parents=True, exist_ok=True)
    write_json(TEACHER_REF, resolve_teacher(str(load_params()["teacher"]["model"]), EMBEDDED_DIR))


if __name__ == "__main__":
    run_stage(main)
