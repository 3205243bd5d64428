from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from conftest import cache_rows

from pipeline.cache import Cache, read_manifest
from pipeline.errors import PipelineError
from pipeline.lm.batch import TopKBatch
from pipeline.lm.metrics import student_agreement
from pipeline.lm.streaming import count_batches, stream_batches
from pipeline.lm.student import build_student
from pipeline.lm.student_settings import StudentSettings
from pipeline.lm.trainer import train_student
from pipeline.models import load_causal_lm

STUDENT = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 256}


def test_batches_line_up_with_rows(tiny_cache):
    """Each cached position's target is the token the row stores at that position."""
    seen = 0
    for batch in stream_batches(Cache.open(tiny_cache), "train", batch_size=3, seed=1, shuffle_rows=4):
        assert torch.equal(batch.input_ids[batch.rows, batch.columns + 1], batch.targets)
        assert batch.attention_mask[batch.rows, batch.columns + 1].all()
        assert (batch.listed_logprobs[:, :-1] >= batch.listed_logprobs[:, 1:]).all()
        seen += batch.num_tokens
    assert seen == read_manifest(tiny_cache)["splits"]["train"]["tokens"]


@pytest.mark.parametrize("batch_size, shuffle_rows", [(4, 256), (3, 2), (7, 256)])
def test_batches_span_shards_and_skip_resumes_the_same_stream(tiny_cache, batch_size, shuffle_rows):
    """Every batch but the last has batch_size rows whatever the shard size (5 rows here); each row once; skip=k is the stream from batch k."""
    cache = Cache.open(tiny_cache)
    batches = list(stream_batches(cache, "train", batch_size, seed=3, shuffle_rows=shuffle_rows))
    sizes = [len(b.input_ids) for b in batches]
    rows = cache.splits["train"].rows
    assert sizes == [batch_size] * (rows // batch_size) + ([rows % batch_size] if rows % batch_size else [])
    assert len(batches) == count_batches(cache, "train", batch_size, seed=3, shuffle_rows=shuffle_rows)
    every = sorted(tuple(ids[mask.bool()].tolist()) for b in batches for ids, mask in zip(b.input_ids, b.attention_mask))
    assert every == sorted(tuple(row["input_ids"]) for row in cache_rows(tiny_cache)[:rows])
    for skip in (1, 2, len(batches) - 1):
        resumed = list(stream_batches(cache, "train", batch_size, seed=3, shuffle_rows=shuffle_rows, skip=skip))
        assert len(resumed) == len(batches) - skip
        assert all(torch.equal(a.input_ids, b.input_ids) and torch.equal(a.listed_ids, b.listed_ids) for a, b in zip(resumed, batches[skip:]))


def test_training_lowers_kl_to_teacher_on_held_out_data(tmp_path, tiny_cache, tiny_teacher):
    settings = StudentSettings(model=STUDENT, alpha=1.0, epochs=15, batch_size=4, lr=1e-2, warmup_steps=2, seed=0)
    before = student_agreement(build_student(STUDENT, 320, seed=0).eval(), Cache.open(tiny_cache))
    log = train_student(tiny_cache, settings, tmp_path / "student", tiny_teacher).steps
    after = student_agreement(load_causal_lm(tmp_path / "student"), Cache.open(tiny_cache))
    assert after["kl_to_teacher"] < 0.7 * before["kl_to_teacher"]
    assert log[-1]["kd"] < log[0]["kd"]
    assert (tmp_path / "student" / "tokenizer.json").exists()


def test_student_refuses_a_cache_from_another_tokenizer(tmp_path, tiny_cache, other_tokenizer_dir):
    with pytest.raises(PipelineError, match="tokenizer mismatch"):
        train_student(tiny_cache, StudentSettings(model=STUDENT, epochs=1), tmp_path / "student", other_tokenizer_dir)
    assert not (tmp_path / "student").exists()


def first_batch(cache, batch_size=3) -> TopKBatch:
    return next(iter(stream_batches(Cache.open(cache), "train", batch_size)))


def test_all_positions_are_every_next_token_prediction_and_never_padding(tiny_cache):
    batch = first_batch(tiny_cache)
    rows, columns, targets = batch.scored("all")
    lengths = batch.attention_mask.sum(1)
    assert len(rows) == int((lengths - 1).sum()) and len(set(zip(rows.tolist(), columns.tolist()))) == len(rows)
    assert torch.equal(batch.input_ids[rows, columns + 1], targets) and batch.attention_mask[rows, columns + 1].all()
    assert torch.equal(rows[: batch.num_tokens], batch.rows) and torch.equal(columns[: batch.num_tokens], batch.columns)


def test_positions_all_trains_ce_on_prompt_tokens_and_the_divergence_on_cached_ones(tiny_cache):
    batch, model = first_batch(tiny_cache), build_student(STUDENT, 320, seed=0)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    labels = batch.input_ids[:, 1:].masked_fill(batch.attention_mask[:, 1:] == 0, -100)
    every_token_ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    settings = StudentSettings(alpha=0.5, chunk_positions=7)
    response, everything = batch.loss(model, settings.training_objective()), batch.loss(model, settings.updated(positions="all").training_objective())
    torch.testing.assert_close(everything["ce"], every_token_ce)
    torch.testing.assert_close(everything["kd"], response["kd"])
    assert not torch.isclose(everything["ce"], response["ce"])


def test_padding_never_counts(tiny_cache):
    batch, model = first_batch(tiny_cache), build_student(STUDENT, 320, seed=0)
    padded = replace(batch, input_ids=F.pad(batch.input_ids, (0, 9), value=5), attention_mask=F.pad(batch.attention_mask, (0, 9)))
    for positions in ("response", "all"):
        settings = StudentSettings(positions=positions)
        torch.testing.assert_close(padded.loss(model, settings.training_objective())["loss"], batch.loss(model, settings.training_objective())["loss"])


@pytest.mark.parametrize("loss,tail", [("reverse_kl", "renormalize"), ("jsd", "bucket"), ("tvd", "bucket")])
def test_other_losses_train(tmp_path, tiny_cache, tiny_teacher, loss, tail):
    settings = StudentSettings(model=STUDENT, loss=loss, tail=tail, alpha=1.0, epochs=4, batch_size=4, lr=1e-2, warmup_steps=2, positions="all", chunk_positions=16)
    log = train_student(tiny_cache, settings, tmp_path / "student", tiny_teacher).steps
    assert sum(row["kd"] for row in log[-3:]) < 0.8 * sum(row["kd"] for row in log[:3])


def test_bad_loss_settings_are_refused_before_training(tmp_path, tiny_cache, tiny_teacher):
    for bad, message in (({"loss": "kl"}, "loss: 'kl' is not one of"), ({"positions": "prompt"}, "positions"), ({"chunk_positions": 0}, "chunk_positions")):
        with pytest.raises(PipelineError, match=message):
            train_student(tiny_cache, StudentSettings(model=STUDENT, **bad), tmp_path / "student", tiny_teacher)
