import json
import shutil
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY_CACHE, cache_rows, tiny_settings
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from pipeline.cache import MANIFEST_FILE, PLAN_FILE, TOKENIZER_DIR, read_manifest, ship_tokenizer
from pipeline.cache.schema import encoding_of
from pipeline.cache.summary import summarize_cache
from pipeline.cache.verify import verify_cache
from pipeline.cli import app
from pipeline.errors import PipelineError
from pipeline.hashing import sha256_file, tokenizer_sha256
from pipeline.lm.teacher import run_teacher
from pipeline.teacher_model import resolve_teacher


def assert_matches_forward(rows, model_dir, k, block):
    """The cache against a direct forward pass: exact for float32; for compact, the same ids and
    probabilities within one sqrt step (half a step of rounding, then renormalisation with the tail)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for row in rows:
        ids, start = row["input_ids"], row["response_start"]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)[start - 1 : len(ids) - 1]
        top = logprobs.topk(k, dim=-1)
        actual = logprobs.gather(-1, torch.tensor(ids[start:])[:, None])[:, 0]
        if block.name == "float32":
            assert torch.equal(torch.tensor(row["topk_ids"]), top.indices), row["id"]
            torch.testing.assert_close(torch.tensor(row["topk_logprobs"]), top.values, atol=1e-5, rtol=0)
            torch.testing.assert_close(torch.tensor(row["token_logprobs"]), actual, atol=1e-5, rtol=0)
            continue
        for j, (listed, values) in enumerate(zip(row["topk_ids"], row["topk_logprobs"])):
            assert sorted(listed) == sorted(top.indices[j].tolist()), row["id"]
            assert sorted(values, reverse=True) == values
            error = torch.tensor(values).exp().sqrt() - logprobs[j, listed].exp().sqrt()
            assert error.abs().max() <= block.sqrt_step, row["id"]
        torch.testing.assert_close(torch.tensor(row["token_logprobs"]), actual, atol=block.error_bound["token_logprob"] + 1e-5, rtol=0)


def test_generated_cache_equals_direct_forward(tiny_cache, tiny_teacher):
    rows = cache_rows(tiny_cache)
    assert len(rows) == 20 and all(len(r["token_logprobs"]) >= 1 for r in rows)
    assert_matches_forward(rows, tiny_teacher, 8, encoding_of(read_manifest(tiny_cache)))


def test_float32_cache_equals_direct_forward(float32_cache, tiny_teacher):
    manifest = read_manifest(float32_cache)
    assert manifest["format_version"] == 2 and manifest["encoding"]["name"] == "float32"
    assert_matches_forward(cache_rows(float32_cache), tiny_teacher, 8, encoding_of(manifest))


def test_scoring_given_responses_equals_direct_forward(tmp_path, tiny_teacher):
    from pipeline.data import read_prompts, split_prompts, write_splits

    source = tmp_path / "pairs.csv"
    pl.DataFrame({"prompt": [f"Name a colour number {i}." for i in range(8)], "response": [f"Blue is colour {i}." for i in range(8)]}).write_csv(source)
    write_splits(split_prompts(read_prompts(source), 0.3, 0), tmp_path / "prepared")
    out = tmp_path / "cache"
    run_teacher(tmp_path / "prepared", resolve_teacher(str(tiny_teacher), tiny_teacher), out, tiny_settings())
    rows = cache_rows(out)
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(tiny_teacher)
    for row in rows:
        response = tokenizer.decode(row["input_ids"][row["response_start"] :])
        assert response.startswith("Blue is colour") and response.endswith("<|im_end|>\n")
    assert_matches_forward(rows, tiny_teacher, 8, encoding_of(read_manifest(out)))


def test_manifest_records_provenance_and_checksums(tiny_cache, tiny_teacher):
    manifest = read_manifest(tiny_cache)
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(tiny_teacher)
    assert manifest["format_version"] == 2 and manifest["k"] == 8 and manifest["encoding"]["name"] == "compact"
    assert manifest["tokenizer"]["sha256"] == tokenizer_sha256(tokenizer)
    assert manifest["tokenizer"]["vocab_size"] == 320 and "<|im_start|>" in manifest["tokenizer"]["chat_template"]
    assert manifest["teacher"]["weights_sha256"] == resolve_teacher(str(tiny_teacher), tiny_teacher)["weights_sha256"]
    assert manifest["generation"]["max_new_tokens"] == 12
    rows = cache_rows(tiny_cache)
    assert sum(s["rows"] for s in manifest["splits"].values()) == len(rows)
    assert sum(s["tokens"] for s in manifest["splits"].values()) == sum(len(r["token_logprobs"]) for r in rows)
    for split in manifest["splits"].values():
        for entry in split["shards"]:
            assert sha256_file(tiny_cache / entry["file"]) == entry["sha256"]
            assert pq.ParquetFile(tiny_cache / entry["file"]).metadata.row_group(0).column(0).compression == "ZSTD"


def test_resume_skips_finished_shards_and_gives_identical_cache(tmp_path, tiny_cache, tiny_teacher, prepared):
    out = tmp_path / "cache"
    shutil.copytree(tiny_cache, out)
    (out / MANIFEST_FILE).unlink()
    (out / "train" / "shard-00001.parquet").unlink()  # as if killed during that shard
    finished = (out / "train" / "shard-00000.parquet").stat().st_mtime_ns
    (out / "train" / ".shard-00001.parquet.tmp-999999").write_bytes(b"PAR1 partial")  # left by the killed writer
    run_teacher(prepared, resolve_teacher(str(tiny_teacher), tiny_teacher), out, tiny_settings())
    assert (out / "train" / "shard-00000.parquet").stat().st_mtime_ns == finished
    assert not (out / "train" / ".shard-00001.parquet.tmp-999999").exists()
    assert cache_rows(out) == cache_rows(tiny_cache)
    assert read_manifest(out) == read_manifest(tiny_cache)


def killed_after_last_shard(tiny_cache: Path, out: Path) -> list[Path]:
    """A copy of the cache as a writer killed after its last shard leaves it: no manifest, and
    half-written card, manifest and tokenizer under temporary names."""
    shutil.copytree(tiny_cache, out)
    (out / MANIFEST_FILE).unlink()
    shutil.rmtree(out / TOKENIZER_DIR)
    leftovers = [out / ".README.md.tmp-999999", out / f".{MANIFEST_FILE}.tmp-999999", out / f".{TOKENIZER_DIR}.tmp-999999"]
    leftovers[0].write_text("# half a card")
    leftovers[1].write_text("{")
    leftovers[2].mkdir()
    (leftovers[2] / "tokenizer.json").write_text("{")
    return leftovers


def test_resume_after_the_last_shard_removes_half_written_card_and_tokenizer(tmp_path, tiny_cache, tiny_teacher, prepared):
    out = tmp_path / "cache"
    leftovers = killed_after_last_shard(tiny_cache, out)
    assert run_teacher(prepared, resolve_teacher(str(tiny_teacher), tiny_teacher), out, tiny_settings()).document == read_manifest(tiny_cache)
    assert [p for p in leftovers if p.exists()] == []
    assert (out / TOKENIZER_DIR / "tokenizer.json").exists()
    assert verify_cache(out) == []


def test_kd_finalize_removes_what_dead_writers_left(tmp_path, tiny_cache):
    out = tmp_path / "cache"
    leftovers = killed_after_last_shard(tiny_cache, out)
    shutil.copytree(tiny_cache / TOKENIZER_DIR, out / TOKENIZER_DIR)
    result = CliRunner().invoke(app, ["finalize", str(out)])
    assert result.exit_code == 0, result.output
    assert [p for p in leftovers if p.exists()] == []
    assert read_manifest(out) == read_manifest(tiny_cache)


def test_two_workers_then_finalize_equal_one_worker(tmp_path, tiny_cache, tiny_teacher, prepared):
    out = tmp_path / "cache"
    teacher = resolve_teacher(str(tiny_teacher), tiny_teacher)
    assert run_teacher(prepared, teacher, out, tiny_settings(), worker_index=0, num_workers=2) is None
    assert not (out / MANIFEST_FILE).exists()
    assert run_teacher(prepared, teacher, out, tiny_settings(), worker_index=1, num_workers=2).document == read_manifest(tiny_cache)
    assert cache_rows(out) == cache_rows(tiny_cache)


def test_a_worker_that_ships_the_tokenizer_second_keeps_the_first_copy(tmp_path):
    """Two workers starting together both find no tokenizer folder and both save one; the rename of the
    second onto the first's (non-empty) folder must not fail the run or leave its temporary behind."""

    def save_while_a_sibling_wins(folder: Path) -> None:
        folder.mkdir()
        (folder / "tokenizer.json").write_text("second")
        (tmp_path / TOKENIZER_DIR).mkdir()
        (tmp_path / TOKENIZER_DIR / "tokenizer.json").write_text("first")

    ship_tokenizer(tmp_path, save_while_a_sibling_wins)
    assert (tmp_path / TOKENIZER_DIR / "tokenizer.json").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == [TOKENIZER_DIR]


def test_kd_finalize_writes_the_manifest_workers_would(tmp_path, tiny_cache):
    out = tmp_path / "cache"
    shutil.copytree(tiny_cache, out)
    (out / MANIFEST_FILE).unlink()
    result = CliRunner().invoke(app, ["finalize", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("cache complete: ")
    assert read_manifest(out) == read_manifest(tiny_cache)


def test_other_settings_in_same_directory_are_refused(tmp_path, tiny_teacher, prepared):
    out = tmp_path / "cache"
    teacher = resolve_teacher(str(tiny_teacher), tiny_teacher)
    run_teacher(prepared, teacher, out, tiny_settings(shard_rows=100))
    with pytest.raises(PipelineError, match="other settings.*k"):
        run_teacher(prepared, teacher, out, tiny_settings(shard_rows=100, k=4))
    assert json.loads((out / PLAN_FILE).read_text())["k"] == 8


def test_k_larger_than_vocabulary_is_refused(tmp_path, tiny_teacher, prepared):
    with pytest.raises(PipelineError, match="k=999 must be between 1 and the teacher's vocabulary size 320"):
        run_teacher(prepared, resolve_teacher(str(tiny_teacher), tiny_teacher), tmp_path / "cache", tiny_settings(k=999))
    assert not (tmp_path / "cache").exists()


def test_inspect_summary_matches_the_rows(tiny_cache):
    summary = summarize_cache(tiny_cache)
    rows = cache_rows(tiny_cache)
    masses = sorted(sum(torch.tensor(p).exp().sum().item() for p in [lp]) for r in rows for lp in r["topk_logprobs"])
    assert summary["tokens"] == len(masses)
    assert summary["bytes_per_token"] == pytest.approx(summary["bytes"] / len(masses))
    median = masses[len(masses) // 2]
    assert summary["retained_mass"]["p50"] == pytest.approx(median, abs=2e-3)
    assert summary["retained_mass"]["p1"] <= summary["retained_mass"]["p50"] <= summary["retained_mass"]["p99"]


def test_dvc_teacher_stage_resumes_from_its_work_directory(tmp_path, monkeypatch, tiny_cache, tiny_teacher, prepared):
    """DVC deletes data/cache before rerunning the stage; the shards of a killed run live on in WORK."""
    import yaml

    from pipeline.atomic import write_json
    from stages import teacher as stage

    settings = {"k": 8, "batch_size": 4, "shard_rows": 5, "generation": {"max_new_tokens": 12, "temperature": 1.0, "top_p": 1.0, "seed": 0}, "cache": TINY_CACHE}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"teacher": settings}))
    (tmp_path / "models").mkdir()
    write_json(tmp_path / "models" / "teacher.json", resolve_teacher(str(tiny_teacher), tiny_teacher))
    shutil.copytree(prepared, tmp_path / "data" / "prepared")
    work = tmp_path / stage.WORK
    shutil.copytree(tiny_cache, work)
    (work / MANIFEST_FILE).unlink()
    (work / "train" / "shard-00002.parquet").unlink()
    finished = (work / "train" / "shard-00000.parquet").stat().st_mtime_ns
    monkeypatch.chdir(tmp_path)

    stage.main()
    assert not work.exists()
    assert (tmp_path / stage.CACHE / "train" / "shard-00000.parquet").stat().st_mtime_ns == finished
    assert cache_rows(tmp_path / stage.CACHE) == cache_rows(tiny_cache)

    work.mkdir()
    write_json(work / PLAN_FILE, {**json.loads((tiny_cache / PLAN_FILE).read_text()), "k": 4})  # an unfinished run with other settings
    stage.main()
    assert not work.exists() and read_manifest(tmp_path / stage.CACHE) == read_manifest(tiny_cache)


def test_the_background_writer_keeps_order_bounds_what_waits_and_raises_a_failed_write():
    import threading
    import time

    from pipeline.cache.writer import BackgroundWriter
    from pipeline.errors import PipelineError

    done, waiting, gate = [], [], threading.Event()

    def write(i):
        def run():
            if i == 0:
                gate.wait(5)
            done.append(i)
            return i

        return run

    with BackgroundWriter(depth=1) as writer:
        writer.submit(write(0))
        submitted = threading.Thread(target=lambda: (writer.submit(write(1)), writer.submit(write(2)), waiting.append("past")))
        submitted.start()
        time.sleep(0.2)
        assert waiting == []  # write 0 holds the one slot: the third submit waits instead of piling shards up in memory
        gate.set()
        submitted.join(5)
    assert done == [0, 1, 2]
    assert writer.results == [0, 1, 2]  # what each write returned (a shard's entry), in submit order

    def fail():
        raise PipelineError("disk full while writing x; free space and rerun to resume")

    writer = BackgroundWriter()
    writer.submit(fail)
    with pytest.raises(PipelineError, match="^disk full while writing x"):
        writer.submit(write(3))
    writer.close()
