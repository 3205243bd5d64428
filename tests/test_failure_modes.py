"""The rows of the failure-modes table (docs/failure-modes.md): each bad input gets its one-line message, exit 1,
and leaves nothing that claims to be a complete output."""

import errno
import json
import shutil
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
from conftest import cache_rows, error_line, tiny_settings
from transformers import AutoTokenizer
from typer.testing import CliRunner

from pipeline import __version__
from pipeline.atomic import TEMP_MARK
from pipeline.backends.transformers_backend import TransformersBackend
from pipeline.cache import MANIFEST_FILE, PLAN_FILE, manifest_checksum, read_manifest
from pipeline.cache.verify import verify_cache
from pipeline.cli import app
from pipeline.data import read_prompts, split_prompts, write_splits
from pipeline.errors import PipelineError, run_main
from pipeline.lm.sequences import encode_prompt, fit, truncate
from pipeline.lm.teacher import run_teacher
from pipeline.teacher_model import resolve_teacher

runner = CliRunner()


def leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if ".tmp-" in p.name]


BAD_PROMPT_FILES = [
    ("missing.jsonl", None, "error: prompt file not found: {path}"),
    ("empty.jsonl", b"", "error: {path} has no rows"),
    ("header-only.csv", b"prompt\n", "error: {path} has no rows"),
    ("no-column.jsonl", b'{"text": "hi"}\n', "error: {path} has no 'prompt' column (columns: text)"),
    ("blank.jsonl", b'{"prompt": "ok"}\n{"prompt": "  \\t "}\n', "error: {path}: 1 row(s) have an empty prompt, first at row 1"),
    ("bad-bytes.jsonl", b'{"prompt": "ok"}\n{"prompt": "a\xff"}\n', "error: {path} is not valid UTF-8: byte 0xff on line 2"),
    ("duplicate.jsonl", b'{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', "error: {path}: duplicate id(s) a (duplicate prompts get the same id)"),
    ("number.jsonl", b'{"prompt": "ok"}\n{"prompt": 42}\n', "error: {path}: line 2: 'prompt' is a number, not text (quote it)"),
    ("list.jsonl", b'{"prompt": ["a", "b"]}\n', "error: {path}: line 1: 'prompt' is a list, not text (quote it)"),
    ("response-number.jsonl", b'{"prompt": "ok", "response": 1.5}\n', "error: {path}: line 1: 'response' is a number, not text (quote it)"),
    ("malformed.jsonl", b'{"prompt": "ok"}\n{"prompt": "b"\n', "error: {path}: line 2 is not valid JSON (Expecting ',' delimiter at column 15)"),
    ("not-an-object.jsonl", b'{"prompt": "ok"}\n["b"]\n', "error: {path}: line 2 is not a JSON object"),
]


@pytest.mark.parametrize("name, content, message", BAD_PROMPT_FILES, ids=[case[0] for case in BAD_PROMPT_FILES])
def test_bad_prompt_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    assert error_line(["prepare", path, "--out", tmp_path / "prepared"]) == message.format(path=path)
    assert not (tmp_path / "prepared").exists()


def test_a_parquet_prompt_column_that_is_not_text(tmp_path):
    path = tmp_path / "prompts.parquet"
    pl.DataFrame({"prompt": [["a", "b"], ["c"]]}).write_parquet(path)
    assert error_line(["prepare", path, "--out", tmp_path / "prepared"]) == f"error: {path}: column 'prompt' holds List(String) values, not text"
    assert not (tmp_path / "prepared").exists()


@pytest.mark.parametrize("suffix, content", [(".jsonl", '{"prompt": "first one"}\n{"prompt": "second"}\n'), (".csv", "prompt\nfirst one\nsecond\n")])
def test_a_utf8_byte_order_mark_is_skipped(tmp_path, suffix, content):
    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + content.encode())
    assert sorted(read_prompts(path)["prompt"].to_list()) == ["first one", "second"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_requested_but_absent(tmp_path, prepared, tiny_teacher):
    out = tmp_path / "cache"
    assert error_line(["teacher", "--model", tiny_teacher, "--prepared", prepared, "--out", out, "--device", "cuda"]) == ("error: device 'cuda' requested but no CUDA GPU is available")
    assert not out.exists()


def test_k_above_the_backend_limit(tmp_path, prepared, tiny_teacher):
    backend = TransformersBackend(tiny_teacher)
    backend.max_k = 4
    with pytest.raises(PipelineError) as error:
        run_teacher(prepared, resolve_teacher(str(tiny_teacher), tiny_teacher), tmp_path / "cache", tiny_settings(k=8), backend=backend)
    assert str(error.value) == "k=8 is above the transformers backend's limit of 4 log-probs per position"
    assert not (tmp_path / "cache").exists()


@pytest.fixture(scope="module")
def long_prepared(tmp_path_factory):
    """Six short prompts and one of about 300 tokens, over the tiny teacher's 256."""
    root = tmp_path_factory.mktemp("long")
    rows = [{"id": f"p{i}", "prompt": f"Name a colour, number {i}."} for i in range(6)]
    rows.append({"id": "long", "prompt": " ".join(f"word{i}" for i in range(150))})
    pl.DataFrame(rows).write_csv(root / "prompts.csv")
    write_splits(split_prompts(read_prompts(root / "prompts.csv"), 0.3, 0), root / "prepared")
    return root / "prepared"


def test_prompt_over_the_length_limit_is_refused(tmp_path, long_prepared, tiny_teacher):
    out = tmp_path / "cache"
    line = error_line(["teacher", "--model", tiny_teacher, "--prepared", long_prepared, "--out", out, "--max-new-tokens", "4"])
    assert line.startswith("error: 1 prompt(s) are longer than the teacher's limit of 252 tokens, first 'long' (")
    assert line.endswith(" tokens); shorten them or set teacher.too_long: truncate")
    assert not out.exists()


def test_prompt_over_the_length_limit_is_truncated_and_counted(tmp_path, long_prepared, tiny_teacher):
    out = tmp_path / "cache"
    args = ["teacher", "--model", tiny_teacher, "--prepared", long_prepared, "--out", out, "--max-new-tokens", "4", "--k", "4", "--too-long", "truncate"]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "teacher: 1 sequence(s) longer than 252 tokens truncated (teacher.too_long: truncate)" in result.output
    assert read_manifest(out)["prompt_length"] == {"limit": 252, "too_long": "truncate", "truncated": 1}
    (row,) = [r for r in cache_rows(out) if r["id"] == "long"]
    assert row["response_start"] <= 252 and row["response_start"] < len(row["input_ids"]) <= 256
    assert verify_cache(out) == []
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher)
    kept = tokenizer.decode(row["input_ids"][: row["response_start"]])
    user = kept.removeprefix("<|im_start|>user\n").removesuffix("<|im_end|>\n<|im_start|>assistant\n")
    assert kept == tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)  # the template is whole
    assert_longest_start(tokenizer, " ".join(f"word{i}" for i in range(150)), user, 252)


def assert_longest_start(tokenizer, prompt: str, user: str, room: int) -> None:
    """`user` is a start of `prompt` (whole tokens) whose rendering fits in `room`, and one more token would not fit."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    kept = next(k for k in range(len(ids) + 1) if tokenizer.decode(ids[:k]) == user)
    assert len(encode_prompt(tokenizer, user, True)) <= room < len(encode_prompt(tokenizer, tokenizer.decode(ids[: kept + 1]), True))


def test_truncation_keeps_the_chat_template_whole(tiny_teacher):
    """teacher.too_long: truncate shortens the user text; the template's markers (the assistant turn) stay, for generation and for scoring."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher)
    prompt, response = "Tell me about a cat who sails the sea and sings. " * 12, "The cat sang every night under the stars."
    for answer, limit in ((None, 40), (response, 40), (response, 60)):
        ids, start = fit(tokenizer, prompt, answer, True, limit)
        assert len(ids) <= limit and start <= (limit if answer is None else limit - 1)
        text = tokenizer.decode(ids[:start])
        assert text.startswith("<|im_start|>user\nTell me about a cat") and text.endswith("<|im_end|>\n<|im_start|>assistant\n")
        user = text.removeprefix("<|im_start|>user\n").removesuffix("<|im_end|>\n<|im_start|>assistant\n")
        assert ids[:start] == encode_prompt(tokenizer, user, True)
        assert_longest_start(tokenizer, prompt, user, limit if answer is None else limit - 1)
        if answer is not None:
            assert tokenizer.decode(ids[start:]) and response.startswith(tokenizer.decode(ids[start:]).removesuffix("<|im_end|>\n"))
    short = "Name a colour."
    assert fit(tokenizer, short, None, True, 40) == (encode_prompt(tokenizer, short, True), len(encode_prompt(tokenizer, short, True)))
    with pytest.raises(PipelineError, match=r"^the chat template alone takes \d+ tokens, more than the 3 a prompt may have"):
        fit(tokenizer, prompt, None, True, 3)


def test_truncation_keeps_the_first_tokens_and_one_response_token():
    prompt, answer = list(range(10)), [100, 101, 102]
    assert truncate((prompt, 10), 6) == (prompt[:6], 6)  # a prompt to answer: cut to the limit
    assert truncate((prompt + answer, 10), 12) == (prompt + answer[:2], 10)  # scoring: the response is cut first
    assert truncate((prompt + answer, 10), 6) == (prompt[:5] + answer[:1], 5)  # ... then the prompt, keeping one answer token
    assert truncate((prompt, 10), 20) == (prompt, 10)


def full_disk_after(shards_written: int):
    """Path.write_bytes that writes `shards_written` shards' temporary files, then leaves a partial one and raises ENOSPC (other files are written)."""
    real, calls = Path.write_bytes, []

    def write_bytes(path, data):
        if f".parquet{TEMP_MARK}" in path.name:
            calls.append(path)
            if len(calls) > shards_written:
                real(path, b"PAR1 partial")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    return write_bytes


def test_disk_full_on_the_first_shard_leaves_no_directory(tmp_path, monkeypatch, prepared, tiny_teacher):
    monkeypatch.setattr(Path, "write_bytes", full_disk_after(0))
    out = tmp_path / "cache"
    params = tmp_path / "params.yaml"
    params.write_text("teacher: {k: 8, batch_size: 4, shard_rows: 5, generation: {max_new_tokens: 12, temperature: 1.0, top_p: 1.0}, cache: {drop_zero_level: false}}\n")
    line = error_line(["teacher", "--model", tiny_teacher, "--prepared", prepared, "--out", out, "--params", params])
    assert line == f"error: disk full while writing {out / 'train' / 'shard-00000.parquet'}; free space and rerun to resume"
    assert not out.exists()


def test_disk_full_mid_run_keeps_finished_shards_and_resumes(tmp_path, monkeypatch, prepared, tiny_teacher, tiny_cache):
    out, teacher = tmp_path / "cache", resolve_teacher(str(tiny_teacher), tiny_teacher)
    monkeypatch.setattr(Path, "write_bytes", full_disk_after(2))
    with pytest.raises(PipelineError, match=r"^disk full while writing .*train/shard-00002\.parquet; free space and rerun to resume$"):
        run_teacher(prepared, teacher, out, tiny_settings())
    assert sorted(p.name for p in (out / "train").iterdir()) == ["shard-00000.parquet", "shard-00001.parquet"]
    assert leftovers(out) == [] and not (out / MANIFEST_FILE).exists()
    monkeypatch.undo()
    assert run_teacher(prepared, teacher, out, tiny_settings()).document == read_manifest(tiny_cache)
    assert cache_rows(out) == cache_rows(tiny_cache)


@pytest.fixture
def broken_cache(tmp_path, tiny_cache):
    out = tmp_path / "cache"
    shutil.copytree(tiny_cache, out)
    return out


def edit_manifest(cache, change):
    manifest = json.loads((cache / MANIFEST_FILE).read_text())
    change(manifest)
    (cache / MANIFEST_FILE).write_text(json.dumps(manifest))


def train_student(cache, tiny_teacher, out):
    return error_line(["student", "--cache", cache, "--tokenizer", tiny_teacher, "--out", out, "--epochs", "1"])


def test_unknown_cache_format_version(tmp_path, broken_cache, tiny_teacher):
    edit_manifest(broken_cache, lambda m: m.update(format_version=4))
    expected = f"error: {broken_cache / MANIFEST_FILE}: cache format version 4 is not supported (this is kd-pipeline {__version__}, reading versions 1, 2, 3)"
    assert train_student(broken_cache, tiny_teacher, tmp_path / "student") == expected
    assert error_line(["verify", broken_cache]) == expected
    assert not (tmp_path / "student").exists()


def test_manifest_edited_by_hand_is_refused_by_the_student(tmp_path, broken_cache, tiny_teacher):
    edit_manifest(broken_cache, lambda m: m.update(k=4))
    assert train_student(broken_cache, tiny_teacher, tmp_path / "student") == (
        f"error: {broken_cache / MANIFEST_FILE} was changed after the teacher wrote it (manifest_sha256 does not match); run `kd verify {broken_cache}`"
    )
    assert not (tmp_path / "student").exists()


def test_deleted_shard_is_named_by_the_student(tmp_path, broken_cache, tiny_teacher):
    shard = broken_cache / "train" / "shard-00001.parquet"
    shard.unlink()
    assert train_student(broken_cache, tiny_teacher, tmp_path / "student") == (f"error: shard {shard} listed in the manifest is missing; rerun the teacher stage with the same --out to regenerate it")
    assert not (tmp_path / "student").exists()


def test_truncated_shard_is_named_by_the_student(tmp_path, broken_cache, tiny_teacher):
    shard = broken_cache / "train" / "shard-00002.parquet"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: size // 2])
    assert train_student(broken_cache, tiny_teacher, tmp_path / "student") == (f"error: shard {shard} is {size // 2} bytes but the manifest says {size} (truncated or rewritten); run `kd verify`")
    assert not (tmp_path / "student").exists()


def test_rerunning_the_teacher_regenerates_a_deleted_shard(broken_cache, tiny_cache, tiny_teacher, prepared):
    (broken_cache / "train" / "shard-00001.parquet").unlink()
    assert run_teacher(prepared, resolve_teacher(str(tiny_teacher), tiny_teacher), broken_cache, tiny_settings()).document == read_manifest(tiny_cache)
    assert verify_cache(broken_cache) == []


def test_finalize_refuses_an_incomplete_cache(broken_cache):
    (broken_cache / MANIFEST_FILE).unlink()
    (broken_cache / "train" / "shard-00001.parquet").unlink()
    assert error_line(["finalize", broken_cache]) == f"error: cannot finalize {broken_cache}: 1 shard(s) missing, first train/shard-00001.parquet"
    assert not (broken_cache / MANIFEST_FILE).exists()
    assert error_line(["finalize", broken_cache.parent / "elsewhere"]).startswith(f"error: nothing to finalize in {broken_cache.parent / 'elsewhere'}: {PLAN_FILE} not found")


def test_dvc_stages_print_one_error_line(capsys):
    def stage():
        raise PipelineError("prompt file not found: data/prompts.jsonl")

    with pytest.raises(SystemExit) as exit_info:
        run_main(stage)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: prompt file not found: data/prompts.jsonl\n"


def test_ray_and_object_storage_without_their_extras_are_one_line_each(tmp_path, tiny_teacher, prepared, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    monkeypatch.setitem(sys.modules, "upath", None)
    teacher = ["teacher", "--model", tiny_teacher, "--prepared", prepared]
    assert error_line([*teacher, "--out", tmp_path / "cache", "--ray"]) == "error: the Ray runner needs Ray: pip install 'kd-pipeline[ray]'"
    assert not (tmp_path / "cache").exists()
    message = "error: s3://bucket/cache: caches on object storage need universal_pathlib and the store's fsspec package: pip install 'kd-pipeline[s3]'"
    assert error_line([*teacher, "--out", "s3://bucket/cache"]) == message
    assert error_line(["verify", "s3://bucket/cache"]) == message


def test_format_version_three_is_for_hybrid_caches_only(tmp_path, broken_cache, tiny_teacher):
    from pipeline.cache.format import MANIFEST_CHECKSUM, manifest_checksum

    def claim_version_3(manifest):
        manifest["format_version"] = 3
        manifest[MANIFEST_CHECKSUM] = manifest_checksum(manifest)

    edit_manifest(broken_cache, claim_version_3)
    expected = f"error: {broken_cache / MANIFEST_FILE}: format version 3 does not go with storage 'topk' (hybrid caches, and only they, are version 3)"
    assert error_line(["verify", broken_cache]) == expected
    assert train_student(broken_cache, tiny_teacher, tmp_path / "student") == expected


def test_a_student_shorter_than_the_cached_sequences_is_refused(tmp_path, tiny_cache):
    longest = max(len(row["input_ids"]) for row in cache_rows(tiny_cache))
    params = tmp_path / "params.yaml"
    params.write_text("student:\n  model: {hidden_size: 64, num_hidden_layers: 1, num_attention_heads: 1, intermediate_size: 64, max_position_embeddings: 16}\n")
    expected = f"error: student.model.max_position_embeddings is 16, but {{cache}} holds a sequence of {longest} tokens: raise it to at least {longest}"
    assert error_line(["student", "--cache", tiny_cache, "--out", tmp_path / "s", "--params", params]) == expected.format(cache=tiny_cache)
    older = tmp_path / "older"  # a cache from before the manifest recorded each shard's longest sequence: read from the shards
    shutil.copytree(tiny_cache, older)
    manifest = json.loads((older / MANIFEST_FILE).read_text())
    for split in manifest["splits"].values():
        for entry in split["shards"]:
            entry.pop("longest_sequence")
    manifest["manifest_sha256"] = manifest_checksum(manifest)
    (older / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert error_line(["student", "--cache", older, "--out", tmp_path / "s", "--params", params]) == expected.format(cache=older)
    assert not (tmp_path / "s").exists()


def test_report_reads_only_the_metrics_kd_evaluate_writes(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"accuracy": 0.9}))
    assert error_line(["report", other]) == f"error: {other} is not a metrics file written by kd evaluate"
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert error_line(["report", broken]).startswith(f"error: {broken} is not JSON (")
    assert error_line(["report", tmp_path / "missing.json"]) == f"error: metrics file not found: {tmp_path / 'missing.json'} (run `dvc repro` first)"


def test_removing_leftover_temporaries_lists_each_folder_once_and_keeps_the_rest(tmp_path):
    from pipeline.atomic import remove_temp_files

    for folder in ("train", "validation"):
        (tmp_path / folder).mkdir()
    names = [f"train/shard-{i:05d}.parquet" for i in range(3)] + ["validation/shard-00000.parquet"]
    left = [tmp_path / f"{Path(n).parent}/.{Path(n).name}.tmp-{pid}" for n in names for pid in (11, 12)]
    others = [tmp_path / "train" / ".shard-00009.parquet.tmp-11", tmp_path / "train" / "shard-00000.parquet", tmp_path / "train" / ".notes"]
    for path in left + others:
        path.write_bytes(b"x")
    (tmp_path / "train" / ".shard-00001.parquet.tmp-13").mkdir()  # a folder a killed writer left
    remove_temp_files(tmp_path, names)
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file() or p.name.endswith("-13")) == sorted(others)
