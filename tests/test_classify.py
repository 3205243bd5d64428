"""Text classification by distillation: verbalizer scoring, the soft-label cache, the loss, training, evaluation."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.backends.verbalizer_scoring import normalise, verbalizer_logprobs
from pipeline.classify.data import read_labelled
from pipeline.classify.loss import hinton_loss
from pipeline.classify.prompt import ClassifyPrompt, render_prompt, verbalizer_ids
from pipeline.errors import PipelineError

LABELS = ["negative", "positive"]
REVIEWS = REPO / "data" / "reviews"


def reviews(path: Path, split: str, count: int) -> Path:
    path.write_text("".join(REVIEWS.joinpath(f"{split}.jsonl").read_text().splitlines(keepends=True)[:count]))
    return path


def direct_logprob(model, prompt: list[int], verbalizer: list[int]) -> float:
    """Reference: one unpadded forward of prompt + verbalizer, summing the verbalizer tokens' log-probs."""
    ids = torch.tensor([prompt + verbalizer])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return sum(logprobs[len(prompt) - 1 + t, token].item() for t, token in enumerate(verbalizer))


@pytest.fixture(scope="module")
def teacher(tiny_teacher):
    return AutoModelForCausalLM.from_pretrained(tiny_teacher, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(tiny_teacher)


@pytest.mark.parametrize(
    "labels",
    [
        {"negative": " no", "positive": " yes"},  # single tokens: one forward of the prompt
        {"negative": " the cat sat", "positive": " the dog", "neutral": " what"},  # multi-token, shared prefix, mixed lengths
    ],
)
def test_verbalizer_scores_equal_a_direct_forward(teacher, labels):
    model, tokenizer = teacher
    prompt = ClassifyPrompt(labels=labels, template="Review: {text}", system="Classify.", assistant_prefix="Answer:")
    verbalizers = verbalizer_ids(tokenizer, prompt)
    texts = ["A delight from start to finish.", "Awful.", "Honestly, the plot makes no sense. I hated it.", "Fine."]
    prompts = [render_prompt(tokenizer, prompt, text) for text in texts]
    scored = verbalizer_logprobs(model, tokenizer.pad_token_id, prompts, verbalizers, batch_size=3)
    reference = np.array([[direct_logprob(model, p, v) for v in verbalizers] for p in prompts])
    np.testing.assert_allclose(scored, reference, atol=1e-4)
    normalised, mass = normalise(scored)
    np.testing.assert_allclose(np.exp(normalised).sum(1), 1, atol=1e-9)
    np.testing.assert_allclose(mass, np.exp(reference).sum(1), rtol=1e-4)


def test_first_token_scoring_scores_first_tokens_and_refuses_shared_ones(teacher):
    model, tokenizer = teacher
    prompt = ClassifyPrompt(labels={"a": " the cat", "b": " what is"}, scoring="first_token")
    verbalizers = verbalizer_ids(tokenizer, prompt)
    assert all(len(v) == 1 for v in verbalizers)
    ids = render_prompt(tokenizer, prompt, "Awful.")
    scored = verbalizer_logprobs(model, tokenizer.pad_token_id, [ids], verbalizers)
    np.testing.assert_allclose(scored[0], [direct_logprob(model, ids, v) for v in verbalizers], atol=1e-4)
    shared = ClassifyPrompt(labels={"a": " the cat", "b": " the dog"}, scoring="first_token")
    with pytest.raises(PipelineError, match="share their first verbalizer token"):
        verbalizer_ids(tokenizer, shared)
    assert len(verbalizer_ids(tokenizer, shared.updated(scoring="sequence"))) == 2  # whole sequences tell them apart


@pytest.mark.parametrize(
    "labels, message",
    [
        ({"negative": "", "positive": " yes"}, "empty verbalizer"),
        ({"negative": "   ", "positive": " yes"}, "empty verbalizer"),
        ({"positive": " yes"}, "at least 2 labels"),
        ({"negative": " yes", "positive": " yes"}, "same verbalizer tokens"),
    ],
)
def test_bad_verbalizers_are_refused(teacher, labels, message):
    with pytest.raises(PipelineError, match=message):
        verbalizer_ids(teacher[1], ClassifyPrompt(labels=labels))


def test_unknown_label_in_the_data_is_refused(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text,label\nGreat film.,positive\nDull.,negativ\nFine.,\n")
    with pytest.raises(PipelineError, match=r"label outside the label set \(negative, positive\): 'negativ'"):
        read_labelled(path, LABELS)
    path.write_text("text,label\nGreat film.,positive\nFine.,\n")
    assert read_labelled(path, LABELS)["label"].to_list() == [1, None]  # a missing label is allowed


def test_hinton_loss_equals_a_reference():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 3), torch.log_softmax(torch.randn(6, 3), -1)
    gold = torch.tensor([0, 2, -1, 1, -1, 0])
    alpha, temperature = 0.7, 2.5

    def softmax(row):
        e = [math.exp(v - max(row)) for v in row]
        return [v / sum(e) for v in e]

    kd = ce = 0.0
    for s, t in zip(student.tolist(), teacher.tolist()):
        p, q = softmax([v / temperature for v in t]), softmax([v / temperature for v in s])
        kd += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) / len(student)
    gold_rows = [(s, g) for s, g in zip(student.tolist(), gold.tolist()) if g >= 0]
    for s, g in gold_rows:
        ce -= math.log(softmax(s)[g]) / len(gold_rows)
    terms = hinton_loss(student, teacher, gold, alpha, temperature)
    assert terms["kd"].item() == pytest.approx(kd * temperature**2, rel=1e-5)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(alpha * kd * temperature**2 + (1 - alpha) * ce, rel=1e-5)
    assert hinton_loss(student, teacher, torch.full((6,), -1), 0.5, 1.0)["ce"].item() == 0  # no gold labels: no CE


def test_an_id_in_two_splits_is_refused_before_any_output(tmp_path, tiny_teacher):
    from pipeline.classify.teacher import ClassifyTeacherSettings, run_classify_teacher
    from pipeline.teacher_model import resolve_teacher

    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text('{"text": "A fine film.", "label": "positive"}\n{"text": "Dull.", "label": "negative"}\n')
    test.write_text('{"text": "Dull.", "label": "negative"}\n')
    data = {"train": read_labelled(train, LABELS), "test": read_labelled(test, LABELS)}
    settings = ClassifyTeacherSettings(labels={"negative": " no", "positive": " yes"})
    with pytest.raises(PipelineError, match="is in both the train and the test data"):
        run_classify_teacher(data, resolve_teacher(str(tiny_teacher), tiny_teacher), tmp_path / "cache", settings)
    assert not (tmp_path / "cache").exists()


def test_label_temperature_fit_recovers_the_teachers_overconfidence():
    """Gold labels drawn from softmax(z); a teacher reporting softmax(2.5 z) is over-confident by 2.5x."""
    from pipeline.classify.loss import fit_label_temperature, scaled_label_logprobs

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20_000, 3, generator=g, dtype=torch.float64) * 1.5
    gold = torch.multinomial(logits.softmax(-1), 1, generator=g)[:, 0].numpy()
    reported = torch.log_softmax(2.5 * logits, -1).float().numpy()
    tau = fit_label_temperature(reported, gold)
    assert tau == pytest.approx(2.5, rel=0.05)
    scaled = scaled_label_logprobs(reported, tau)
    assert (scaled.argmax(1) == reported.argmax(1)).all()  # the ranking, so the teacher's accuracy, is kept
    np.testing.assert_allclose(np.exp(scaled), logits.softmax(-1).numpy(), atol=0.03)
    with pytest.raises(PipelineError, match="needs gold labels"):
        fit_label_temperature(reported, np.full(len(gold), -1))


@pytest.fixture(scope="module")
def classify_cache(tmp_path_factory, tiny_teacher) -> Path:
    from pipeline.classify.teacher import ClassifyTeacherSettings, run_classify_teacher
    from pipeline.teacher_model import resolve_teacher

    root = tmp_path_factory.mktemp("classify")
    data = {
        "train": read_labelled(reviews(root / "train.jsonl", "train", 120), LABELS),
        "test": read_labelled(reviews(root / "test.jsonl", "test", 40), LABELS),
        "imdb": read_labelled(REPO / "data" / "real-reviews" / "imdb.jsonl", LABELS, repeated_texts="keep_first").head(30),  # real text: tokens the train texts lack
    }
    settings = ClassifyTeacherSettings(labels={"negative": " no", "positive": " yes"}, batch_size=16, shard_rows=50)
    out = root / "cache"
    assert run_classify_teacher(data, resolve_teacher(str(tiny_teacher), tiny_teacher), out, settings) is not None
    return out


def test_classify_cache_is_complete_verified_and_resumable(classify_cache, tiny_teacher, caplog):
    from pipeline.cache import Cache, read_manifest
    from pipeline.cache.soft_labels import read_soft_labels
    from pipeline.cache.summary import format_summary, summarize_cache
    from pipeline.cache.verify import verify_cache
    from pipeline.classify.teacher import ClassifyTeacherSettings, run_classify_teacher
    from pipeline.teacher_model import resolve_teacher

    caplog.set_level(logging.INFO)

    manifest = read_manifest(classify_cache)
    assert manifest["task"] == "classify_soft_labels" and manifest["classify"]["label_names"] == LABELS
    assert {name: s["rows"] for name, s in manifest["splits"].items()} == {"train": 120, "test": 40, "imdb": 30}
    assert verify_cache(classify_cache) == []
    assert "teacher accuracy" in format_summary(summarize_cache(classify_cache))
    test = read_soft_labels(Cache.open(classify_cache), "test")
    texts = [json.loads(line)["text"] for line in REVIEWS.joinpath("test.jsonl").read_text().splitlines()[:40]]
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher)
    assert test.input_ids == [tokenizer.encode(t, add_special_tokens=False) for t in texts]  # the text alone, for the student
    np.testing.assert_allclose(np.exp(test.label_logprobs).sum(1), 1, atol=1e-5)

    shard = classify_cache / "train" / "shard-00000.parquet"
    written = shard.stat().st_mtime_ns
    settings = ClassifyTeacherSettings(labels={"negative": " no", "positive": " yes"}, batch_size=16, shard_rows=50)
    data = {
        "train": read_labelled(REVIEWS / "train.jsonl", LABELS).head(120),
        "test": read_labelled(REVIEWS / "test.jsonl", LABELS).head(40),
        "imdb": read_labelled(REPO / "data" / "real-reviews" / "imdb.jsonl", LABELS, repeated_texts="keep_first").head(30),
    }
    shard.unlink()
    run_classify_teacher(data, resolve_teacher(str(tiny_teacher), tiny_teacher), classify_cache, settings)
    assert verify_cache(classify_cache) == []  # the missing shard was made again, the others kept
    assert (classify_cache / "train" / "shard-00001.parquet").stat().st_mtime_ns < shard.stat().st_mtime_ns
    assert shard.stat().st_mtime_ns != written
    assert "verbalizer mass mean" in caplog.text


def test_classify_manifest_from_recorded_entries_equals_the_one_reading_every_shard_gives(classify_cache, tmp_path):
    """The classify teacher's lone run finalized from the entries it recorded (soft-label token counts); `kd finalize --rehash` reads them all."""
    import shutil

    from pipeline.cache import MANIFEST_FILE, finalize_from_plan

    copy = tmp_path / "cache"
    shutil.copytree(classify_cache, copy)
    recorded = (copy / MANIFEST_FILE).read_bytes()
    finalize_from_plan(copy, rehash=True)
    assert (copy / MANIFEST_FILE).read_bytes() == recorded


def test_convert_and_top_k_students_refuse_a_classify_cache(classify_cache, tmp_path):
    from pipeline.cache.codec import CacheEncoding
    from pipeline.cache.convert import convert_cache

    with pytest.raises(PipelineError, match="classification cache"):
        convert_cache(classify_cache, tmp_path / "converted", CacheEncoding())
    assert not (tmp_path / "converted").exists()
    from pipeline.lm.student_settings import StudentSettings
    from pipeline.lm.trainer import train_student

    student = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128}
    with pytest.raises(PipelineError, match="holds task 'classify_soft_labels', but a causal LM student needs"):
        train_student(classify_cache, StudentSettings(model=student, epochs=1), tmp_path / "student")
    assert not (tmp_path / "student").exists()


def test_training_lowers_the_kl_to_the_teacher_on_held_out_data(classify_cache):
    from pipeline.cache import Cache
    from pipeline.cache.soft_labels import read_soft_labels
    from pipeline.classify.student import ClassifierConfig
    from pipeline.classify.trainer import ClassifyTrainSettings, build_classifier, kl_to_teacher, train_classifier

    cache = Cache.open(classify_cache)
    train, test = read_soft_labels(cache, "train"), read_soft_labels(cache, "test")
    for arch in ("bilstm", "bag"):
        settings = ClassifyTrainSettings(model=ClassifierConfig(arch=arch, embedding_dim=16, hidden_size=16), epochs=15, batch_size=16, lr=0.01)
        model = build_classifier(settings.model, train, cache, seed=0)
        before = kl_to_teacher(model, test)
        train_classifier(model, train, settings)
        after = kl_to_teacher(model, test)
        assert after < 0.7 * before, (arch, before, after)


def invoke(args: list[str]) -> str:
    """Run `kd ARGS` in this process; fail with its output unless it exits 0."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_classify_path_end_to_end(classify_cache, tiny_teacher, tmp_path):
    from pipeline.classify.student import load_classifier

    for variant in ("soft", "hard"):
        invoke(["classify", "student", "--cache", str(classify_cache), "--out", str(tmp_path / variant), "--arch", "bag", "--targets", variant, "--epochs", "2"])
    out = invoke(
        [
            "classify",
            "evaluate",
            "--cache",
            str(classify_cache),
            "--teacher",
            str(tiny_teacher),
            "--student",
            f"soft={tmp_path / 'soft'}",
            "--student",
            f"hard={tmp_path / 'hard'}",
            "--out",
            str(tmp_path / "m.json"),
            "--chart",
            str(tmp_path / "r.png"),
            "--latency-examples",
            "4",
        ]
    )
    assert "accuracy" in out and (tmp_path / "r.png").stat().st_size > 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    fitted = load_classifier(tmp_path / "soft")[1]["train"]["label_temperature"]
    assert metrics["headline"] == "test" and list(metrics["splits"]) == ["test", "imdb"]  # every split but train, the first one the headline
    for split in metrics["splits"].values():
        assert list(split["models"]) == ["teacher", f"teacher T={fitted:.2f}", "soft", "hard"]  # the teacher as the students saw it, fitted by default
        assert all(0 <= m["ece"] <= 1 and m["ms_per_example"] > 0 for m in split["models"].values())
    assert out.index("\nimdb (") > out.index("\ntest (")  # the headline's table first

    only = json.loads(_evaluate_one_split(classify_cache, tiny_teacher, tmp_path, "imdb").read_text())
    assert list(only["splits"]) == ["imdb"] and only["headline"] == "imdb"
    assert only["splits"]["imdb"]["models"]["soft"]["accuracy"] == metrics["splits"]["imdb"]["models"]["soft"]["accuracy"]
    assert "verbalizer" in invoke(["inspect", str(classify_cache)])
    assert "ok:" in invoke(["verify", str(classify_cache)])


def test_report_refuses_classification_metrics_from_before_named_test_sets(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"split": "validation", "models": {"teacher": {"params": 10}}}))  # the language-model table prints first
    (tmp_path / "classify.json").write_text(json.dumps({"task": "classify", "split": "test", "models": {}}))  # one test split, no named sets
    result = run_kd_failing(["report", "metrics.json", "--classify-metrics", "classify.json"], tmp_path)
    assert result == "error: classify.json is not a classification metrics file written by kd classify evaluate\n"


def _evaluate_one_split(cache: Path, teacher: Path, tmp_path: Path, split: str) -> Path:
    out = tmp_path / f"{split}.json"
    invoke(["classify", "evaluate", "--cache", str(cache), "--teacher", str(teacher), "--student", f"soft={tmp_path / 'soft'}", "--split", split, "--out", str(out), "--latency-examples", "2"])
    return out


def test_vocabulary_coverage_counts_test_tokens_seen_in_train(classify_cache):
    from pipeline.cache import Cache
    from pipeline.cache.soft_labels import read_soft_labels
    from pipeline.classify.evaluate import vocabulary_coverage

    cache = Cache.open(classify_cache)
    train, imdb = read_soft_labels(cache, "train"), read_soft_labels(cache, "imdb")
    seen = set().union(*map(set, train.input_ids))
    unseen = sum(token not in seen for text in imdb.input_ids for token in text)
    total = sum(map(len, imdb.input_ids))
    assert 0 < unseen < total  # real sentences have words the phrase bank lacks
    assert vocabulary_coverage(train, imdb) == pytest.approx(1 - unseen / total)
    assert vocabulary_coverage(train, train) == 1.0


def test_cli_classify_teacher_takes_named_test_sets(tmp_path, tiny_teacher):
    from pipeline.cache import read_manifest

    train, a, b = (tmp_path / f"{name}.jsonl" for name in ("train", "a", "b"))
    train.write_text('{"text": "A fine film.", "label": "positive"}\n{"text": "Dull.", "label": "negative"}\n')
    a.write_text('{"text": "Great.", "label": "positive"}\n')
    b.write_text('{"text": "Boring.", "label": "negative"}\n{"text": "Lovely.", "label": "positive"}\n')
    invoke(["classify", "teacher", "--train", str(train), "--test", f"first={a}", "--test", f"second={b}", "--model", str(tiny_teacher), "--out", str(tmp_path / "c")])
    assert {name: s["rows"] for name, s in read_manifest(tmp_path / "c")["splits"].items()} == {"train": 2, "first": 1, "second": 2}
    result = run_kd_failing(["classify", "teacher", "--train", str(train), "--test", f"x={a}", "--test", f"x={b}", "--model", str(tiny_teacher), "--out", str(tmp_path / "d")], tmp_path)
    assert result.startswith("error: two files are named 'x'") and not (tmp_path / "d").exists()
    result = run_kd_failing(["classify", "teacher", "--train", str(train), "--test", f"train={a}", "--model", str(tiny_teacher), "--out", str(tmp_path / "d")], tmp_path)
    assert "test set name 'train' must be" in result and result.count("\n") == 1 and not (tmp_path / "d").exists()


def test_cli_refuses_unknown_labels_with_one_line(tmp_path, tiny_teacher):
    data = tmp_path / "train.csv"
    data.write_text("text,label\nGreat.,positive\nBad.,terrible\n")
    result = run_kd_failing(["classify", "teacher", "--train", str(data), "--model", str(tiny_teacher), "--out", str(tmp_path / "c")], tmp_path)
    assert result.strip().count("\n") == 0 and result.startswith("error: ") and "'terrible'" in result
    assert not (tmp_path / "c").exists()


def run_kd_failing(args: list[str], cwd: Path) -> str:
    """Run the `kd` script as a user would; it must exit 1; returns its stderr."""
    import subprocess
    import sys

    result = subprocess.run([str(Path(sys.executable).parent / "kd"), *args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 1, result.stdout + result.stderr
    return result.stderr


def test_module_entry_point_runs_with_the_classify_commands(tmp_path):
    """`python -m pipeline.cli` (through pipeline/cli/__main__.py) runs the kd app with the classify sub-app."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "classify", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0 and "evaluate" in result.stdout, result.stderr[-2000:]


def numpy_pca_rows(table: np.ndarray, ids: np.ndarray, dim: int) -> np.ndarray:
    """The reference projection, by SVD: top right-singular vectors, each signed so its largest-magnitude entry is positive."""
    centred = table.astype(np.float64) - table.astype(np.float64).mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:dim].T
    components *= np.sign(components[np.abs(components).argmax(0), np.arange(dim)])
    projected = centred @ components
    return centred[ids] @ components / projected.std(ddof=1)


def test_teacher_embedding_rows_are_the_pca_projection():
    from pipeline.classify.student import teacher_embedding_rows

    table = torch.randn(300, 32, generator=torch.Generator().manual_seed(0)) @ torch.randn(32, 32, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([0, 5, 17, 299])
    got = teacher_embedding_rows(table, ids, 8)
    np.testing.assert_allclose(got.numpy(), numpy_pca_rows(table.numpy(), ids.numpy(), 8), atol=1e-5)
    with pytest.raises(PipelineError, match="embedding_dim 64 is wider than the teacher's embeddings \\(32\\)"):
        teacher_embedding_rows(table, ids, 64)


@pytest.mark.parametrize("vocab", ["train", "full"])
def test_embedding_init_teacher_starts_every_kept_row_from_the_teacher(classify_cache, tiny_teacher, vocab):
    from pipeline.cache import Cache
    from pipeline.cache.soft_labels import read_soft_labels
    from pipeline.classify.student import UNK, ClassifierConfig
    from pipeline.classify.trainer import build_classifier

    cache = Cache.open(classify_cache)
    train = read_soft_labels(cache, "train")
    config = ClassifierConfig(embedding_dim=16, vocab=vocab, embedding_init="teacher")
    model = build_classifier(config, train, cache, seed=0, teacher=tiny_teacher)
    table = AutoModelForCausalLM.from_pretrained(tiny_teacher).get_input_embeddings().weight.detach().numpy()
    expected = numpy_pca_rows(table, model.vocab_ids.numpy(), 16)
    np.testing.assert_allclose(model.embedding.weight[2:].detach().numpy(), expected, atol=1e-5)
    assert not model.embedding.weight[UNK].any() and not model.embedding.weight[0].any()
    with pytest.raises(PipelineError, match="needs the teacher model folder"):
        build_classifier(config, train, cache, seed=0)


def test_a_teacher_initialised_classifier_trains_saves_and_loads(tmp_path, classify_cache, tiny_teacher):
    from pipeline.classify.student import load_classifier
    from pipeline.classify.trainer import ClassifyStudentSettings, train_classifier_from_cache

    settings = ClassifyStudentSettings(models={"bag": {"embedding_dim": 16, "hidden_size": 0, "vocab": "full", "embedding_init": "teacher"}}, epochs=2).variant("bag", "soft")
    steps = train_classifier_from_cache(classify_cache, settings, tmp_path / "bag", teacher=tiny_teacher)
    model, meta = load_classifier(tmp_path / "bag")
    assert meta["config"]["embedding_init"] == "teacher" and model.embedding.num_embeddings == 320 + 2
    assert steps[-1]["loss"] < steps[0]["loss"]


def test_vocab_lowest_ids_adds_the_lowest_teacher_ids_to_the_train_vocabulary(classify_cache):
    from pipeline.cache import Cache
    from pipeline.cache.soft_labels import read_soft_labels
    from pipeline.classify.student import ClassifierConfig
    from pipeline.classify.trainer import build_classifier

    cache = Cache.open(classify_cache)
    train = read_soft_labels(cache, "train")
    seen = {t for text in train.input_ids for t in text}
    model = build_classifier(ClassifierConfig(embedding_dim=8, hidden_size=8, vocab_lowest_ids=100), train, cache, seed=0)
    assert model.vocab_ids.tolist() == sorted(seen | set(range(100)))
    assert model.embedding.num_embeddings == len(seen | set(range(100))) + 2
    with pytest.raises(PipelineError, match="vocab_lowest_ids adds rows to vocab: train"):
        ClassifierConfig(vocab="full", vocab_lowest_ids=100)


def test_frozen_embeddings_stay_as_initialised_while_the_rest_trains(classify_cache, tiny_teacher):
    from pipeline.cache import Cache
    from pipeline.cache.soft_labels import read_soft_labels
    from pipeline.classify.student import ClassifierConfig
    from pipeline.classify.trainer import ClassifyTrainSettings, build_classifier, train_classifier

    cache = Cache.open(classify_cache)
    train = read_soft_labels(cache, "train")
    config = ClassifierConfig(embedding_dim=16, hidden_size=8, vocab="full", embedding_init="teacher", freeze_embeddings=True)
    model = build_classifier(config, train, cache, seed=0, teacher=tiny_teacher)
    embedding, lstm = model.embedding.weight.detach().clone(), model.lstm.weight_ih_l0.detach().clone()
    train_classifier(model, train, ClassifyTrainSettings(model=config, epochs=2, batch_size=16))
    assert torch.equal(model.embedding.weight, embedding)
    assert not torch.equal(model.lstm.weight_ih_l0, lstm)
