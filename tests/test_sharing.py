"""A cache is a published dataset: common readers open it, and README's DVC commands share it."""

import re
import sys

import duckdb
import polars as pl
import pyarrow.dataset as ds
import pytest
import yaml
from conftest import REPO, cache_rows, run

from pipeline.cache import read_manifest


def test_shards_open_in_polars_pandas_duckdb_and_datasets(tiny_cache):
    from datasets import load_dataset

    reference = ds.dataset(tiny_cache / "train", format="parquet").to_table().to_pylist()
    columns = ["id", "input_ids", "response_start", "entries", "id_gap_lo", "id_gap_hi", "prob_levels", "tail_levels", "token_logprob_levels"]
    frame = pl.read_parquet(tiny_cache / "train" / "*.parquet")
    assert frame.columns == columns and frame.to_dicts() == reference
    assert frame.schema["input_ids"] == pl.List(pl.UInt16)
    assert ds.dataset(tiny_cache / "train").to_table().to_pandas()["id"].tolist() == [r["id"] for r in reference]
    positions = duckdb.sql(f"SELECT id, len(input_ids) - response_start AS n, octet_length(entries) AS m FROM '{tiny_cache}/train/*.parquet'").fetchall()
    assert sorted(positions) == sorted((r["id"], len(r["input_ids"]) - r["response_start"], len(r["input_ids"]) - r["response_start"]) for r in reference)
    data = load_dataset("parquet", data_files={"train": str(tiny_cache / "train" / "*.parquet")}, cache_dir=str(tiny_cache.parent / "hf"))
    assert data["train"].column_names == columns
    assert data["train"][0]["prob_levels"] == reference[0]["prob_levels"]


def test_float32_conversion_gives_plain_list_columns(tmp_path, tiny_cache):
    """For tools that do not decode the compact streams: `kd convert --encoding float32` (docs/cache-format.md)."""
    from pipeline.cache.codec import CacheEncoding
    from pipeline.cache.convert import convert_cache

    out = tmp_path / "plain"
    convert_cache(tiny_cache, out, CacheEncoding(encoding="float32"))
    frame = pl.read_parquet(out / "train" / "*.parquet")
    assert frame.columns == ["id", "input_ids", "response_start", "topk_ids", "topk_logprobs", "token_logprobs"]
    assert frame.to_dicts() == [{key: row[key] for key in frame.columns} for row in cache_rows(tiny_cache) if row["id"] in set(frame["id"])]


def test_dataset_card_and_tokenizer_ship_with_the_cache(tiny_cache):
    manifest = read_manifest(tiny_cache)
    card = (tiny_cache / "README.md").read_text()
    for fact in (manifest["teacher"]["weights_sha256"], manifest["tokenizer"]["sha256"], "causal_lm_topk", "load_dataset", '"max_new_tokens": 12'):
        assert fact in card
    assert (tiny_cache / "tokenizer" / "tokenizer.json").exists()


def readme_block(name: str) -> str:
    match = re.search(rf"<!-- sharing:{name} -->\s*```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert match, f"README has no sharing:{name} block"
    return match.group(1)


def repro(cwd, *args):
    return set(re.findall(r"Running stage '([^']+)'", run([sys.executable, "-m", "dvc", "repro", *args], cwd)))


@pytest.mark.slow
def test_readme_sharing_commands_publish_import_update_and_pull(tmp_path, project):
    producer, remote, consumer = project, tmp_path / "remote", tmp_path / "consumer"
    run(["git", "add", "-A"], producer)
    run(["git", "commit", "-q", "-m", "pipeline"], producer)
    assert repro(producer, "teacher") == {"teacher_model", "prepare", "teacher"}
    env = {"REMOTE": str(remote), "PRODUCER": str(producer)}
    run(["bash", "-euo", "pipefail", "-c", readme_block("producer")], producer, env)

    consumer.mkdir()
    run(["git", "init", "-q"], consumer)
    run([sys.executable, "-m", "dvc", "init", "-q"], consumer)
    output = run(["bash", "-euo", "pipefail", "-c", readme_block("consumer")], consumer, env)
    assert "top-k mass" in output
    for shard in (producer / "data" / "cache").rglob("*.parquet"):
        assert (consumer / "teacher-cache" / shard.relative_to(producer / "data" / "cache")).read_bytes() == shard.read_bytes()
    assert (consumer / "my-student" / "model.safetensors").exists()

    params = yaml.safe_load((producer / "params.yaml").read_text())
    params["teacher"]["k"] = 4
    (producer / "params.yaml").write_text(yaml.safe_dump(params))
    assert repro(producer, "teacher") == {"teacher"}
    run(["git", "commit", "-q", "-am", "k=4"], producer)
    run([sys.executable, "-m", "dvc", "push"], producer)
    run(["git", "tag", "logits-v2"], producer)
    run([sys.executable, "-m", "dvc", "update", "--rev", "logits-v2", "teacher-cache.dvc"], consumer)
    assert read_manifest(consumer / "teacher-cache")["k"] == 4

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(producer), str(clone)], tmp_path)
    assert repro(clone, "--pull", "teacher") == set()
    assert read_manifest(clone / "data" / "cache") == read_manifest(producer / "data" / "cache")


def test_student_refuses_a_cache_of_another_task(tmp_path, tiny_cache):
    import shutil

    from pipeline.atomic import write_json
    from pipeline.cache import MANIFEST_CHECKSUM, MANIFEST_FILE, manifest_checksum
    from pipeline.errors import PipelineError
    from pipeline.lm.student_settings import StudentSettings
    from pipeline.lm.trainer import train_student

    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    manifest = read_manifest(cache)
    labels = {"labels": {"no": " no", "yes": " yes"}, "template": "{text}", "system": None, "assistant_prefix": "", "chat_template": False, "scoring": "sequence"}
    edited = {**manifest, "task": "classify_soft_labels", "classify": labels | {"label_names": ["no", "yes"], "verbalizer_ids": [[1], [2]]}}
    edited[MANIFEST_CHECKSUM] = manifest_checksum(edited)
    write_json(cache / MANIFEST_FILE, edited)
    with pytest.raises(PipelineError, match="the cache holds task 'classify_soft_labels'"):
        train_student(cache, StudentSettings(model={}, epochs=1), tmp_path / "student")
