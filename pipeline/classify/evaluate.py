"""Evaluate classifiers against the teacher on a held-out split with gold labels.

Accuracy, agreement with the teacher, expected calibration error and per-example CPU latency
(batch 1 on one CPU thread, the teacher's scoring forward vs the student's forward, measured side by side).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.atomic import write_json
from pipeline.backends.verbalizer_scoring import verbalizer_logprobs
from pipeline.cache.reader import Cache
from pipeline.cache.soft_labels import SoftLabels, read_soft_labels
from pipeline.classify.charts import plot_reliability
from pipeline.classify.loss import label_kl, scaled_label_logprobs
from pipeline.classify.prompt import ClassifyPrompt, render_prompt
from pipeline.classify.student import TextClassifier, load_classifier, one_thread, pad_batch
from pipeline.classify.trainer import predict_logits
from pipeline.errors import PipelineError
from pipeline.models import count_parameters, load_causal_lm
from pipeline.reporting import ReportKind, model_table
from pipeline.settings import Positive, Settings


class ClassifyEvaluateSettings(Settings):
    """The `classify.evaluate` section."""

    headline: str | None = None  # the test split reported first (README's figure); null: the first test split
    latency_examples: Positive = 32  # texts of the headline split timed one by one, teacher and students
    calibration_bins: Positive = 10


def calibration_bins(probs: np.ndarray, gold: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Equal-width confidence bins over [0, 1]: mean confidence, accuracy and count of each."""
    confidence = probs.max(1)
    correct = (probs.argmax(1) == gold).astype(np.float64)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    return [
        {
            "low": b / bins,
            "high": (b + 1) / bins,
            "count": int((which == b).sum()),
            "confidence": float(confidence[which == b].mean()) if (which == b).any() else None,
            "accuracy": float(correct[which == b].mean()) if (which == b).any() else None,
        }
        for b in range(bins)
    ]


def expected_calibration_error(probs: np.ndarray, gold: np.ndarray, bins: int = 10) -> float:
    """sum over bins of |accuracy - confidence| weighted by the bin's share of examples (Guo et al. 2017)."""
    table = calibration_bins(probs, gold, bins)
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in table if b["count"]) / len(gold))


def prediction_metrics(probs: np.ndarray, data: SoftLabels, bins: int) -> dict[str, Any]:
    gold = data.label >= 0
    teacher = data.label_logprobs.argmax(1)
    return {
        "accuracy": float((probs[gold].argmax(1) == data.label[gold]).mean()),
        "agreement_with_teacher": float((probs.argmax(1) == teacher).mean()),
        "ece": expected_calibration_error(probs[gold], data.label[gold], bins),
        "nll": float(-np.log(np.clip(probs[gold][np.arange(int(gold.sum())), data.label[gold]], 1e-12, 1)).mean()),  # log loss on gold labels
        "kl_to_teacher": float(label_kl(data.label_logprobs, np.log(np.clip(probs, 1e-12, 1))).mean()),
        "reliability": calibration_bins(probs[gold], data.label[gold], bins),
    }


@torch.inference_mode()
def per_example_ms(run: Callable[[int], Any], count: int, repeats: int = 2) -> float:
    """Mean milliseconds per call of run(i) over `count` examples, best of `repeats` passes after a warm-up call."""
    run(0)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(count):
            run(i)
        best = min(best, time.perf_counter() - started)
    return 1000 * best / count


def test_splits(cache: Cache) -> list[str]:
    """The cache's splits other than train, in manifest order: the test sets."""
    return [split for split in cache.splits if split != "train"]


def vocabulary_coverage(train: SoftLabels, test: SoftLabels) -> float | None:
    """Share of the test texts' tokens (teacher ids) that occur in the train texts; None when either is empty."""
    seen = {token for text in train.input_ids for token in text}
    tokens = [token for text in test.input_ids for token in text]
    return sum(token in seen for token in tokens) / len(tokens) if tokens and seen else None


def is_classify_metrics(value: Any) -> bool:
    """Whether a JSON value is what `kd classify evaluate` writes: named test splits, the headline among them, each with its models."""
    splits = value.get("splits") if isinstance(value, dict) and value.get("task") == "classify" else None
    return isinstance(splits, dict) and value.get("headline") in splits and all(isinstance(s, dict) and isinstance(s.get("models"), dict) for s in splits.values())


CLASSIFY_METRICS_FILE = ReportKind("classification metrics file", "kd classify evaluate", is_classify_metrics)


def evaluate_classifiers(
    cache_dir: Path, teacher_path: Path, students: dict[str, Path], splits: list[str] | None = None, latency_examples: int = 32, bins: int = 10, headline: str | None = None
) -> dict[str, Any]:
    """Metrics of the teacher (from the cache) and of each student on each test split (default: all but train).

    Latency is measured once, on the first texts of the headline split (default: the first split).
    """
    cache = Cache.open(cache_dir)
    splits = splits or test_splits(cache)
    if not splits:
        raise PipelineError(f"{cache_dir} has no test split to evaluate on (only {', '.join(cache.splits)})")
    headline = headline or splits[0]
    if headline not in splits:
        raise PipelineError(f"headline split '{headline}' is not among the evaluated splits ({', '.join(splits)})")
    for split in splits:
        if split not in cache.splits:
            raise PipelineError(f"{cache_dir} has no '{split}' split (it has {', '.join(cache.splits)})")
    data = {split: read_soft_labels(cache, split) for split in splits}
    for split, labels in data.items():
        if not (labels.label >= 0).any():
            raise PipelineError(f"the '{split}' split of {cache_dir} has no gold labels to evaluate against")
    train = read_soft_labels(cache, "train") if "train" in cache.splits else None
    classify = cache.labels
    timed = data[headline]
    count = min(latency_examples, len(timed))
    prompt = ClassifyPrompt(**{key: getattr(classify, key) for key in ClassifyPrompt.model_fields})
    teacher = load_causal_lm(teacher_path)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = [render_prompt(tokenizer, prompt, tokenizer.decode(ids)) for ids in timed.input_ids[:count]]
    with one_thread():  # every model on one core: comparable, and immune to other jobs' thread contention
        teacher_ms = per_example_ms(lambda i, model=teacher: verbalizer_logprobs(model, pad_id, [prompts[i]], classify.verbalizer_ids, 1), count)
    teacher_params = count_parameters(teacher)
    del teacher
    loaded: dict[str, tuple[TextClassifier, float]] = {}
    label_temperatures = set()
    for name, path in students.items():
        model, meta = load_classifier(path)
        label_temperatures.add(meta.get("train", {}).get("label_temperature", 1.0))
        if meta.get("tokenizer_sha256") != cache.manifest.tokenizer.sha256:
            raise PipelineError(f"student {name} at {path} was trained on another tokenizer than the cache's")
        inputs = [pad_batch([ids], model.config.max_tokens) for ids in timed.input_ids[:count]]
        with one_thread():
            ms = per_example_ms(lambda i, model=model, inputs=inputs: model(*inputs[i]), count)
        loaded[name] = (model, ms)
    teachers = {"teacher": 1.0} | {f"teacher T={t:.2f}": t for t in sorted(label_temperatures - {1.0})}  # as the students saw it
    results = {}
    for split, labels in data.items():
        models: dict[str, dict[str, Any]] = {}
        for name, (model, ms) in loaded.items():
            probs = torch.softmax(predict_logits(model, labels.input_ids), -1).double().numpy()
            models[name] = {"params": count_parameters(model), **prediction_metrics(probs, labels, bins), "ms_per_example": ms}
        for name, temperature in teachers.items():
            probs = np.exp(scaled_label_logprobs(labels.label_logprobs, temperature).astype(np.float64))
            models[name] = {"params": teacher_params, **prediction_metrics(probs, labels, bins), "ms_per_example": teacher_ms}
            del models[name]["agreement_with_teacher"], models[name]["kl_to_teacher"]
        models = {name: models[name] for name in [*teachers, *students]}
        for values in models.values():
            values["params_ratio_vs_teacher"] = models["teacher"]["params"] / values["params"]
            values["speedup_vs_teacher"] = teacher_ms / values["ms_per_example"]
            values["accuracy_retained"] = values["accuracy"] / models["teacher"]["accuracy"]
        mass = labels.verbalizer_mass
        results[split] = {
            "examples": len(labels),
            "gold_labels": int((labels.label >= 0).sum()),
            "vocabulary_coverage": vocabulary_coverage(train, labels) if train is not None else None,
            "verbalizer_mass": {"mean": float(mass.mean()), "p10": float(np.percentile(mass, 10))},
            "models": models,
        }
    return {
        "task": "classify",
        "labels": classify.label_names,
        "headline": headline,
        "train_examples": len(train) if train is not None else 0,
        "latency_examples": count,
        "splits": results,
    }


def format_classify_table(metrics: dict[str, Any]) -> str:
    """A summary (accuracy on every test split side by side), then the full table of each split, the headline first."""
    splits = metrics["splits"]
    order = [metrics["headline"], *(s for s in splits if s != metrics["headline"])]
    first = splits[order[0]]["models"]
    summary = {name: {f"{split} accuracy": splits[split]["models"][name]["accuracy"] for split in order} | {"params": first[name]["params"]} for name in first}
    summary_columns = [(f"{split} acc.", f"{split} accuracy", "{:.3f}") for split in order] + [("params", "params", "{:,}")]
    coverage = ", ".join(f"{split} {_share(splits[split]['vocabulary_coverage'])}" for split in order)
    lines = [
        f"classification: accuracy on each test set against gold labels (headline: {metrics['headline']}; {metrics['train_examples']} train texts; vocabulary coverage of the test tokens: {coverage})",
        *model_table(summary, summary_columns, 14, 18),
    ]
    columns = [
        ("accuracy", "accuracy", "{:.3f}"),
        ("% of teacher", "accuracy_retained", "{:.1%}"),
        ("agree", "agreement_with_teacher", "{:.3f}"),
        ("ECE", "ece", "{:.3f}"),
        ("NLL", "nll", "{:.3f}"),
        ("params", "params", "{:,}"),
        ("x fewer", "params_ratio_vs_teacher", "{:,.0f}x"),
        ("ms/example", "ms_per_example", "{:.2f}"),
        ("speed-up", "speedup_vs_teacher", "{:,.0f}x"),
    ]
    for split in order:
        values = splits[split]
        title = f"\n{split} ({values['gold_labels']} gold labels; vocabulary coverage {_share(values['vocabulary_coverage'])}; mean verbalizer mass {values['verbalizer_mass']['mean']:.3f})"
        lines += [title, *model_table(values["models"], columns, 14, 14)]
    return "\n".join(lines)


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def evaluate_classifier_students(
    cache_dir: Path,
    teacher_path: Path,
    students: dict[str, Path],
    splits: list[str] | None,
    settings: ClassifyEvaluateSettings,
    metrics_path: Path | None = None,
    chart_path: Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """`kd classify evaluate` and the classify_evaluate stage: the metrics, written as JSON, and the reliability diagram of the headline split.

    The output files are checked before any work (pipeline.outputs); `overwrite` lets them replace other files.
    """
    CLASSIFY_METRICS_FILE.claim(metrics_path, chart_path, [cache_dir, teacher_path, *students.values()], overwrite)
    metrics = evaluate_classifiers(cache_dir, teacher_path, students, splits, settings.latency_examples, settings.calibration_bins, settings.headline)
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    if chart_path is not None:
        plot_reliability(metrics["splits"][metrics["headline"]]["models"], metrics["headline"], chart_path)
    return metrics
