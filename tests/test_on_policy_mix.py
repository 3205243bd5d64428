"""Mixing round caches into training (pipeline/lm/mixing.py): the share, λ = 0 and λ = 1 against stream_batches, seeds, resuming, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_llama, make_tokenizer, tiny_settings
from transformers import AutoTokenizer

from pipeline.cache import Cache
from pipeline.errors import PipelineError
from pipeline.lm.mixing import check_round_caches, mixed_batches, on_policy_rows
from pipeline.lm.streaming import stream_batches
from pipeline.lm.student_settings import StudentSettings
from pipeline.lm.teacher import run_teacher
from pipeline.teacher_model import resolve_teacher


@pytest.fixture(scope="module")
def round_cache(tmp_path_factory, tiny_teacher, small_prompts) -> Path:
    """The same teacher on another split of the prompts (as many train rows, other ones): the stand-in for a round cache."""
    from pipeline.data import read_prompts, split_prompts, write_splits

    prepared = tmp_path_factory.mktemp("round-prepared")
    write_splits(split_prompts(read_prompts(small_prompts), 0.3, seed=1), prepared)
    out = tmp_path_factory.mktemp("round") / "cache"
    run_teacher(prepared, resolve_teacher(str(tiny_teacher), tiny_teacher), out, tiny_settings())
    return out


def same(a, b) -> bool:
    return all((x is None and y is None) or torch.equal(x, y) for x, y in zip(vars(a).values(), vars(b).values(), strict=True))


def rows(batches) -> int:
    return sum(batch.input_ids.shape[0] for batch in batches)


@pytest.mark.parametrize("fraction", [0, 0.25, 0.5, 1])
def test_the_mix_holds_the_fraction_over_an_epoch(tiny_cache, round_cache, fraction):
    original, rounds = Cache.open(tiny_cache), [Cache.open(round_cache)]
    total = sum(shard.rows for shard in original.shards("train"))
    for batch_size in (3, 4):
        counts = on_policy_rows(total, batch_size, fraction)
        assert sum(counts) == int(total * fraction)
        assert abs(sum(counts) / total - fraction) < 1 / total
        batches = list(mixed_batches(original, rounds, batch_size, fraction, seed=5))
        assert [b.input_ids.shape[0] for b in batches] == [batch.input_ids.shape[0] for batch in stream_batches(original, "train", batch_size, 5)]
    assert on_policy_rows(1000, 8, 0.25) == [2] * 125


def test_fraction_0_and_1_equal_the_batches_of_one_cache_alone(tiny_cache, round_cache):
    original, other = Cache.open(tiny_cache), Cache.open(round_cache)
    for seed in (0, 7):
        alone = list(stream_batches(original, "train", 4, seed))
        mixed = list(mixed_batches(original, [other], 4, 0.0, seed))
        assert len(alone) == len(mixed) and all(same(a, b) for a, b in zip(alone, mixed, strict=True))
    assert not all(same(a, b) for a, b in zip(stream_batches(original, "train", 4, 3), stream_batches(other, "train", 4, 3), strict=True))
    alone = list(stream_batches(other, "train", 4, 3))
    mixed = list(mixed_batches(original, [other], 4, 1.0, 3))  # 16 original rows per epoch: the round's first 16 (it holds 18)
    assert len(mixed) == 4 and all(same(a, b) for a, b in zip(alone[:4], mixed, strict=True))


def test_same_seed_same_batches_and_skip_gives_the_tail(tiny_cache, round_cache):
    original, rounds = Cache.open(tiny_cache), [Cache.open(round_cache), Cache.open(round_cache)]
    first = list(mixed_batches(original, rounds, 3, 0.5, seed=2))
    again = list(mixed_batches(original, rounds, 3, 0.5, seed=2))
    assert all(same(a, b) for a, b in zip(first, again, strict=True))
    assert not all(same(a, b) for a, b in zip(first, mixed_batches(original, rounds, 3, 0.5, seed=4), strict=False))
    for skip in (1, 2, len(first)):
        tail = list(mixed_batches(original, rounds, 3, 0.5, seed=2, skip=skip))
        assert len(tail) == len(first) - skip and all(same(a, b) for a, b in zip(first[skip:], tail, strict=True))


def test_a_round_cache_with_another_tokenizer_is_refused_in_one_line(tmp_path, tiny_cache, prepared):
    other_teacher = make_llama(tmp_path / "other-teacher", make_tokenizer(vocab_size=300))
    foreign = tmp_path / "foreign"
    run_teacher(prepared, resolve_teacher(str(other_teacher), other_teacher), foreign, tiny_settings())
    original = Cache.open(tiny_cache)
    tokenizer = AutoTokenizer.from_pretrained(original.tokenizer_dir)
    with pytest.raises(PipelineError) as error:
        check_round_caches(original, [Cache.open(foreign)], tokenizer, original.tokenizer_dir, StudentSettings())
    assert "\n" not in str(error.value) and str(error.value).startswith("tokenizer mismatch")


def test_a_fraction_outside_0_1_is_refused(tiny_cache):
    with pytest.raises(PipelineError, match=r"on_policy.fraction is 1.5: it must lie in \[0, 1\]"):
        on_policy_rows(10, 4, 1.5)
