"""Stage teacher_model: resolve teacher.model (converting the embedded GGUF once) into models/teacher.json."""

from pipeline.atomic import write_json
from pipeline.errors import run_main
from pipeline.lm.teacher import TeacherSettings
from pipeline.teacher_model import EMBEDDED_DIR, resolve_teacher
from stages import TEACHER_REF, params


def main() -> None:
    write_json(TEACHER_REF, resolve_teacher(params("teacher", TeacherSettings).model, EMBEDDED_DIR))


if __name__ == "__main__":
    run_main(main)
