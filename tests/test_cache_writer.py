"""The writer records each shard's manifest entry as it writes it, so the process that wrote the shards finalizes without reading them back."""

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import tiny_settings
from typer.testing import CliRunner

import pipeline.cache.writer as writer
from pipeline.cache import MANIFEST_FILE, read_manifest
from pipeline.cache.plan import planned_shards
from pipeline.cache.schema import encoding_of
from pipeline.cache.topk import TOPK
from pipeline.cache.writer import finalize_cache, parquet_options, shard_entry, write_shard, zstd_level
from pipeline.cli import app
from pipeline.errors import PipelineError
from pipeline.lm.teacher import run_teacher
from pipeline.teacher_model import resolve_teacher


@pytest.mark.parametrize("fixture", ["tiny_cache", "float32_cache"])
def test_write_shard_writes_what_pq_write_table_writes_to_a_file_and_records_the_entry_read_back_gives(tmp_path, request, fixture):
    cache = request.getfixturevalue(fixture)
    manifest = read_manifest(cache)
    level = zstd_level(encoding_of(manifest))
    for shard in planned_shards(manifest):
        table = pq.read_table(cache / shard.file)
        entry = write_shard(table, tmp_path / "ours", shard, TOPK, level)
        reference = tmp_path / "reference" / shard.file
        reference.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, reference, **parquet_options(len(table), level))  # the local path before shards were serialised in memory
        assert (tmp_path / "ours" / shard.file).read_bytes() == reference.read_bytes(), shard.file
        assert entry == shard_entry(tmp_path / "ours", shard, TOPK), shard.file
        assert list(entry.document()) == ["file", "rows", "tokens", "longest_sequence", "bytes", "sha256"]  # manifest.json's keys, in its order
    assert files_below(tmp_path / "ours") == files_below(tmp_path / "reference")  # no temporary left behind


def files_below(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def recorded_reads(monkeypatch) -> tuple[list[str], list[str]]:
    """(shards finalize reads back, .parquet files read whole by anyone), recorded from now on."""
    entries, files = [], []
    read_entry, read_bytes = writer.shard_entry, Path.read_bytes

    def counted_entry(cache_dir, shard, task):
        entries.append(shard.file)
        return read_entry(cache_dir, shard, task)

    def counted_bytes(path):
        if path.suffix == ".parquet":
            files.append(f"{path.parent.name}/{path.name}")
        return read_bytes(path)

    monkeypatch.setattr(writer, "shard_entry", counted_entry)
    monkeypatch.setattr(Path, "read_bytes", counted_bytes)
    return entries, files


def test_a_lone_teacher_finalizes_from_its_recorded_entries_the_manifest_reading_every_shard_gives(tmp_path, monkeypatch, tiny_teacher, prepared):
    out = tmp_path / "cache"
    entries, files = recorded_reads(monkeypatch)
    run_teacher(prepared, resolve_teacher(str(tiny_teacher), tiny_teacher), out, tiny_settings())
    assert (entries, files) == ([], [])
    monkeypatch.undo()
    recorded, card = (out / MANIFEST_FILE).read_bytes(), (out / "README.md").read_bytes()
    result = CliRunner().invoke(app, ["finalize", str(out), "--rehash"])  # every shard read and hashed again
    assert result.exit_code == 0, result.output
    assert (out / MANIFEST_FILE).read_bytes() == recorded
    assert (out / "README.md").read_bytes() == card


def test_a_resumed_run_reads_back_only_the_shards_an_earlier_process_wrote(tmp_path, monkeypatch, tiny_cache, tiny_teacher, prepared):
    out = tmp_path / "cache"
    shutil.copytree(tiny_cache, out)
    (out / MANIFEST_FILE).unlink()
    redone = ["train/shard-00001.parquet", "validation/shard-00000.parquet"]  # as if the earlier run was killed before these
    for file in redone:
        (out / file).unlink()
    earlier = sorted(shard.file for shard in planned_shards(read_manifest(tiny_cache)) if shard.file not in redone)
    entries, files = recorded_reads(monkeypatch)
    run_teacher(prepared, resolve_teacher(str(tiny_teacher), tiny_teacher), out, tiny_settings())
    assert sorted(entries) == earlier and sorted(files) == earlier
    assert (out / MANIFEST_FILE).read_bytes() == (tiny_cache / MANIFEST_FILE).read_bytes()


def test_two_workers_read_every_shard_back_as_kd_finalize_does(tmp_path, monkeypatch, tiny_cache, tiny_teacher, prepared):
    out, teacher = tmp_path / "cache", resolve_teacher(str(tiny_teacher), tiny_teacher)
    assert run_teacher(prepared, teacher, out, tiny_settings(), worker_index=0, num_workers=2) is None
    entries, _ = recorded_reads(monkeypatch)
    run_teacher(prepared, teacher, out, tiny_settings(), worker_index=1, num_workers=2)
    assert sorted(entries) == sorted(shard.file for shard in planned_shards(read_manifest(tiny_cache)))
    assert (out / MANIFEST_FILE).read_bytes() == (tiny_cache / MANIFEST_FILE).read_bytes()


def test_a_recorded_entry_that_an_earlier_manifest_listed_with_another_sha256_is_refused(cache_copy):
    manifest = read_manifest(cache_copy)
    shards = planned_shards(manifest)
    listed = {entry["file"]: entry["sha256"] for split in manifest["splits"].values() for entry in split["shards"]}
    written = [shard_entry(cache_copy, shard, TOPK) for shard in shards]
    assert finalize_cache(cache_copy, shards, listed, written).document == manifest
    written[1] = written[1].model_copy(update={"sha256": "0" * 64})
    with pytest.raises(PipelineError, match=f"^cannot finalize {cache_copy}: {shards[1].file} changed after {MANIFEST_FILE} listed it"):
        finalize_cache(cache_copy, shards, listed, written)
