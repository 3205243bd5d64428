"""No command trains on, scores or summarises a corrupt cache: shards are checked by sha256 as they stream,
ids against the vocabulary, the shipped tokenizer by a hash of all of it, and `kd evaluate`'s teacher by its
weights; `kd finalize` re-approves nothing. Each fault is reproduced as a user would meet it."""

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import PROMPTS, error_line, make_llama, make_tokenizer
from typer.testing import CliRunner

from pipeline.cache import MANIFEST_FILE, manifest_checksum
from pipeline.cache.codec import decode
from pipeline.cache.schema import encoding_of
from pipeline.cache.verify import verify_cache
from pipeline.cli import app
from pipeline.hashing import sha256_file

runner = CliRunner()
STUDENT = ["--epochs", "1", "--batch-size", "4"]


@pytest.fixture
def params(tiny_student_params) -> Path:
    return tiny_student_params


@pytest.fixture
def cache(cache_copy) -> Path:
    return cache_copy


def manifest(cache: Path) -> dict:
    return json.loads((cache / MANIFEST_FILE).read_text())


def flip_a_byte_that_still_decodes(shard: Path, block: dict) -> None:
    """Flip one bit of a shard so that it still reads as Parquet and decodes, to other values: what only a checksum sees."""
    original = shard.read_bytes()
    reference = decode(pq.read_table(pa.BufferReader(original)), block)
    for position in range(len(original) // 3, len(original)):
        data = bytearray(original)
        data[position] ^= 0x01
        try:
            rows = decode(pq.read_table(pa.BufferReader(bytes(data))), block)
        except Exception:  # noqa: BLE001  # this flip breaks the file: try the next byte
            continue
        if any((getattr(rows, f) != getattr(reference, f)).any() for f in ("input_ids", "entry_ids", "entry_logprobs", "token_logprobs")):
            shard.write_bytes(bytes(data))
            return
    raise AssertionError("no single-bit flip of this shard decodes to other values")


def reseal(cache: Path, shard: Path) -> None:
    """Record a rewritten shard's size and checksum in the manifest, as a careful forger (or a buggy producer) would."""
    data = manifest(cache)
    for split in data["splits"].values():
        for entry in split["shards"]:
            if cache / entry["file"] == shard:
                split["bytes"] += shard.stat().st_size - entry["bytes"]
                entry.update(bytes=shard.stat().st_size, sha256=sha256_file(shard))
    data["manifest_sha256"] = manifest_checksum(data)
    (cache / MANIFEST_FILE).write_text(json.dumps(data))


def test_a_flipped_byte_that_still_decodes_stops_student_evaluate_and_inspect(tmp_path, cache, params, tiny_teacher):
    shard = cache / "train" / "shard-00001.parquet"
    flip_a_byte_that_still_decodes(shard, encoding_of(manifest(cache)))
    changed = f"error: shard {shard} changed after the teacher wrote it (its sha256 is not the manifest's): nothing was read from it; run `kd verify {cache}`"
    out = tmp_path / "student"
    assert error_line(["student", "--cache", cache, "--out", out, "--params", params, *STUDENT]) == changed
    assert not out.exists()
    assert error_line(["inspect", cache]) == changed
    assert error_line(["evaluate", "--cache", cache, "--teacher", tiny_teacher, "--student", f"t={tiny_teacher}", "--split", "train"]) == changed
    validation = cache / "validation" / "shard-00000.parquet"
    flip_a_byte_that_still_decodes(validation, encoding_of(manifest(cache)))
    assert error_line(["evaluate", "--cache", cache, "--teacher", tiny_teacher, "--student", f"t={tiny_teacher}"]).startswith(f"error: shard {validation} changed after the teacher wrote it")


def test_a_damaged_page_stops_the_run_before_any_of_its_rows_is_used(tmp_path, cache, params):
    shard = cache / "train" / "shard-00002.parquet"
    data = bytearray(shard.read_bytes())
    data[16:80] = bytes(64)  # zeros over the first column's first page; the footer stays whole, so the shard still opens
    shard.write_bytes(bytes(data))
    assert pq.ParquetFile(shard).metadata.num_rows == manifest(cache)["splits"]["train"]["shards"][2]["rows"]
    out, log = tmp_path / "student", tmp_path / "loss.csv"
    assert error_line(["student", "--cache", cache, "--out", out, "--params", params, *STUDENT, "--loss-log", log]).startswith(f"error: shard {shard} changed after the teacher wrote it")
    assert not out.exists() and not log.exists()


def test_an_id_outside_the_vocabulary_is_one_line(tmp_path, cache, params):
    """A shard whose checksum was resealed over an id past the vocabulary (a forger, or a buggy producer) crashed training with a traceback."""
    shard = cache / "train" / "shard-00000.parquet"
    table = pq.read_table(shard)
    rows = table.to_pylist()
    hi = bytearray(rows[1]["id_gap_hi"])
    hi[0] = 0xFF  # the first listed id of the row's first position becomes >= 65280
    rows[1]["id_gap_hi"] = bytes(hi)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard, compression="zstd")
    reseal(cache, shard)
    first_id = decode(pq.read_table(shard), encoding_of(manifest(cache))).entry_ids
    bad = int(first_id[first_id >= 320][0])
    out = tmp_path / "student"
    message = error_line(["student", "--cache", cache, "--out", out, "--params", params, *STUDENT])
    assert message == f"error: {cache}, train split: listed id {bad} of row '{rows[1]['id']}' is outside the vocabulary (0..319); the cache is damaged: run `kd verify {cache}`"
    assert not out.exists()


def test_finalize_does_not_approve_a_shard_that_changed(cache):
    shard = cache / "train" / "shard-00001.parquet"
    flip_a_byte_that_still_decodes(shard, encoding_of(manifest(cache)))
    before = (cache / MANIFEST_FILE).read_bytes()
    assert error_line(["finalize", cache]) == (
        f"error: cannot finalize {cache}: train/shard-00001.parquet changed after manifest.json listed it (its sha256 differs); "
        "delete it and rerun the teacher with the same --out to regenerate it, or pass --rehash to accept the shards as they are now"
    )
    assert (cache / MANIFEST_FILE).read_bytes() == before
    data = manifest(cache)
    data.pop("manifest_sha256")  # the case `kd verify` sends to finalize: a manifest from before manifest checksums
    (cache / MANIFEST_FILE).write_text(json.dumps(data))
    assert error_line(["finalize", cache]).startswith(f"error: cannot finalize {cache}: train/shard-00001.parquet changed after manifest.json listed it")
    result = runner.invoke(app, ["finalize", str(cache), "--rehash"])  # deliberate: the shards as they are now
    assert result.exit_code == 0, result.output
    assert verify_cache(cache) == []


def drop_merges(tokenizer_dir: Path, count: int = 40) -> None:
    path = tokenizer_dir / "tokenizer.json"
    data = json.loads(path.read_text())
    data["model"]["merges"] = data["model"]["merges"][:-count]  # the vocabulary stays: only how text splits changes
    path.write_text(json.dumps(data))


def test_an_edited_tokenizer_is_refused_by_verify_and_student(tmp_path, cache, params):
    drop_merges(cache / "tokenizer")
    assert verify_cache(cache) == ["tokenizer/: it has the cache's vocabulary, but its merges, normaliser, pre-tokeniser, post-processor or special tokens differ from those the cache was made with"]
    record = manifest(cache)["tokenizer"]
    out = tmp_path / "student"
    assert error_line(["student", "--cache", cache, "--out", out, "--params", params, *STUDENT]) == (
        f"error: tokenizer mismatch: the cache was made with tokenizer {record['sha256'][:12]} ({record['tokenizer_size']} tokens), but the one shipped in {cache / 'tokenizer'} is "
        "the same vocabulary with other merges, normaliser, pre-tokeniser, post-processor or special tokens: it was changed after the teacher wrote it; restore it, or give the teacher's tokenizer with --tokenizer"
    )
    assert not out.exists()


def test_another_tokenizer_of_the_same_size_is_refused_by_verify(cache):
    shutil.rmtree(cache / "tokenizer")
    lowered = make_tokenizer(corpus=[json.loads(line)["prompt"].upper() for line in PROMPTS.read_text().splitlines()])
    lowered.save_pretrained(cache / "tokenizer")
    assert len(lowered) == 320
    record = manifest(cache)["tokenizer"]
    problems = verify_cache(cache)
    assert len(problems) == 1 and problems[0].startswith("tokenizer/: its vocabulary is ") and problems[0].endswith(f"(320 tokens), the cache was made with {record['sha256'][:12]} (320 tokens)")


def test_a_student_folder_with_an_edited_tokenizer_is_refused_by_evaluate(tmp_path, tiny_cache, tiny_teacher):
    student = tmp_path / "student"
    shutil.copytree(tiny_teacher, student)
    drop_merges(student)
    assert error_line(["evaluate", "--cache", tiny_cache, "--teacher", tiny_teacher, "--student", f"s={student}"]) == (
        f"error: the tokenizer in {student} has the cache's vocabulary but other merges, normaliser, pre-tokeniser, post-processor or special tokens: "
        "the student would read other ids than it learned from; give it the tokenizer the cache was made with"
    )


def test_a_cache_with_only_the_vocabulary_hash_is_read_and_says_what_is_not_checked(tmp_path, cache, params):
    data = manifest(cache)
    data["tokenizer"].pop("definition_sha256")  # as caches written before whole-tokenizer hashes
    data["manifest_sha256"] = manifest_checksum(data)
    (cache / MANIFEST_FILE).write_text(json.dumps(data))
    drop_merges(cache / "tokenizer")  # not covered by the old hash: read as before
    result = runner.invoke(app, ["verify", str(cache)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == (
        "note: the cache records a hash of its tokenizer's vocabulary and special tokens only (it predates whole-tokenizer hashes, or its tokenizer has no `tokenizers` definition), so merges and normalisation are not checked"
    )
    result = runner.invoke(app, ["student", "--cache", str(cache), "--out", str(tmp_path / "student"), "--params", str(params), *STUDENT])
    assert result.exit_code == 0, result.output
    assert f"warning: {cache}: the cache records a hash of its tokenizer's vocabulary and special tokens only" in result.output


def test_evaluate_refuses_a_teacher_that_did_not_make_the_cache(tmp_path, tiny_cache, tiny_teacher):
    other = make_llama(tmp_path / "other-teacher", make_tokenizer(), seed=1)
    ours = manifest(tiny_cache)["teacher"]["weights_sha256"]
    args = ["evaluate", "--cache", tiny_cache, "--teacher", other, "--student", f"t={tiny_teacher}", "--speed-sequences", "2"]
    message = error_line(args)
    assert message.startswith(f"error: --teacher {other} is not the teacher that made {tiny_cache} (weights sha256 ")
    assert message.endswith(f"the cache's {ours[:12]}); give that teacher, or pass --any-teacher to compare with this model anyway")
    result = runner.invoke(app, [str(a) for a in args] + ["--any-teacher"])
    assert result.exit_code == 0, result.output


def test_evaluate_checks_every_student_folder_before_loading_any_model(tmp_path, tiny_cache, tiny_teacher, monkeypatch):
    def no_model_may_load(path):
        raise AssertionError(f"a model was loaded ({path}) before the folders were checked")

    monkeypatch.setattr("pipeline.lm.metrics.load_causal_lm", no_model_may_load)
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "readme.txt").write_text("x")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_teacher, broken)
    (broken / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    small = make_llama(tmp_path / "small", make_tokenizer(vocab_size=300))
    base = ["evaluate", "--cache", tiny_cache, "--teacher", tiny_teacher, "--student"]
    assert error_line([*base, f"n={not_a_model}"]) == f"error: student 'n' at {not_a_model} is not a model folder (no config.json)"
    assert error_line([*base, f"b={broken}"]).startswith(f"error: student 'b' at {broken}: config.json cannot be read (")
    (small / "tokenizer.json").unlink()  # a student with the cache's tokenizer files but too few embedding rows
    for name in ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (small / name).unlink(missing_ok=True)
    assert error_line([*base, f"s={small}"]) == f"error: student 's' at {small} has 300 embedding rows, but {tiny_cache} holds token ids up to 319: it is not a student of this cache"
