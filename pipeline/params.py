"""The whole params.yaml as one model: every section's settings, and no unknown section.

The section models live with the code they configure; this module only assembles them. Entry
points read just the sections they use (pipeline.settings.read_section); this model checks a whole
file at once (the committed params files are checked so in the tests).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.classify.data import ClassifyDataSettings
from pipeline.classify.evaluate import ClassifyEvaluateSettings
from pipeline.classify.teacher import ClassifyTeacherSettings
from pipeline.classify.trainer import ClassifyStudentSettings
from pipeline.data import DataSettings
from pipeline.lm.generation import JudgeSettings
from pipeline.lm.metrics import EvaluateSettings
from pipeline.lm.on_policy import OnPolicySettings
from pipeline.lm.student_settings import StudentSettings
from pipeline.lm.teacher import TeacherSettings
from pipeline.settings import Settings, read_params_file


class ClassifyParams(Settings):
    """The `classify` section: text classification by distillation."""

    data: ClassifyDataSettings = ClassifyDataSettings()
    teacher: ClassifyTeacherSettings = ClassifyTeacherSettings()
    student: ClassifyStudentSettings = ClassifyStudentSettings()
    evaluate: ClassifyEvaluateSettings = ClassifyEvaluateSettings()


class Params(Settings):
    """Every section of params.yaml; a missing section takes its defaults."""

    data: DataSettings = DataSettings()
    teacher: TeacherSettings = TeacherSettings()
    student: StudentSettings = StudentSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    judge: JudgeSettings = JudgeSettings()
    on_policy: OnPolicySettings = OnPolicySettings()
    classify: ClassifyParams = ClassifyParams()


def load_params(path: Path) -> Params:
    """Read and validate a whole params file; any problem is one PipelineError line naming the key path."""
    return Params.from_section(read_params_file(path))
