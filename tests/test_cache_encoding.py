"""Cache format version 2: the compact encoding's round trip, readers of both versions, convert, inspect, sampled storage."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY_CACHE, cache_rows
from typer.testing import CliRunner

from pipeline.cache import MANIFEST_FILE, PLAN_FILE, Cache, read_manifest, write_shard
from pipeline.cache.codec import CacheEncoding, decode, encode
from pipeline.cache.convert import convert_cache
from pipeline.cache.decoding_error import position_kl
from pipeline.cache.encoding import (
    byte_width,
    dequantize_neglog,
    dequantize_sqrt,
    gaps_to_ids,
    ids_to_gaps,
    pack_planes,
    quantize_neglog,
    quantize_sqrt,
    unpack_planes,
)
from pipeline.cache.plan import planned_shards
from pipeline.cache.rows import TeacherRow, to_shard_table
from pipeline.cache.schema import Sampled, TopK, encoding_of
from pipeline.cache.topk import TOPK
from pipeline.cache.verify import verify_cache
from pipeline.cache.writer import finalize_cache, open_cache_for_writing, zstd_level
from pipeline.cli import app
from pipeline.errors import PipelineError
from pipeline.lm.streaming import stream_batches, to_topk_batch

runner = CliRunner()
rng = np.random.default_rng(0)


def test_quantisers_stay_within_their_bounds():
    probs = np.concatenate([rng.dirichlet(np.full(50, 0.1)), [0.0, 1.0, 1e-9]])
    for step in (0.004, 0.012, 0.05):
        decoded = dequantize_sqrt(quantize_sqrt(probs, step), step)
        assert np.abs(decoded - np.sqrt(probs)).max() <= step / 2 + 1e-12
        assert (decoded > 0).all()  # level 0 decodes to step / 4: a kept entry never has probability 0
    logprobs = -rng.exponential(5, 1000)
    for step in (0.05, 1 / 128):
        assert np.abs(dequantize_neglog(quantize_neglog(logprobs, step), step) - logprobs).max() <= step / 2 + 1e-12


def test_gaps_and_byte_planes_round_trip_exactly():
    lengths = np.array([3, 0, 5, 1])
    ids = np.concatenate([np.sort(rng.choice(70_000, n, replace=False)) for n in lengths])
    gaps = ids_to_gaps(ids, lengths)
    assert (gaps >= 0).all() and np.array_equal(gaps_to_ids(gaps, lengths), ids)
    with pytest.raises(PipelineError, match="repeat within a position"):
        ids_to_gaps(np.array([4, 4]), np.array([2]))
    rows = np.array([2, 0, 7])
    for width in (1, 2, 3, 4):
        values = rng.integers(0, 1 << (8 * width), rows.sum())
        low, low_bytes = pack_planes(values, width, rows, range(1))
        high, high_bytes = pack_planes(values, width, rows, range(1, width))
        assert np.array_equal(low_bytes, rows) and np.array_equal(high_bytes, rows * (width - 1))
        assert np.array_equal(unpack_planes(low, rows, range(1)) | unpack_planes(high, rows, range(1, width)), values)
    assert byte_width(255) == 1 and byte_width(256) == 2 and byte_width(49_151) == 2 and byte_width(151_935) == 3


def teacher_outputs(vocab, k, positions=(4, 1, 6), seed=1):
    g = np.random.default_rng(seed)
    outputs = []
    for n in positions:
        logits = g.normal(size=(n, vocab)) * 4
        logprobs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        top = np.argsort(-logprobs, axis=1)[:, :k]
        outputs.append(
            TeacherRow.top_k(
                input_ids=g.integers(0, vocab, n + 3).astype(np.int32),
                response_start=3,
                topk_ids=top.astype(np.int32),
                topk_logprobs=np.take_along_axis(logprobs, top, 1).astype(np.float32),
                token_logprobs=g.uniform(-9, 0, n).astype(np.float32),
            )
        )
    return outputs


@pytest.mark.parametrize("vocab", [300, 70_000])
@pytest.mark.parametrize("drop", [False, True])
def test_compact_round_trip_within_the_declared_bound(vocab, drop):
    k = 12
    outputs = teacher_outputs(vocab, k)
    exact = decode(to_shard_table(["a", "b", "c"], outputs), encoding_of({}))
    block = CacheEncoding(drop_zero_level=drop).block(vocab, TopK(k))
    table = to_shard_table(["a", "b", "c"], outputs, block)
    assert str(table.schema.field("input_ids").type.value_type) == ("uint16" if vocab <= 65536 else "uint32")
    rows = decode(table, block)
    assert np.array_equal(rows.input_ids, exact.input_ids) and rows.row_ids == ["a", "b", "c"]
    bound = block.error_bound
    assert np.abs(rows.token_logprobs - exact.token_logprobs).max() <= bound["token_logprob"] + 1e-6
    start = 0
    for position, n in enumerate(rows.entries):
        listed = dict(zip(rows.entry_ids[start : start + n], np.exp(rows.entry_logprobs[start : start + n])))
        original = dict(zip(exact.entry_ids[position * k : (position + 1) * k], np.exp(exact.entry_logprobs[position * k : (position + 1) * k].astype(np.float64))))
        start += n
        assert set(listed) <= set(original)
        kept_top = max(original, key=original.get)
        assert kept_top in listed  # a position's most likely id is never dropped
        for token, p in original.items():
            if token in listed:  # ids exact; probabilities within one sqrt step after renormalising with the tail
                assert abs(np.sqrt(listed[token]) - np.sqrt(p)) <= block.sqrt_step
            else:
                assert drop and np.sqrt(p) < block.sqrt_step / 2
        assert list(listed.values()) == sorted(listed.values(), reverse=True)
    kl = position_kl(exact, rows, vocab)
    assert kl.max() < 5e-3 and kl.mean() < 2e-3


def test_float32_encoding_is_exact():
    outputs = teacher_outputs(300, 5)
    block = CacheEncoding(encoding="float32").block(300, TopK(5))
    rows = decode(to_shard_table(["a", "b", "c"], outputs, block), block)
    assert np.array_equal(rows.entry_ids, np.concatenate([o.ids for o in outputs]))
    assert np.array_equal(rows.entry_logprobs, np.concatenate([o.logprobs for o in outputs]))


def sampled_outputs(vocab=300, draws=32, seed=2):
    g = np.random.default_rng(seed)
    outputs = []
    for n in (3, 2):
        positions = []
        for _ in range(n):
            probs = g.dirichlet(np.full(vocab, 0.05))
            drawn, counts = np.unique(g.choice(vocab, draws, p=probs), return_counts=True)
            positions.append((drawn, counts, np.log(probs[drawn])))
        outputs.append(TeacherRow.from_positions(g.integers(0, vocab, n + 2), 2, positions, g.uniform(-5, 0, n)))
    return outputs


def test_sampled_storage_round_trip():
    outputs = sampled_outputs()
    block = CacheEncoding().block(300, Sampled(32))
    assert block.storage == "sampled" and block.draws == 32 and not block.drop_zero_level
    table = to_shard_table(["a", "b"], outputs, block)
    assert "counts" in table.column_names
    rows = decode(table, block)
    flat = [(o.ids, o.counts, o.logprobs, o.entries) for o in outputs]
    assert np.array_equal(rows.entries, np.concatenate([f[3] for f in flat]))
    start = 0
    expected_start = 0
    ids, counts, logprobs = (np.concatenate([f[i] for f in flat]) for i in range(3))
    for n in rows.entries:
        got = {int(i): (int(c), float(lp)) for i, c, lp in zip(rows.entry_ids[start : start + n], rows.entry_counts[start : start + n], rows.entry_logprobs[start : start + n])}
        want = {int(i): (int(c), float(lp)) for i, c, lp in zip(ids[expected_start : expected_start + n], counts[expected_start : expected_start + n], logprobs[expected_start : expected_start + n])}
        assert got.keys() == want.keys() and all(got[i][0] == want[i][0] for i in got)  # ids and counts exact
        assert sum(c for c, _ in got.values()) == 32
        for i in got:
            assert abs(np.exp(got[i][1] / 2) - np.exp(want[i][1] / 2)) <= block.sqrt_step
        start, expected_start = start + n, expected_start + n
    batch = to_topk_batch(table.to_batches()[0], block)
    assert batch.counts is not None and batch.counts.shape == batch.listed_ids.shape
    assert torch.equal(batch.counts.sum(-1), torch.full((len(rows.entries),), 32.0))
    assert torch.isneginf(batch.listed_logprobs[batch.counts == 0]).all()
    with pytest.raises(PipelineError, match="sampled caches need the compact encoding"):
        CacheEncoding(encoding="float32").block(300, Sampled(32))


def write_sampled_cache(tiny_cache, out):
    """A whole sampled cache through the writer entry points the teacher uses (plan, shards, manifest)."""
    manifest = read_manifest(tiny_cache)
    plan = json.loads((tiny_cache / PLAN_FILE).read_text())
    block = CacheEncoding().block(manifest["tokenizer"]["vocab_size"], Sampled(32))
    plan["encoding"] = block.document()
    open_cache_for_writing(out, plan)
    shutil.copytree(tiny_cache / "tokenizer", out / "tokenizer")
    for shard in planned_shards(plan):
        outputs = [o for seed in range(shard.stop - shard.start) for o in sampled_outputs(320, 32, seed)[:1]]
        write_shard(to_shard_table([f"{shard.file}-{i}" for i in range(len(outputs))], outputs, block), out, shard, TOPK, zstd_level(block))
    return finalize_cache(out, planned_shards(plan))


def test_sampled_cache_streams_inspects_and_verifies(tmp_path, tiny_cache):
    out = tmp_path / "sampled"
    write_sampled_cache(tiny_cache, out)
    assert verify_cache(out) == []
    batch = next(stream_batches(Cache.open(out), "train", 4))
    assert batch.counts is not None and (batch.counts.sum(-1) == 32).all()
    result = runner.invoke(app, ["inspect", str(out)])
    assert result.exit_code == 0, result.output
    assert "compact (sampled, 32 draws per position;" in result.output and "unique ids  per position: mean " in result.output


def test_v1_and_v2_readers_give_the_same_batches_up_to_the_bound(tmp_path, float32_cache, tiny_cache):
    """The compact cache the teacher wrote is the float32 one converted, byte for byte; their batches agree within the bound."""
    converted = tmp_path / "compact"
    convert_cache(float32_cache, converted, CacheEncoding(**TINY_CACHE))
    manifest, reference = read_manifest(converted), read_manifest(tiny_cache)
    for split in reference["splits"]:
        for ours, theirs in zip(manifest["splits"][split]["shards"], reference["splits"][split]["shards"]):
            assert ours["sha256"] == theirs["sha256"]
    step = manifest["encoding"]["sqrt_step"]
    for exact, compact in zip(stream_batches(Cache.open(float32_cache), "validation", 3), stream_batches(Cache.open(converted), "validation", 3)):
        for name in ("input_ids", "attention_mask", "rows", "columns", "targets", "response_start"):
            assert torch.equal(getattr(exact, name), getattr(compact, name)), name
        assert compact.counts is None
        assert (exact.listed_ids.sort(-1).values == compact.listed_ids.sort(-1).values).all()
        order = compact.listed_ids.argsort(-1)
        exact_p = exact.listed_logprobs.gather(-1, exact.listed_ids.argsort(-1)).exp().sqrt()
        assert (exact_p - compact.listed_logprobs.gather(-1, order).exp().sqrt()).abs().max() <= step
        assert (exact.token_logprobs - compact.token_logprobs).abs().max() <= manifest["encoding"]["error_bound"]["token_logprob"] + 1e-6


def test_convert_resumes_and_refuses_another_plan(tmp_path, tiny_cache):
    out = tmp_path / "plain"
    first = convert_cache(tiny_cache, out, CacheEncoding(encoding="float32"))
    assert first.format_version == 2 and first.encoding_block.name == "float32"
    assert first.converted_from["manifest_sha256"] == read_manifest(tiny_cache)["manifest_sha256"]
    assert (out / "tokenizer" / "tokenizer.json").exists() and "encoding `float32`" in (out / "README.md").read_text()
    assert cache_rows(out) == cache_rows(tiny_cache)
    kept = (out / "train" / "shard-00000.parquet").stat().st_mtime_ns
    (out / MANIFEST_FILE).unlink()
    (out / "train" / "shard-00001.parquet").unlink()
    (out / "train" / ".shard-00001.parquet.tmp-999999").write_bytes(b"partial")
    assert convert_cache(tiny_cache, out, CacheEncoding(encoding="float32")) == first
    assert (out / "train" / "shard-00000.parquet").stat().st_mtime_ns == kept
    assert not (out / "train" / ".shard-00001.parquet.tmp-999999").exists()
    with pytest.raises(PipelineError, match=r"holds a cache made with other settings \(encoding differ\)"):
        convert_cache(tiny_cache, out, CacheEncoding(encoding="compact", sqrt_step=0.02))
    back = tmp_path / "back"
    result = runner.invoke(app, ["convert", str(out), str(back), "--sqrt-step", "0.02"])
    assert result.exit_code == 0 and result.output.startswith(f"converted: {first.tokens} tokens in {back}, encoding compact")
    assert verify_cache(back) == [] and read_manifest(back)["encoding"]["sqrt_step"] == 0.02


def test_convert_refuses_its_own_source_and_bad_settings(tmp_path, tiny_cache):
    result = runner.invoke(app, ["convert", str(tiny_cache), str(tiny_cache)])
    assert result.exit_code == 1 and result.output.strip() == f"error: convert writes a new cache: {tiny_cache} is the source itself"
    result = runner.invoke(app, ["convert", str(tiny_cache), str(tmp_path / "x"), "--encoding", "int4"])
    assert result.exit_code == 1 and result.output.strip() == "error: encoding: 'int4' is not one of 'compact' or 'float32'"
    assert not (tmp_path / "x").exists()


def test_inspect_reports_encoding_bytes_and_retained_mass(tiny_cache):
    result = runner.invoke(app, ["inspect", str(tiny_cache)])
    assert result.exit_code == 0, result.output
    lines = dict(line.split(None, 1) for line in result.output.strip().splitlines() if not line.startswith(("listed", "top-k")))
    assert lines["encoding"].startswith("compact (top-k; sqrt(p) step 0.012 (error <= 0.006), log tail step 0.05")
    assert "bytes/token" in lines["size"] and "listed ids  per position: mean 8.00, min 8, max 8" in result.output
    assert "top-k mass  mean " in result.output
    summary = json.loads(runner.invoke(app, ["inspect", str(tiny_cache), "--json"]).output)
    assert summary["encoding"]["name"] == "compact" and 0 < summary["retained_mass"]["min"] <= summary["retained_mass"]["mean"] <= 1


def test_version_1_caches_stay_readable(tmp_path, float32_cache):
    """A cache as version 1 wrote it: no encoding block, format_version 1."""
    from pipeline.atomic import write_json
    from pipeline.cache import manifest_checksum

    old = tmp_path / "v1"
    shutil.copytree(float32_cache, old)
    manifest = read_manifest(old)
    del manifest["encoding"]
    manifest["format_version"] = 1
    manifest["manifest_sha256"] = manifest_checksum(manifest)
    write_json(old / MANIFEST_FILE, manifest)
    assert verify_cache(old) == []
    assert sum(b.num_tokens for b in stream_batches(Cache.open(old), "train", 4)) == manifest["splits"]["train"]["tokens"]
    assert "float32 (exact" in runner.invoke(app, ["inspect", str(old)]).output
    assert cache_rows(old) == cache_rows(float32_cache)
    table = pq.read_table(old / "train" / "shard-00000.parquet")
    assert encode(decode(table, encoding_of(manifest)), encoding_of(manifest)).equals(table)


@pytest.mark.parametrize("requires, readable", [([], True), (["variable-k"], False), ("variable-k", False)])
def test_a_cache_that_requires_an_unknown_feature_is_refused_by_every_reader(tmp_path, float32_cache, requires, readable):
    """`requires` names what a reader must know; a reader that does not know a feature refuses the cache, naming it, instead of misreading it."""
    from pipeline.atomic import write_json
    from pipeline.cache import manifest_checksum

    newer = tmp_path / "newer"
    shutil.copytree(float32_cache, newer)
    manifest = read_manifest(newer)
    manifest["requires"] = requires
    manifest["manifest_sha256"] = manifest_checksum(manifest)
    write_json(newer / MANIFEST_FILE, manifest)
    if readable:
        assert verify_cache(newer) == [] and Cache.open(newer).splits["train"].tokens == manifest["splits"]["train"]["tokens"]
        return
    with pytest.raises(PipelineError, match="the cache requires .*variable-k.*does not know"):
        Cache.open(newer)
    assert verify_cache(newer) and "variable-k" in verify_cache(newer)[0]
    result = runner.invoke(app, ["inspect", str(newer)])
    assert result.exit_code != 0 and "variable-k" in result.output
