"""Typed settings: every committed params file validates, and a bad value is one line naming its key path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import PipelineError
from pipeline.lm.training import StudentSettings
from pipeline.params import Params, load_params
from pipeline.settings import read_section

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILES = [REPO / "params.yaml", *sorted((REPO / "bench" / "params").glob("*.yaml"))]


@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda path: path.name)
def test_committed_params_files_validate(path):
    params = load_params(path)
    assert isinstance(params, Params)
    raw = yaml.safe_load(path.read_text())
    assert params.student.lr == raw["student"]["lr"]  # bench files may hold only the sections their bench reads
    assert params.teacher.k == raw.get("teacher", {}).get("k", 20)


def bad_params(tmp_path, section: str, key: str, value) -> Path:
    values = yaml.safe_load((REPO / "params.yaml").read_text())
    target = values
    for part in section.split("."):
        target = target[part]
    target[key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("student", "loss", "fkl", "student.loss: 'fkl' is not one of 'forward_kl', 'reverse_kl', 'jsd', 'skew_kl' or 'tvd'"),
        ("student", "alpha", 1.5, "student.alpha: input should be less than or equal to 1, got 1.5"),
        ("student", "lr_max", 0.1, "unknown setting(s) in 'student': lr_max (known: alpha, batch_size,"),
        ("teacher.engine", "gpu_memory", 0.5, "unknown setting(s) in 'teacher.engine': gpu_memory (known: enforce_eager,"),
        ("teacher.generation", "max_new_tokens", 0, "teacher.generation.max_new_tokens: input should be greater than or equal to 1, got 0"),
        ("teacher.cache", "encoding", "int4", "teacher.cache.encoding: 'int4' is not one of 'compact' or 'float32'"),
        ("classify.teacher", "template", "no placeholder", "classify.teacher: the classify prompt template must contain {text}"),
        ("classify.student", "label_temperature", -1, "classify.student.label_temperature: label_temperature must be 'fit' or a number above 0, got -1"),
    ],
)
def test_a_bad_value_is_one_line_naming_its_key_path(tmp_path, section, key, value, message):
    path = bad_params(tmp_path, section, key, value)
    with pytest.raises(PipelineError) as error:
        load_params(path)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_each_entry_point_reads_only_its_section(tmp_path):
    """A stage validates the params sections it declares in dvc.yaml, so a bad classify value does not stop the student."""
    path = bad_params(tmp_path, "classify.student", "epochs", 0)
    assert read_section(path, "student", StudentSettings) == StudentSettings.from_section(yaml.safe_load(path.read_text())["student"])
    with pytest.raises(PipelineError, match="classify.student.epochs: input should be greater than or equal to 1"):
        load_params(path)


def test_cli_overrides_are_validated_through_the_same_models(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["student", "--cache", str(tmp_path), "--out", str(tmp_path / "s"), "--loss", "fkl"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: student.loss: 'fkl' is not one of 'forward_kl', 'reverse_kl', 'jsd', 'skew_kl' or 'tvd'"
    path = bad_params(tmp_path, "student", "warmup", 3)
    result = runner.invoke(app, ["student", "--cache", str(tmp_path), "--out", str(tmp_path / "s"), "--params", str(path)])
    assert result.exit_code == 1 and result.output.startswith("error: unknown setting(s) in 'student': warmup")
    assert not (tmp_path / "s").exists()
