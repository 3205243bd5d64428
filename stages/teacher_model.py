"""Stage teacher_model: resolve teacher.model (converting the embedded GGUF once) into models/teacher.json."""

from pipeline.cache import write_json
from pipeline.errors import run_main
from pipeline.teacher_model import EMBEDDED_DIR, resolve_teacher
from stages import TEACHER_REF, load_params


def main() -> None:
    TEACHER_REF.parent.mkdir(parents=True, exist_ok=True)
    write_json(TEACHER_REF, resolve_teacher(str(load_params()["teacher"]["model"]), EMBEDDED_DIR))


if __name__ == "__main__":
    run_main(main)
