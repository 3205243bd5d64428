"""`student.init`: a student that starts from a pretrained model folder instead of random weights."""

from __future__ import annotations

import pytest
import torch
from conftest import make_llama, make_tokenizer
from transformers import AutoModelForCausalLM

from pipeline.cache import Cache
from pipeline.errors import PipelineError
from pipeline.lm.metrics import student_agreement
from pipeline.lm.student import initial_student
from pipeline.lm.student_settings import StudentSettings
from pipeline.lm.trainer import train_student
from pipeline.models import load_causal_lm


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A small 'pretrained' model with the teacher's tokenizer (another seed and depth than the teacher)."""
    return make_llama(tmp_path_factory.mktemp("models") / "pretrained", make_tokenizer(), seed=7, layers=1, hidden_size=64)


def test_a_pretrained_student_starts_from_exactly_its_weights(pretrained, tiny_cache):
    student = initial_student(str(pretrained), {"hidden_size": 999}, Cache.open(tiny_cache).vocab_size, seed=0)
    reference = AutoModelForCausalLM.from_pretrained(pretrained)  # a direct HF load of the folder
    expected = reference.state_dict()
    assert student.state_dict().keys() == expected.keys()
    for name, tensor in student.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert student.config.hidden_size == 64  # student.model applies to scratch students only


def test_training_from_a_pretrained_start_moves_it_towards_the_teacher(tmp_path, tiny_cache, pretrained):
    settings = StudentSettings(init=str(pretrained), alpha=1.0, epochs=10, batch_size=4, lr=1e-2, warmup_steps=2)
    before = student_agreement(load_causal_lm(pretrained), Cache.open(tiny_cache))
    train_student(tiny_cache, settings, tmp_path / "student")
    after = student_agreement(load_causal_lm(tmp_path / "student"), Cache.open(tiny_cache))
    assert after["kl_to_teacher"] < 0.8 * before["kl_to_teacher"]
    assert (tmp_path / "student" / "tokenizer.json").exists()


def test_a_pretrained_student_with_another_tokenizer_is_refused(tmp_path, tiny_cache):
    other = make_llama(tmp_path / "other", make_tokenizer(vocab_size=300), layers=1, hidden_size=64)
    with pytest.raises(PipelineError, match=r"^tokenizer mismatch: the cache was made with tokenizer .* the student's at .*other"):
        train_student(tiny_cache, StudentSettings(init=str(other), epochs=1), tmp_path / "student")
    assert not (tmp_path / "student").exists()


def test_a_student_init_that_is_no_model_or_too_small_is_one_clear_error(tmp_path, pretrained, tiny_cache):
    with pytest.raises(PipelineError, match=r"^student.init: .*missing is neither 'scratch' nor a model folder with a config.json$"):
        initial_student(str(tmp_path / "missing"), {}, 320, seed=0)
    with pytest.raises(PipelineError, match=r"^student.init: the model at .* has 320 embedding rows, but the cache holds token ids up to 999$"):
        initial_student(str(pretrained), {}, 1000, seed=0)


def test_kd_student_takes_init_from_the_command_line(tmp_path, tiny_cache, pretrained):
    from typer.testing import CliRunner

    from pipeline.cli import app

    result = CliRunner().invoke(app, ["student", "--cache", str(tiny_cache), "--out", str(tmp_path / "s"), "--init", str(pretrained), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert load_causal_lm(tmp_path / "s").config.num_hidden_layers == 1 and load_causal_lm(tmp_path / "s").config.hidden_size == 64
