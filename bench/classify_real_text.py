"""Classification students on real text: what the transfer set and the student's start are worth, over student seeds.

Inputs are soft-label caches written by `kd classify teacher` with one prompt (the default):
- `--train NAME=CACHE[,CACHE...]`: a transfer set, the train splits of the caches put together (teacher
  labels; gold labels, where a text has one, only fit the label temperature);
- `--test NAME=CACHE:SPLIT`: a test set with gold labels; the first one is the headline;
- `--run TRAIN=VARIANT`: one row of the table, trained once per seed (VARIANTS below: architecture,
  targets and ClassifierConfig fields over `classify.student` of `--params`).

Each row gives the parameters, the accuracy on every test set (mean ± sd over seeds), the headline
set's accuracy as a share of the teacher's, and its NLL. Vocabulary coverage (share of test tokens,
teacher ids, that occur in the train texts) is printed per transfer set.

    python -m bench.classify_real_text --params params.yaml --teacher models/smollm2-135m-instruct \\
        --train real-1500=/tmp/real/cache-imdb --test imdb=/tmp/real/cache-imdb:test --test in_domain=/tmp/real/cache-indomain:test \\
        --run real-1500=bilstm-soft --run real-1500=bilstm-soft-temb-16k --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pipeline.cache import Cache
from pipeline.cache.soft_labels import SoftLabels, read_soft_labels
from pipeline.classify.evaluate import prediction_metrics, vocabulary_coverage
from pipeline.classify.loss import fit_label_temperature, scaled_label_logprobs
from pipeline.classify.trainer import ClassifyStudentSettings, build_classifier, predict_logits, train_classifier
from pipeline.errors import PipelineError, run_main
from pipeline.models import count_parameters
from pipeline.settings import read_section

RANDOM = {"vocab": "train", "vocab_lowest_ids": 0, "embedding_init": "random", "freeze_embeddings": False}  # the first version's students: every field set, whatever --params says
TEACHER_EMBEDDINGS = {**RANDOM, "embedding_init": "teacher", "vocab_lowest_ids": 16000}  # the default of params.yaml
VARIANTS = {  # name: (arch, targets, ClassifierConfig fields over classify.student.models.<arch> of --params)
    "bilstm-soft": ("bilstm", "soft", RANDOM),
    "bilstm-hard": ("bilstm", "hard", RANDOM),
    "bag-soft": ("bag", "soft", RANDOM),
    "bag-hard": ("bag", "hard", RANDOM),
    "bilstm-soft-random-16k": ("bilstm", "soft", {**RANDOM, "vocab_lowest_ids": 16000}),
    "bilstm-soft-temb-full": ("bilstm", "soft", {**RANDOM, "vocab": "full", "embedding_init": "teacher"}),
    "bilstm-soft-temb-16k": ("bilstm", "soft", TEACHER_EMBEDDINGS),
    "bilstm-hard-temb-16k": ("bilstm", "hard", TEACHER_EMBEDDINGS),
    "bag-soft-temb-16k": ("bag", "soft", TEACHER_EMBEDDINGS),
    "bag-hard-temb-16k": ("bag", "hard", TEACHER_EMBEDDINGS),
    "bilstm-soft-temb-16k-frozen": ("bilstm", "soft", {**TEACHER_EMBEDDINGS, "freeze_embeddings": True}),
}


def concatenated(parts: list[SoftLabels]) -> SoftLabels:
    """One SoftLabels of several caches' splits (same prompt and tokenizer, checked by the caller)."""
    first = parts[0]
    return replace(
        first,
        **{
            name: (sum((getattr(p, name) for p in parts), []) if isinstance(getattr(first, name), list) else np.concatenate([getattr(p, name) for p in parts]))
            for name in first.__dataclass_fields__
            if isinstance(getattr(first, name), list | np.ndarray)
        },
    )


def read_train_set(value: str) -> tuple[str, SoftLabels, Cache]:
    name, _, paths = value.partition("=")
    caches = [Cache.open(Path(p)) for p in paths.split(",")]
    for cache in caches[1:]:
        if cache.manifest.tokenizer.sha256 != caches[0].manifest.tokenizer.sha256 or cache.manifest.classify != caches[0].manifest.classify:
            raise PipelineError(f"transfer set {name}: {cache.path} was labelled with another tokenizer or prompt than {caches[0].path}")
    return name, concatenated([read_soft_labels(c, "train") for c in caches]), caches[0]


def read_test_set(value: str) -> tuple[str, SoftLabels]:
    name, _, where = value.partition("=")
    path, _, split = where.rpartition(":")
    return name, read_soft_labels(Cache.open(Path(path)), split)


def scores(model: torch.nn.Module, test: SoftLabels) -> dict[str, float]:
    probs = torch.softmax(predict_logits(model, test.input_ids), -1).numpy()
    metrics = prediction_metrics(probs, test, 10)
    return {"accuracy": metrics["accuracy"], "nll": metrics["nll"]}


def teacher_accuracy(test: SoftLabels) -> float:
    gold = test.label >= 0
    return float((test.label_logprobs[gold].argmax(1) == test.label[gold]).mean())


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f}±{statistics.stdev(values) if len(values) > 1 else 0:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--train", action="append", required=True, help="NAME=CACHE[,CACHE...]")
    parser.add_argument("--test", action="append", required=True, help="NAME=CACHE:SPLIT (the first is the headline)")
    parser.add_argument("--run", action="append", required=True, help="TRAIN=VARIANT")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--label-temperature", type=float, help="instead of classify.student.label_temperature of --params (a transfer set without gold labels cannot fit one)")
    args = parser.parse_args()

    section = read_section(args.params, "classify.student", ClassifyStudentSettings).updated("classify.student", label_temperature=args.label_temperature)
    train_sets = {name: (data, cache) for name, data, cache in map(read_train_set, args.train)}
    tests = dict(map(read_test_set, args.test))
    headline = next(iter(tests))
    print(f"teacher accuracy: {', '.join(f'{name} {teacher_accuracy(t):.3f} ({len(t)} texts)' for name, t in tests.items())}; seeds {args.seeds}")
    for name, (train, _) in train_sets.items():
        coverage = ", ".join(f"{test} {vocabulary_coverage(train, t):.1%}" for test, t in tests.items())
        print(f"transfer set {name}: {len(train)} texts, {int((train.label >= 0).sum())} with gold labels; vocabulary coverage {coverage}")
    header = f"{'transfer set':16} {'student':28} {'params':>10}" + "".join(f" {name + ' acc':>14}" for name in tests) + f" {headline + ' % teacher':>16} {headline + ' NLL':>14}"
    print(header)
    print("-" * len(header))
    for run in args.run:
        train_name, _, variant = run.partition("=")
        train, cache = train_sets[train_name]
        arch, targets, fields = VARIANTS[variant]
        tau = fit_label_temperature(train.label_logprobs, train.label) if section.label_temperature == "fit" else float(section.label_temperature)
        scaled = replace(train, label_logprobs=scaled_label_logprobs(train.label_logprobs, tau))
        results: list[dict[str, dict[str, float]]] = []
        for seed in args.seeds:
            models = {**section.models, arch: {**section.models.get(arch, {}), **fields}}
            settings = section.updated("classify.student", models=models, seed=seed).variant(arch, targets)
            model = build_classifier(settings.model, scaled, cache, seed, args.teacher)
            train_classifier(model, scaled, settings)
            results.append({name: scores(model, t) for name, t in tests.items()})
        accuracy = [r[headline]["accuracy"] for r in results]
        print(
            f"{train_name:16} {variant:28} {count_parameters(model):>10,}"
            + "".join(f" {spread([r[name]['accuracy'] for r in results]):>14}" for name in tests)
            + f" {100 * statistics.mean(accuracy) / teacher_accuracy(tests[headline]):>15.1f}% {spread([r[headline]['nll'] for r in results]):>14}",
            flush=True,
        )


if __name__ == "__main__":
    run_main(main)
