import pytest
import torch

from pipeline.cache import read_manifest
from pipeline.errors import PipelineError
from pipeline.metrics import student_agreement
from pipeline.streaming import stream_batches
from pipeline.checkpoint import load_causal_lm
from pipeline.student import build_student
from pipeline.training import TrainSettings, train_student

STUDENT = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 256}


def test_batches_line_up_with_rows(tiny_cache):
    """Each cached position's target is the token the row stores at that position."""
    seen = 0
    for batch in stream_batches(tiny_cache, "train", batch_size=3, seed=1, shuffle_rows=4):
        assert torch.equal(batch.input_ids[batch.rows, batch.columns + 1], batch.targets)
        assert batch.attention_mask[batch.rows, batch.columns + 1].all()
        assert (batch.topk_logprobs[:, :-1] >= batch.topk_logprobs[:, 1:]).all()
        seen += batch.num_tokens
    assert seen == read_manifest(tiny_cache)["splits"]["train"]["tokens"]


def test_training_lowers_kl_to_teacher_on_held_out_data(tmp_path, tiny_cache, tiny_teacher):
    settings = TrainSettings(alpha=1.0, epochs=15, batch_size=4, lr=1e-2, warmup_steps=2, seed=0)
    before = student_agreement(build_student(STUDENT, 320, seed=0).eval(), tiny_cache)
    log = train_student(tiny_cache, tiny_teacher, STUDENT, settings, tmp_path / "student")
    after = student_agreement(load_causal_lm(tmp_path / "student"), tiny_cache)
    assert after["kl_to_teacher"] < 0.7 * before["kl_to_teacher"]
    assert log[-1]["kl"] < log[0]["kl"]
    assert (tmp_path / "student" / "tokenizer.json").exists()


def test_student_refuses_a_cache_from_another_tokenizer(tmp_path, tiny_cache, other_tokenizer_dir):
    with pytest.raises(PipelineError, match="tokenizer mismatch"):
        train_student(tiny_cache, other_tokenizer_dir, STUDENT, TrainSettings(epochs=1), tmp_path / "student")
    assert not (tmp_path / "student").exists()
