import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import error_line
from typer.testing import CliRunner

from pipeline.cache import MANIFEST_FILE, manifest_checksum
from pipeline.cache.codec import CacheEncoding
from pipeline.cache.convert import convert_cache
from pipeline.cache.rows import TeacherRow, to_shard_table
from pipeline.cache.schema import encoding_of
from pipeline.cache.topk import value_problems
from pipeline.cache.verify import verify_cache
from pipeline.cli import app
from pipeline.hashing import sha256_file

runner = CliRunner()


@pytest.fixture
def cache(tmp_path, tiny_cache):
    out = tmp_path / "cache"
    shutil.copytree(tiny_cache, out)
    return out


def verify_errors(path) -> list[str]:
    """`kd verify PATH`, expected to fail: its lines, each one problem."""
    result = runner.invoke(app, ["verify", str(path)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), result.output
    return [line.removeprefix("error: ") for line in lines]


def edit_manifest(cache, change):
    manifest = json.loads((cache / MANIFEST_FILE).read_text())
    change(manifest)
    (cache / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_intact_cache_verifies(tiny_cache):
    result = runner.invoke(app, ["verify", str(tiny_cache)])
    assert result.exit_code == 0, result.output
    splits = json.loads((tiny_cache / MANIFEST_FILE).read_text())["splits"].values()
    shards, tokens = sum(len(s["shards"]) for s in splits), sum(s["tokens"] for s in splits)
    assert result.output.strip() == f"ok: {tiny_cache}: {shards} shards, 20 rows, {tokens} tokens and the shipped tokenizer match the manifest"


def test_flipped_byte(cache):
    shard = cache / "train" / "shard-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    assert "train/shard-00001.parquet: sha256 differs from the manifest (the file changed after it was written)" in verify_errors(cache)


def test_truncated_shard(cache):
    shard = cache / "train" / "shard-00002.parquet"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:-100])
    errors = verify_errors(cache)
    assert f"train/shard-00002.parquet: {size - 100} bytes, the manifest says {size} (truncated or rewritten)" in errors
    assert any(e.startswith("train/shard-00002.parquet: cannot be read as Parquet") for e in errors)


def test_removed_shard(cache):
    (cache / "train" / "shard-00000.parquet").unlink()
    assert verify_errors(cache) == ["train/shard-00000.parquet: missing"]


def test_manifest_edited_by_hand(cache):
    rows = json.loads((cache / MANIFEST_FILE).read_text())["splits"]["train"]["rows"]
    edit_manifest(cache, lambda m: m["splits"]["train"].update(rows=rows + 1))
    assert verify_errors(cache) == [
        f"{cache / MANIFEST_FILE} was changed after the teacher wrote it (manifest_sha256 does not match)",
        f"manifest.json: split 'train' says {rows + 1} rows, its shards add up to {rows}",
        f"manifest.json: split 'train' has {rows + 1} rows, the prepared data had {rows}",
    ]


def test_manifest_edit_that_leaves_counts_consistent(cache):
    edit_manifest(cache, lambda m: m["teacher"].update(name="someone else's teacher"))
    assert verify_errors(cache) == [f"{cache / MANIFEST_FILE} was changed after the teacher wrote it (manifest_sha256 does not match)"]


def test_manifest_dropping_a_shard(cache):
    edit_manifest(cache, lambda m: m["splits"]["train"]["shards"].pop(1))
    assert "manifest.json does not list planned shard train/shard-00001.parquet" in verify_errors(cache)


def test_manifest_missing_a_field(cache):
    edit_manifest(cache, lambda m: m["splits"]["train"].pop("tokens"))
    assert verify_errors(cache)[-1] == f"{cache / MANIFEST_FILE} is malformed: splits.train.tokens: field required"


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda m: m["splits"]["validation"]["shards"][0].update(rows="12"), 'splits.validation.shards.0.rows: input should be a valid integer, got "12"'),
        (lambda m: m.update(shard_rows=True), "shard_rows: input should be a valid integer, got true"),
        (lambda m: m["tokenizer"].pop("vocab_size"), "tokenizer.vocab_size: field required"),
        (lambda m: m.update(k=None), "k: a language-model cache needs an integer k"),
    ],
)
def test_a_hand_edited_field_is_named_by_every_reader(cache, edit, problem):
    """The manifest is parsed once, with strict types: verify, inspect and the student all name the field (a JSON "12" is not 12)."""
    edit_manifest(cache, lambda m: (edit(m), m.update(manifest_sha256=manifest_checksum(m))))  # an edit the checksum does not catch
    assert verify_errors(cache) == [f"{cache / MANIFEST_FILE} is malformed: {problem}"]
    for command in (["inspect", cache], ["student", "--cache", cache, "--out", cache.parent / "student"]):
        assert error_line(command) == f"error: {cache / MANIFEST_FILE} is malformed: {problem}", command


def output(topk_ids, topk_logprobs, token_logprobs):
    n = len(token_logprobs)
    return TeacherRow.top_k(
        input_ids=np.array([1, 2] + [3] * n, dtype=np.int32),
        response_start=2,
        topk_ids=np.array(topk_ids, dtype=np.int32),
        topk_logprobs=np.array(topk_logprobs, dtype=np.float32),
        token_logprobs=np.array(token_logprobs, dtype=np.float32),
    )


def test_value_sanity_names_the_first_bad_row():
    rows = {
        "good": output([[5, 6]], [[-0.5, -1.5]], [-0.5]),
        "nan": output([[5, 6], [5, 6]], [[-0.5, -1.5], [np.nan, -2.0]], [-0.5, -1.0]),
        "positive": output([[5, 6]], [[0.25, -1.5]], [-0.5]),
        "unsorted": output([[5, 6]], [[-1.5, -0.5]], [-0.5]),
        "mass": output([[5, 6]], [[-0.1, -0.2]], [-0.1]),
        "vocab": output([[5, 999]], [[-0.5, -1.5]], [-0.5]),
    }
    problems = value_problems(to_shard_table(list(rows), list(rows.values())), k=2, vocab_size=10)
    assert problems == [
        "a log-prob is not finite, first in row 'nan' (1 row(s))",
        "a log-prob is above 0, first in row 'positive' (1 row(s))",
        "top-k log-probs are not sorted, most likely first, first in row 'unsorted' (1 row(s))",
        "top-k probabilities add up to more than 1, first in row 'positive' (2 row(s))",
        "a top-k id is outside the vocabulary (0..9), first in row 'vocab' (1 row(s))",
    ]
    assert value_problems(to_shard_table(["good"], [rows["good"]]), k=2, vocab_size=10) == []


def reseal(cache, shard):
    """Update the manifest for a rewritten shard, as a careful forger would: sizes and checksums match again."""
    manifest = json.loads((cache / MANIFEST_FILE).read_text())
    entry = manifest["splits"]["train"]["shards"][0]
    manifest["splits"]["train"]["bytes"] += shard.stat().st_size - entry["bytes"]
    entry.update(bytes=shard.stat().st_size, sha256=sha256_file(shard))
    manifest["manifest_sha256"] = manifest_checksum(manifest)
    (cache / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_verify_reports_bad_values_by_shard(tmp_path, tiny_cache):
    """A consistent forgery (sizes and checksums updated) whose only fault is a positive log-prob (float32 encoding)."""
    cache = tmp_path / "float32"
    convert_cache(tiny_cache, cache, CacheEncoding(encoding="float32"))
    shard = cache / "train" / "shard-00000.parquet"
    rows = pq.read_table(shard).to_pylist()
    rows[0]["topk_logprobs"][0][0] = 0.5
    columns = ("input_ids", "response_start", "topk_ids", "topk_logprobs", "token_logprobs")
    outputs = [TeacherRow.top_k(**{c: r[c] if c == "response_start" else np.array(r[c]) for c in columns}) for r in rows]
    assert all(len(p) == 8 for r in rows for p in r["topk_ids"])
    pq.write_table(to_shard_table([r["id"] for r in rows], outputs), shard)
    assert "train/shard-00000.parquet: sha256 differs from the manifest (the file changed after it was written)" in verify_cache(cache)
    reseal(cache, shard)
    assert verify_cache(cache) == [
        f"train/shard-00000.parquet: a log-prob is above 0, first in row '{rows[0]['id']}' (1 row(s))",
        f"train/shard-00000.parquet: top-k probabilities add up to more than 1, first in row '{rows[0]['id']}' (1 row(s))",
    ]


def test_manifest_without_a_checksum_is_sent_to_finalize(cache):
    edit_manifest(cache, lambda m: m.pop("manifest_sha256"))
    message = f"{cache / MANIFEST_FILE} has no manifest_sha256 (written before kd-pipeline checked manifests); `kd finalize {cache}` rewrites it"
    assert verify_errors(cache) == [message]
    assert runner.invoke(app, ["finalize", str(cache)]).exit_code == 0
    assert verify_cache(cache) == []


def forge_compact(cache, change):
    """Rewrite train shard 0 of a compact cache with one byte stream changed, resealed in the manifest."""
    shard = cache / "train" / "shard-00000.parquet"
    table = pq.read_table(shard)
    rows = table.to_pylist()
    change(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard, compression="zstd")
    reseal(cache, shard)
    return rows[0]["id"]


def test_verify_decodes_compact_shards(cache):
    block = encoding_of(json.loads((cache / MANIFEST_FILE).read_text()))
    assert block.name == "compact" and verify_cache(cache) == []

    def drop_a_level(rows):
        rows[0]["prob_levels"] = rows[0]["prob_levels"][:-1]

    forge_compact(cache, drop_a_level)
    lengths = len(pq.read_table(cache / "train" / "shard-00000.parquet").column("prob_levels")[0].as_py())
    assert verify_cache(cache) == [f"train/shard-00000.parquet: cannot be decoded: column prob_levels has a row of {lengths} bytes where its counts call for {lengths + 1}"]


def test_verify_finds_an_id_outside_the_vocabulary_in_a_compact_shard(cache):
    def huge_first_gap(rows):
        hi = bytearray(rows[1]["id_gap_hi"])
        hi[0] = 0xFF  # the first id of the row's first position becomes >= 65280
        rows[1]["id_gap_hi"] = bytes(hi)

    forge_compact(cache, huge_first_gap)
    row_id = pq.read_table(cache / "train" / "shard-00000.parquet").column("id")[1].as_py()
    assert verify_cache(cache) == [f"train/shard-00000.parquet: a listed id is outside the vocabulary (0..319), first in row '{row_id}' (1 row(s))"]


def test_repeated_row_ids_are_found_by_hash_then_confirmed_by_id(cache, monkeypatch):
    """Row-id uniqueness keeps 8-byte hashes, not the ids; a repeat is named where it occurs, as a direct set over all ids says."""
    shard = cache / "train" / "shard-00001.parquet"
    first_id = pq.read_table(cache / "train" / "shard-00000.parquet").column("id")[0].as_py()
    table = pq.read_table(shard)
    rows = table.to_pylist()
    rows[2]["id"] = first_id
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard, compression="zstd")
    manifest = json.loads((cache / MANIFEST_FILE).read_text())
    entry = manifest["splits"]["train"]["shards"][1]
    manifest["splits"]["train"]["bytes"] += shard.stat().st_size - entry["bytes"]
    entry.update(bytes=shard.stat().st_size, sha256=sha256_file(shard))
    manifest["manifest_sha256"] = manifest_checksum(manifest)
    (cache / MANIFEST_FILE).write_text(json.dumps(manifest))
    seen, repeated = set(), []  # the reference: every id of the cache, in manifest order
    for split in manifest["splits"].values():
        for e in split["shards"]:
            for row_id in pq.read_table(cache / e["file"]).column("id").to_pylist():
                if row_id in seen:
                    repeated.append((e["file"], row_id))
                seen.add(row_id)
    assert repeated == [("train/shard-00001.parquet", first_id)]
    assert verify_cache(cache) == [f"train/shard-00001.parquet: 1 id(s) appear more than once in the cache, first '{first_id}'"]
    monkeypatch.setattr("pipeline.cache.verify._id_hashes", lambda ids: np.zeros(len(ids), dtype=np.uint64))  # every row collides
    assert verify_cache(cache) == [f"train/shard-00001.parquet: 1 id(s) appear more than once in the cache, first '{first_id}'"]


def test_every_row_colliding_by_hash_is_not_a_repeat(cache, monkeypatch):
    monkeypatch.setattr("pipeline.cache.verify._id_hashes", lambda ids: np.zeros(len(ids), dtype=np.uint64))
    assert verify_cache(cache) == []
