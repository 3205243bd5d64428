"""Evaluation-only prompt sets: `kd prepare --validation-fraction 1` -> `kd teacher` -> an evaluation cache
that `kd evaluate` scores students on, `kd verify` and `kd inspect` accept, and training refuses."""

import json
import math
from pathlib import Path

import polars as pl
import pytest
import torch
from conftest import cache_rows, error_line
from transformers import AutoTokenizer
from typer.testing import CliRunner

from pipeline.cache import read_manifest
from pipeline.cache.reader import Cache
from pipeline.cli import app
from pipeline.data import DataSettings, prepare_prompts, read_prompts, split_prompts
from pipeline.errors import PipelineError
from pipeline.lm.metrics import student_agreement
from pipeline.lm.student import build_student
from pipeline.lm.student_settings import StudentSettings
from pipeline.lm.trainer import train_student
from pipeline.models import load_causal_lm, save_checkpoint

runner = CliRunner()
EVAL_ONLY = "has no train split: it is an evaluation-only cache (made from a prompt set with validation_fraction 1)"


def kd(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def eval_prepared(tmp_path_factory, small_prompts) -> Path:
    out = tmp_path_factory.mktemp("eval") / "prepared"
    assert kd("prepare", small_prompts, "--out", out, "--validation-fraction", "1.0").strip() == "train: 0 prompts, validation: 20 prompts"
    return out


@pytest.fixture(scope="module")
def eval_cache(tmp_path_factory, eval_prepared, tiny_teacher) -> Path:
    folder = tmp_path_factory.mktemp("eval")
    params = folder / "params.yaml"  # several shards; every listed id kept (the tiny teacher is peaky)
    params.write_text("teacher:\n  shard_rows: 8\n  batch_size: 4\n  cache: {drop_zero_level: false}\n")
    kd("teacher", "--model", tiny_teacher, "--prepared", eval_prepared, "--out", folder / "cache", "--params", params, "--k", "6", "--max-new-tokens", "6")
    return folder / "cache"


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, tiny_teacher) -> Path:
    """A random (untrained) student: far from the teacher, so the metrics are not trivially 0 or 1."""
    out = tmp_path_factory.mktemp("eval") / "student"
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher)
    model = build_student({"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128}, len(tokenizer), seed=3)
    save_checkpoint(model.eval(), tokenizer, out)
    return out


def test_fraction_one_puts_every_prompt_in_validation(tmp_path, small_prompts):
    prompts = read_prompts(small_prompts)
    splits = split_prompts(prompts, 1.0, seed=0)
    assert splits["train"].height == 0 and splits["train"].schema == prompts.schema
    assert splits["validation"]["id"].to_list() == sorted(prompts["id"].to_list())
    written = prepare_prompts(DataSettings(prompts=small_prompts, validation_fraction=1), tmp_path)
    assert written["validation"].height == 20
    train = pl.read_parquet(tmp_path / "train.parquet")  # written, empty, with the columns of the prompts
    assert train.height == 0 and train.columns == ["id", "prompt"]


@pytest.mark.parametrize(
    "fraction, message",
    [
        ("0", "error: data.validation_fraction: input should be greater than 0, got 0.0"),
        ("-0.5", "error: data.validation_fraction: input should be greater than 0, got -0.5"),
        ("1.5", "error: data.validation_fraction: input should be less than or equal to 1, got 1.5"),
    ],
)
def test_other_invalid_fractions_are_one_line(tmp_path, small_prompts, fraction, message):
    assert error_line(["prepare", small_prompts, "--out", tmp_path / "prepared", "--validation-fraction", fraction]) == message
    assert not (tmp_path / "prepared").exists()


def test_a_split_emptied_by_chance_points_to_fraction_one(tmp_path):
    path = tmp_path / "two.jsonl"
    path.write_text('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "y"}\n')
    with pytest.raises(PipelineError, match=r"the train split is empty: 2 prompts with validation_fraction=0.9999 \(use validation_fraction 1"):
        split_prompts(read_prompts(path), 0.9999, seed=0)


def test_eval_cache_holds_every_prompt_in_validation(eval_cache, eval_prepared):
    manifest = read_manifest(eval_cache)
    assert manifest["source"]["rows"] == {"train": 0, "validation": 20}
    assert list(manifest["splits"]) == ["validation"] and manifest["splits"]["validation"]["rows"] == 20
    assert [entry["file"] for entry in manifest["splits"]["validation"]["shards"]] == [f"validation/shard-{i:05d}.parquet" for i in range(3)]
    assert not (eval_cache / "train").exists()
    assert sorted(row["id"] for row in cache_rows(eval_cache)) == pl.read_parquet(eval_prepared / "validation.parquet")["id"].sort().to_list()
    assert kd("verify", eval_cache).startswith(f"ok: {eval_cache}: 3 shards, 20 rows")
    summary = json.loads(kd("inspect", eval_cache, "--json"))
    assert summary["rows"] == {"validation": 20} and summary["tokens"] == manifest["splits"]["validation"]["tokens"]


def test_training_on_eval_cache_is_one_line_error(tmp_path, eval_cache):
    out = tmp_path / "student"
    assert error_line(["student", "--cache", eval_cache, "--out", out]) == f"error: {eval_cache} {EVAL_ONLY}, for `kd evaluate`; train on a cache made with validation_fraction below 1"
    assert not out.exists()
    with pytest.raises(PipelineError, match="evaluation-only cache"):
        train_student(eval_cache, StudentSettings(), out)
    assert not out.exists()


def test_other_missing_splits_keep_their_message(tiny_cache):
    with pytest.raises(PipelineError, match=r"has no 'test' split \(it has: train, validation\)$"):
        Cache.open(tiny_cache).shards("test")


def dense_reference(model: torch.nn.Module, cache_dir: Path) -> dict[str, float]:
    """The evaluate metrics computed independently: one unpadded HF forward per cached sequence, KL
    over the full vocabulary in float64 against the teacher's listed ids plus its tail spread as one bucket."""
    sums = {"top1_agreement": 0.0, "kl_to_teacher": 0.0, "ce": 0.0, "teacher_ce": 0.0}
    tokens = 0
    for row in cache_rows(cache_dir):
        ids, start = torch.tensor(row["input_ids"]), row["response_start"]
        with torch.no_grad():
            logits = model(input_ids=ids[None]).logits[0].double()
        logq = torch.log_softmax(logits, -1)[start - 1 : len(ids) - 1]  # row j predicts input_ids[start + j]
        for j, (listed, logp) in enumerate(zip(row["topk_ids"], row["topk_logprobs"])):
            q, p = logq[j], torch.tensor(logp, dtype=torch.float64)
            on_listed = q[torch.tensor(listed)]
            tail_p = max(1.0 - p.exp().sum().item(), 1e-30)
            tail_q = 1.0 - on_listed.exp().sum().item()
            sums["kl_to_teacher"] += (p.exp() * (p - on_listed)).sum().item() + tail_p * (math.log(tail_p) - math.log(tail_q))
            sums["top1_agreement"] += float(q.argmax().item() == listed[int(p.argmax())])
            sums["ce"] -= q[row["input_ids"][start + j]].item()
            sums["teacher_ce"] -= row["token_logprobs"][j]
            tokens += 1
    return {name: value / tokens for name, value in sums.items()} | {"tokens": tokens}


def test_evaluate_scores_students_on_eval_cache(tmp_path, eval_cache, tiny_teacher, student_dir):
    out = tmp_path / "metrics.json"
    table = kd("evaluate", "--cache", eval_cache, "--teacher", tiny_teacher, "--student", f"mine={student_dir}", "--out", out, "--speed-sequences", "2")
    assert "mine" in table
    metrics = json.loads(out.read_text())
    reference = dense_reference(load_causal_lm(student_dir), eval_cache)
    assert metrics["split"] == "validation" and metrics["tokens"] == reference["tokens"] == read_manifest(eval_cache)["splits"]["validation"]["tokens"]
    mine = metrics["models"]["mine"]
    assert reference["kl_to_teacher"] > 1 and reference["ce"] > 1  # a random student, far from the teacher
    assert mine["top1_agreement"] == pytest.approx(reference["top1_agreement"], abs=1e-12)
    assert mine["kl_to_teacher"] == pytest.approx(reference["kl_to_teacher"], rel=1e-4)
    assert mine["ce"] == pytest.approx(reference["ce"], rel=1e-5)
    assert metrics["models"]["teacher"]["ce"] == pytest.approx(reference["teacher_ce"], rel=1e-5)
    direct = student_agreement(load_causal_lm(student_dir), Cache.open(eval_cache), "validation", batch_size=3)
    assert {name: direct[name] for name in ("top1_agreement", "kl_to_teacher", "ce")} == pytest.approx({name: mine[name] for name in ("top1_agreement", "kl_to_teacher", "ce")}, rel=1e-5)


def test_evaluate_split_option(tmp_path, eval_cache, tiny_cache, tiny_teacher, student_dir):
    line = error_line(["evaluate", "--cache", eval_cache, "--teacher", tiny_teacher, "--student", f"mine={student_dir}", "--split", "train"])
    assert line.startswith(f"error: {eval_cache} {EVAL_ONLY}")
    out = tmp_path / "train.json"
    kd("evaluate", "--cache", tiny_cache, "--teacher", tiny_teacher, "--student", f"mine={student_dir}", "--split", "train", "--out", out, "--speed-sequences", "2")
    metrics = json.loads(out.read_text())
    direct = student_agreement(load_causal_lm(student_dir), Cache.open(tiny_cache), "train")
    assert metrics["split"] == "train" and metrics["tokens"] == direct["tokens"] == read_manifest(tiny_cache)["splits"]["train"]["tokens"]
    assert metrics["models"]["mine"]["kl_to_teacher"] == pytest.approx(direct["kl_to_teacher"], rel=1e-5)
