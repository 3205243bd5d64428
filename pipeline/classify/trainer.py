"""Train a small classifier on a soft-label cache: the teacher's soft labels, or its hard (argmax) labels."""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from pipeline.cache.reader import Cache
from pipeline.cache.soft_labels import SoftLabels, read_soft_labels
from pipeline.classify.loss import fit_label_temperature, hard_targets, hinton_loss, label_kl, scaled_label_logprobs
from pipeline.classify.student import CLASSIFIER_FOLDER, Arch, ClassifierConfig, TextClassifier, init_embeddings_from_teacher, one_thread, pad_batch, save_classifier, student_vocab
from pipeline.errors import PipelineError
from pipeline.models import count_parameters, load_causal_lm
from pipeline.outputs import claim_file, claim_folder
from pipeline.settings import Alpha, Positive, Settings, Temperature
from pipeline.train_loop import LOSS_LOG_FILE, backward_terms, epoch_steps, train_loop, write_loss_log

log = logging.getLogger(__name__)

Targets = Literal["soft", "hard"]
TARGETS = get_args(Targets)


class ClassifierTraining(Settings):
    """How a classifier is trained: what `classify.student` sets for every architecture."""

    alpha: Alpha = 1.0  # weight of the distillation term; 1 - alpha on CE with gold labels (rows that have one)
    temperature: Temperature = 1.0
    label_temperature: float | Literal["fit"] = "fit"  # the teacher's labels at this temperature; fit: the one that best predicts the train split's gold labels
    epochs: Positive = 20
    batch_size: Positive = 32
    lr: float = Field(0.003, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = 0

    @field_validator("label_temperature")
    @classmethod
    def _positive(cls, value: float | str) -> float | str:
        if value != "fit" and value <= 0:
            raise ValueError(f"label_temperature must be 'fit' or a number above 0, got {value!r}")
        return value


class ClassifyTrainSettings(ClassifierTraining):
    """One training run: a classifier and the targets it learns (the teacher's soft or hard labels)."""

    model: ClassifierConfig = ClassifierConfig()
    targets: Targets = "soft"  # soft: the teacher's label distribution; hard: its argmax label


class ClassifyStudentSettings(ClassifierTraining):
    """The `classify.student` section: each architecture's sizes, and the training every variant shares."""

    models: dict[Arch, dict[str, Any]] = {}  # per architecture, ClassifierConfig fields other than arch (missing: its defaults)

    def variant(self, arch: Arch, targets: Targets) -> ClassifyTrainSettings:
        """The settings of one trained variant (`bilstm-soft`, ...)."""
        shared = self.model_dump(exclude={"models"})
        return ClassifyTrainSettings.from_section({**shared, "model": {"arch": arch, **self.models.get(arch, {})}, "targets": targets}, "classify.student")


def build_classifier(config: ClassifierConfig, train: SoftLabels, cache: Cache, seed: int, teacher: Path | None = None) -> TextClassifier:
    """A fresh classifier; with `embedding_init: teacher`, its embedding rows come from the teacher model at `teacher`."""
    torch.manual_seed(seed)
    vocab = student_vocab(config, train.input_ids, cache.vocab_size)
    model = TextClassifier(config, len(cache.labels.label_names), vocab)
    if config.embedding_init == "teacher":
        if teacher is None:
            raise PipelineError("classify.student embedding_init teacher needs the teacher model folder (kd classify student --teacher)")
        init_embeddings_from_teacher(model, load_causal_lm(teacher).get_input_embeddings().weight.detach())
    return model


@torch.inference_mode()
def predict_logits(model: TextClassifier, texts: list[list[int]], batch_size: int = 64) -> torch.Tensor:
    model.eval()
    with one_thread():
        out = [model(*pad_batch(texts[s : s + batch_size], model.config.max_tokens)) for s in range(0, len(texts), batch_size)]
    return torch.cat(out).float()


def train_classifier(model: TextClassifier, train: SoftLabels, settings: ClassifyTrainSettings) -> list[dict[str, float]]:
    """Minimise the Hinton loss over the split; returns the per-step log."""
    if len(train) == 0:
        raise PipelineError("the train split of the cache is empty")
    generator = torch.Generator().manual_seed(settings.seed)
    targets = torch.from_numpy(train.label_logprobs).float()
    if settings.targets == "hard":
        targets = hard_targets(targets)
    gold = torch.from_numpy(train.label)

    def epoch_batches(epoch: int) -> list[list[int]]:
        order = torch.randperm(len(train), generator=generator).tolist()
        return [order[start : start + settings.batch_size] for start in range(0, len(order), settings.batch_size)]

    def batch_loss(rows: list[int]) -> dict[str, torch.Tensor]:
        logits = model(*pad_batch([train.input_ids[i] for i in rows], model.config.max_tokens))
        return hinton_loss(logits, targets[rows], gold[rows], settings.alpha, settings.temperature)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr, weight_decay=settings.weight_decay)
    with one_thread():
        return train_loop(
            model,
            optimizer,
            epoch_steps(settings.epochs, epoch_batches),
            lambda rows: backward_terms(batch_loss(rows)),
            total_steps=math.ceil(len(train) / settings.batch_size) * settings.epochs,
            peak_lr=settings.lr,
            desc=f"classify student {model.config.arch}-{settings.targets}",
        )


def train_classifier_from_cache(
    cache_dir: Path, settings: ClassifyTrainSettings, out_dir: Path, loss_log: Path | None = None, teacher: Path | None = None, overwrite: bool = False
) -> list[dict[str, float]]:
    """Train on the cache's train split and save the classifier (with the cache's tokenizer) to out_dir.

    `teacher` is the teacher model's folder, read only for `embedding_init: teacher`. The outputs are
    checked before any work (pipeline.outputs); `overwrite` lets them replace folders and files of other kinds.
    """
    claim_folder(out_dir, CLASSIFIER_FOLDER, "--out", [cache_dir, teacher], overwrite)
    if loss_log is not None:
        claim_file(loss_log, LOSS_LOG_FILE, "--loss-log", [cache_dir, teacher, out_dir], overwrite)
    cache = Cache.open(cache_dir)
    train = read_soft_labels(cache, "train")
    label_temperature = fit_label_temperature(train.label_logprobs, train.label) if settings.label_temperature == "fit" else float(settings.label_temperature)
    train = replace(train, label_logprobs=scaled_label_logprobs(train.label_logprobs, label_temperature))
    model = build_classifier(settings.model, train, cache, settings.seed, teacher)
    steps = train_classifier(model, train, settings)
    meta = {
        "labels": cache.labels.label_names,
        "targets": settings.targets,
        "tokenizer_sha256": cache.manifest.tokenizer.sha256,
        "train": {"alpha": settings.alpha, "temperature": settings.temperature, "label_temperature": label_temperature, "epochs": settings.epochs, "seed": settings.seed},
    }
    save_classifier(model.eval(), meta, cache.tokenizer_dir if cache.tokenizer_dir.exists() else None, out_dir)
    log.info(
        "classify student: %s, %s targets (teacher labels at temperature %.3f), %s parameters, train accuracy vs teacher %.3f, saved to %s",
        model.config.arch,
        settings.targets,
        label_temperature,
        f"{count_parameters(model):,}",
        agreement(model, train),
        out_dir,
    )
    if loss_log is not None:
        write_loss_log(steps, loss_log)
    return steps


def agreement(model: TextClassifier, data: SoftLabels) -> float:
    return float((predict_logits(model, data.input_ids).argmax(-1).numpy() == data.label_logprobs.argmax(-1)).mean())


def kl_to_teacher(model: TextClassifier, data: SoftLabels) -> float:
    """Mean KL(teacher || student) over a split, at temperature 1."""
    student = F.log_softmax(predict_logits(model, data.input_ids), -1)
    return float(label_kl(torch.from_numpy(data.label_logprobs).float(), student).mean())
