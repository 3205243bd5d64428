"""Classification students on real text: in-domain and out-of-distribution accuracy over student seeds.

Inputs are two soft-label caches written by `kd classify teacher` with the default prompt:
- `--train-cache`: train split = the transfer texts the students learn from (teacher labels only),
  test split = the out-of-distribution test set (the UCI IMDB sentences);
- `--indomain-cache`: test split = held-out texts of the transfer corpus (in-domain).

Each variant (architecture x targets x embedding start) is trained once per seed with the
`classify.student` settings of `--params` (only the named fields change), and scored on both test
sets against gold labels, next to the teacher. Vocabulary coverage is the share of test tokens
(teacher ids) that occur in the train split.

    python -m bench.classify_real_text --params bench/params/classify-real-text.yaml \\
        --train-cache /tmp/real/cache-imdb --indomain-cache /tmp/real/cache-indomain --teacher models/smollm2-135m-instruct --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from pipeline.cache import Cache
from pipeline.cache.soft_labels import SoftLabels, read_soft_labels
from pipeline.classify.evaluate import prediction_metrics
from pipeline.classify.student import load_classifier
from pipeline.classify.training import ClassifyStudentSettings, predict_logits, train_classifier_from_cache
from pipeline.errors import run_main
from pipeline.models import count_parameters
from pipeline.settings import read_section

VARIANTS = {  # name: (arch, targets, ClassifierConfig overrides)
    "bilstm-soft": ("bilstm", "soft", {}),
    "bilstm-hard": ("bilstm", "hard", {}),
    "bag-soft": ("bag", "soft", {}),
    "bag-hard": ("bag", "hard", {}),
    "bilstm-soft, teacher emb., vocab full": ("bilstm", "soft", {"vocab": "full", "embedding_init": "teacher"}),
    "bilstm-hard, teacher emb., vocab full": ("bilstm", "hard", {"vocab": "full", "embedding_init": "teacher"}),
    "bag-soft, teacher emb., vocab full": ("bag", "soft", {"vocab": "full", "embedding_init": "teacher"}),
}


def coverage(train: SoftLabels, test: SoftLabels) -> float:
    seen = {token for text in train.input_ids for token in text}
    tokens = [token for text in test.input_ids for token in text]
    return sum(token in seen for token in tokens) / len(tokens)


def scores(model_dir: Path, test: SoftLabels) -> dict[str, float]:
    model, _ = load_classifier(model_dir)
    probs = torch.softmax(predict_logits(model, test.input_ids), -1).numpy()
    metrics = prediction_metrics(probs, test, 10)
    return {"accuracy": metrics["accuracy"], "nll": metrics["nll"], "agree": metrics["agreement_with_teacher"], "params": count_parameters(model)}


def teacher_accuracy(test: SoftLabels) -> float:
    gold = test.label >= 0
    return float((test.label_logprobs[gold].argmax(1) == test.label[gold]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--train-cache", type=Path, required=True)
    parser.add_argument("--indomain-cache", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = parser.parse_args()

    section = read_section(args.params, "classify.student", ClassifyStudentSettings)
    cache = Cache.open(args.train_cache)
    train, ood = read_soft_labels(cache, "train"), read_soft_labels(cache, "test")
    indomain = read_soft_labels(Cache.open(args.indomain_cache), "test")
    print(f"train: {len(train)} texts; in-domain test: {len(indomain)} (coverage {coverage(train, indomain):.1%}); out-of-distribution test: {len(ood)} (coverage {coverage(train, ood):.1%})")
    print(f"teacher accuracy: in-domain {teacher_accuracy(indomain):.3f}, out-of-distribution {teacher_accuracy(ood):.3f}; seeds {args.seeds}")
    header = f"{'variant':40} {'params':>10} {'in-dom acc':>12} {'OOD acc':>14} {'OOD % teacher':>14} {'OOD NLL':>14}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            arch, targets, overrides = VARIANTS[name]
            rows = []
            for seed in args.seeds:
                models = {**section.models, arch: {**section.models.get(arch, {}), **overrides}}
                settings = section.updated("classify.student", models=models, seed=seed).variant(arch, targets)
                out = Path(tmp) / f"{arch}-{targets}-{seed}"
                train_classifier_from_cache(args.train_cache, settings, out, teacher=args.teacher)
                rows.append((scores(out, indomain), scores(out, ood)))

            def spread(values: list[float]) -> str:
                return f"{statistics.mean(values):.3f}±{statistics.stdev(values) if len(values) > 1 else 0:.3f}"

            ood_acc = [o["accuracy"] for _, o in rows]
            print(
                f"{name:40} {rows[0][1]['params']:>10,} {spread([i['accuracy'] for i, _ in rows]):>12} {spread(ood_acc):>14}"
                f" {100 * np.mean(ood_acc) / teacher_accuracy(ood):>13.1f}% {spread([o['nll'] for _, o in rows]):>14}"
            )


if __name__ == "__main__":
    run_main(main)
