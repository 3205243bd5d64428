"""Train a small classifier on a soft-label cache: the teacher's soft labels, or its hard (argmax) labels."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.cache import TOKENIZER_DIR, read_manifest
from pipeline.classify_cache import SoftLabels, read_soft_labels
from pipeline.classify_loss import fit_label_temperature, hard_targets, hinton_loss, scaled_label_logprobs
from pipeline.classify_student import ClassifierConfig, TextClassifier, one_thread, pad_batch, save_classifier, student_vocab
from pipeline.losses import check_mixing
from pipeline.student import count_parameters
from pipeline.errors import PipelineError

TARGETS = ("soft", "hard")


@dataclass
class ClassifyTrainSettings:
    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    targets: str = "soft"  # "soft": the teacher's label distribution; "hard": its argmax label
    alpha: float = 1.0  # weight of the distillation term; 1 - alpha on CE with gold labels (rows that have one)
    temperature: float = 1.0
    label_temperature: float | str = "fit"  # the teacher's labels at this temperature; "fit": the one that best predicts the train split's gold labels
    epochs: int = 20
    batch_size: int = 32
    lr: float = 0.003
    weight_decay: float = 0.0
    seed: int = 0

    def validate(self) -> None:
        self.model.validate()
        if self.targets not in TARGETS:
            raise PipelineError(f"targets must be one of {', '.join(TARGETS)}, got '{self.targets}'")
        check_mixing(self.alpha, self.temperature)
        if self.label_temperature != "fit" and not (isinstance(self.label_temperature, (int, float)) and self.label_temperature > 0):
            raise PipelineError(f"label_temperature must be 'fit' or a number above 0, got {self.label_temperature!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise PipelineError("epochs and batch_size must be at least 1")


def build_classifier(config: ClassifierConfig, train: SoftLabels, manifest: dict[str, Any], seed: int) -> TextClassifier:
    torch.manual_seed(seed)
    vocab = student_vocab(config, train.input_ids, manifest["tokenizer"]["vocab_size"])
    return TextClassifier(config, len(manifest["classify"]["label_names"]), vocab)


@torch.inference_mode()
def predict_logits(model: TextClassifier, texts: list[list[int]], batch_size: int = 64) -> torch.Tensor:
    model.eval()
    with one_thread():
        out = [model(*pad_batch(texts[s : s + batch_size], model.config.max_tokens)) for s in range(0, len(texts), batch_size)]
    return torch.cat(out).float()


def kl_to_teacher(model: TextClassifier, data: SoftLabels) -> float:
    """Mean KL(teacher || student) over a split, at temperature 1."""
    student = F.log_softmax(predict_logits(model, data.input_ids), -1)
    teacher = torch.from_numpy(data.label_logprobs).float()
    return float((teacher.exp() * (teacher - student)).sum(-1).mean())


def train_classifier(model: TextClassifier, train: SoftLabels, settings: ClassifyTrainSettings) -> list[dict[str, float]]:
    """Minimise the Hinton loss over the split; returns the per-step log."""
    settings.validate()
    if len(train) == 0:
        raise PipelineError("the train split of the cache is empty")
    generator = torch.Generator().manual_seed(settings.seed)
    targets = torch.from_numpy(train.label_logprobs).float()
    if settings.targets == "hard":
        targets = hard_targets(targets)
    gold = torch.from_numpy(train.label)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, step / total))))
    log: list[dict[str, float]] = []
    model.train()
    with one_thread(), tqdm(total=total, unit="step", desc=f"classify student {model.config.arch}-{settings.targets}") as progress:
        for epoch in range(settings.epochs):
            order = torch.randperm(len(train), generator=generator).tolist()
            for start in range(0, len(order), settings.batch_size):
                rows = order[start : start + settings.batch_size]
                logits = model(*pad_batch([train.input_ids[i] for i in rows], model.config.max_tokens))
                terms = hinton_loss(logits, targets[rows], gold[rows], settings.alpha, settings.temperature)
                optimizer.zero_grad(set_to_none=True)
                terms["loss"].backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                log.append({"step": len(log), "epoch": epoch, **{name: value.item() for name, value in terms.items()}})
                progress.update(1)
                progress.set_postfix(loss=f"{log[-1]['loss']:.3f}")
    return log


def train_classifier_from_cache(cache_dir: Path, settings: ClassifyTrainSettings, out_dir: Path) -> list[dict[str, float]]:
    """Train on the cache's train split and save the classifier (with the cache's tokenizer) to out_dir."""
    settings.validate()
    manifest = read_manifest(cache_dir)
    train = read_soft_labels(cache_dir, "train", manifest)
    label_temperature = fit_label_temperature(train.label_logprobs, train.label) if settings.label_temperature == "fit" else float(settings.label_temperature)
    train = replace(train, label_logprobs=scaled_label_logprobs(train.label_logprobs, label_temperature))
    model = build_classifier(settings.model, train, manifest, settings.seed)
    log = train_classifier(model, train, settings)
    meta = {
        "labels": manifest["classify"]["label_names"],
        "targets": settings.targets,
        "tokenizer_sha256": manifest["tokenizer"]["sha256"],
        "train": {"alpha": settings.alpha, "temperature": settings.temperature, "label_temperature": label_temperature, "epochs": settings.epochs, "seed": settings.seed},
    }
    tokenizer_dir = Path(cache_dir) / TOKENIZER_DIR
    save_classifier(model.eval(), meta, tokenizer_dir if tokenizer_dir.exists() else None, out_dir)
    print(f"classify student: {model.config.arch}, {settings.targets} targets (teacher labels at temperature {label_temperature:.3f}), {count_parameters(model):,} parameters, "
          f"train accuracy vs teacher {agreement(model, train):.3f}, saved to {out_dir}")
    return log


def agreement(model: TextClassifier, data: SoftLabels) -> float:
    return float((predict_logits(model, data.input_ids).argmax(-1).numpy() == data.label_logprobs.argmax(-1)).mean())

