"""Typed settings: every committed params file validates, and a bad value is one line naming its key path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data import DataSettings
from pipeline.errors import PipelineError
from pipeline.lm.student_settings import StudentSettings
from pipeline.params import Params, load_params
from pipeline.settings import PARAMS_SECTIONS, Settings, read_section

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
        ("student", "lr", True, "student.lr: expected a number, got true"),
        ("student", "max_steps", False, "student.max_steps: expected a number, got false"),
        ("teacher", "chat_template", 1, "teacher.chat_template: expected true or false, got 1"),
        ("teacher.generation", "temperature", True, "teacher.generation.temperature: expected a number, got true"),
        ("student", "model", {"hiden_size": 64}, "student.model: not LlamaConfig field(s): hiden_size (did you mean hidden_size?)"),
        ("student", "model", {"hidden_size": 130, "num_attention_heads": 4}, "student.model: the hidden size (130) is not a multiple of the number of attention heads (4)"),
        ("student", "model", {"num_attention_heads": 4, "num_key_value_heads": 3}, "student.model: num_attention_heads (4) must be a multiple of num_key_value_heads (3)"),
        ("student", "model", {"hidden_size": "wide"}, "student.model: hidden_size must be a whole number of at least 1, got 'wide'"),
        ("student", "model", {"vocab_size": 100}, "student.model: vocab_size comes from the cache (its tokenizer's output vocabulary): remove it"),
        ("student", "model", {"hidden_act": "swishy"}, "student.model: hidden_act 'swishy' is not an activation transformers knows (e.g. silu, gelu, relu)"),
    ],
)
def test_a_bad_value_is_one_line_naming_its_key_path(tmp_path, section, key, value, message):
    path = bad_params(tmp_path, section, key, value)
    with pytest.raises(PipelineError) as error:
        load_params(path)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_section_names_here_are_the_params_models():
    """pipeline.settings keeps the section names (so that every entry point refuses a misspelled one cheaply); they must be Params' own."""
    assert set(PARAMS_SECTIONS) == set(Params.model_fields)
    for name, inner in PARAMS_SECTIONS.items():
        annotation = Params.model_fields[name].annotation
        sections_only = all(isinstance(f.annotation, type) and issubclass(f.annotation, Settings) for f in annotation.model_fields.values())
        assert set(inner) == (set(annotation.model_fields) if sections_only else set())


@pytest.mark.parametrize(
    "text, message",
    [
        ("studnet:\n  lr: 0.1\n", "{path}: unknown section 'studnet' (did you mean 'student'? known: classify, data, evaluate, judge, on_policy, student, teacher)"),
        ("classify:\n  studnet: {}\n", "{path}: unknown section 'classify.studnet' (did you mean 'classify.student'? known: classify.data, classify.evaluate, classify.student, classify.teacher)"),
        ("student:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n", "{path} is not valid YAML: key 'lr' appears twice in one section (lines 2 and 4)"),
        ("student:\n  lr: [0.1\n", "{path} is not valid YAML: expected ',' or ']', but got '<stream end>'"),
    ],
    ids=["misspelled-section", "misspelled-subsection", "duplicate-key", "broken-yaml"],
)
def test_a_params_file_with_a_misspelled_section_or_a_repeated_key_is_refused(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    for section, model in (("student", StudentSettings), ("data", DataSettings)):  # whichever section an entry point reads
        with pytest.raises(PipelineError) as error:
            read_section(path, section, model)
        assert str(error.value).startswith(message.format(path=path)) and "\n" not in str(error.value)
    result = CliRunner().invoke(app, ["student", "--cache", str(tmp_path), "--out", str(tmp_path / "s"), "--params", str(path)])
    assert result.exit_code == 1 and result.output.startswith("error: " + message.format(path=path))


def test_yaml_merge_keys_and_llama_config_keyword_fields_are_accepted(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("student:\n  <<: {lr: 0.1, epochs: 2}\n  lr: 0.2\n  model: {rope_theta: 500000.0, attn_implementation: eager}\n")
    settings = read_section(path, "student", StudentSettings)
    assert (settings.lr, settings.epochs, settings.model["rope_theta"]) == (0.2, 2, 500000.0)


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
