"""Small text classifiers reading the teacher tokenizer's ids: a BiLSTM and a bag of embeddings.

Both can keep embedding rows only for the token ids seen in the training texts (`vocab: train`):
most of a 49k LLM vocabulary never occurs in a task's texts, and the embedding table is what
makes a student big. The kept ids travel with the model as a buffer; any other id maps to UNK.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from pipeline.atomic import atomic_dir
from pipeline.errors import PipelineError
from pipeline.outputs import FolderKind, write_marker
from pipeline.settings import Positive, Settings

Arch = Literal["bilstm", "bag"]
ARCHS = get_args(Arch)
PAD, UNK = 0, 1
CONFIG_FILE = "classifier.json"
WEIGHTS_FILE = "classifier.pt"


class ClassifierConfig(Settings):
    """One classifier's architecture and sizes (`classify.student.models.<arch>` with its arch)."""

    arch: Arch = "bilstm"  # bilstm, or bag (fastText-style mean of embeddings)
    embedding_dim: Positive = 64
    hidden_size: int = Field(64, ge=0)  # bilstm: per direction; bag: the hidden layer (0 = linear on the mean)
    num_layers: Positive = 1  # bilstm only
    dropout: float = Field(0.2, ge=0, lt=1)
    vocab: Literal["train", "full"] = "train"  # train: rows for token ids seen in the training texts only; full: the teacher's vocabulary
    vocab_lowest_ids: int = Field(0, ge=0)  # vocab train: also rows for teacher ids below this (a BPE vocabulary numbers its merges roughly by frequency: its commonest tokens)
    max_tokens: Positive = 128  # texts are cut to this many tokens
    embedding_init: Literal["random", "teacher"] = "random"  # teacher: rows from the teacher's token embeddings, PCA-projected to embedding_dim
    freeze_embeddings: bool = False  # keep the embedding rows as initialised (with embedding_init teacher: seen and unseen words stay in one space)

    @model_validator(mode="after")
    def _lowest_ids_need_train_vocab(self) -> ClassifierConfig:
        if self.vocab_lowest_ids and self.vocab != "train":
            raise ValueError("vocab_lowest_ids adds rows to vocab: train; vocab: full already has every id")
        return self


class TextClassifier(nn.Module):
    """Teacher token ids in, label logits out; `vocab_ids` (sorted teacher ids) maps ids to embedding rows."""

    def __init__(self, config: ClassifierConfig, num_labels: int, vocab_ids: torch.Tensor):
        super().__init__()
        self.config = config
        self.num_labels = num_labels
        self.register_buffer("vocab_ids", vocab_ids.to(torch.long).sort().values, persistent=True)
        self.embedding = nn.Embedding(len(vocab_ids) + 2, config.embedding_dim, padding_idx=PAD)
        self.embedding.weight.requires_grad_(not config.freeze_embeddings)
        self.dropout = nn.Dropout(config.dropout)
        if config.arch == "bilstm":
            self.lstm = nn.LSTM(config.embedding_dim, config.hidden_size, config.num_layers, batch_first=True, bidirectional=True)
            features = 2 * config.hidden_size
            self.head = nn.Linear(features, num_labels)
        else:
            layers: list[nn.Module] = [nn.Linear(config.embedding_dim, config.hidden_size), nn.Tanh()] if config.hidden_size else []
            self.head = nn.Sequential(*layers, nn.Linear(config.hidden_size or config.embedding_dim, num_labels))

    def rows(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Embedding rows of teacher ids: PAD where mask is 0, UNK for ids outside vocab_ids."""
        index = torch.searchsorted(self.vocab_ids, input_ids).clamp(max=len(self.vocab_ids) - 1)
        found = self.vocab_ids[index] == input_ids
        return torch.where(mask.bool(), torch.where(found, index + 2, UNK), PAD)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        embedded = self.dropout(self.embedding(self.rows(input_ids, mask)))
        lengths = mask.sum(1).clamp(min=1)
        if self.config.arch == "bag":
            return self.head(embedded.sum(1) / lengths[:, None])
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=input_ids.shape[1], padding_value=float("-inf"))
        return self.head(self.dropout(out.max(1).values))  # max-pool over time


@contextmanager
def one_thread() -> Iterator[None]:
    """Run a tiny model on one CPU thread: its ops are too small to split, and on a busy machine
    the threads' synchronisation at every LSTM time step costs more than the work (seconds per step)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def teacher_embedding_rows(table: torch.Tensor, ids: torch.Tensor, dim: int) -> torch.Tensor:
    """The teacher's embedding rows of `ids` [n, H] projected onto the table's top `dim` principal directions [n, dim].

    PCA over all rows of the table (float64): centred rows times the eigenvectors of their covariance
    with the largest eigenvalues, each signed so that its largest-magnitude coordinate is positive
    (the result is then unique), and one scalar that gives the projected table standard deviation 1,
    the scale of a default embedding initialisation. Ids the student never saw in training thus still
    get rows that place them near the words the teacher treats alike.
    """
    rows, width = table.shape
    if dim > width:
        raise PipelineError(f"classify.student embedding_dim {dim} is wider than the teacher's embeddings ({width}): embedding_init teacher needs embedding_dim <= {width}")
    centred = table.double() - table.double().mean(0)
    _, vectors = torch.linalg.eigh(centred.T @ centred / rows)
    components = vectors[:, -dim:].flip(1)  # largest eigenvalue first
    signs = torch.sign(components.gather(0, components.abs().argmax(0, keepdim=True)))
    components = components * signs
    scale = 1.0 / (centred @ components).std()
    return (centred[ids] @ components * scale).float()


def student_vocab(config: ClassifierConfig, texts: Sequence[Sequence[int]], vocab_size: int) -> torch.Tensor:
    """The teacher ids the classifier keeps rows for, sorted."""
    if config.vocab == "full":
        return torch.arange(vocab_size)
    seen = {t for text in texts for t in text[: config.max_tokens]}
    return torch.tensor(sorted(seen | set(range(min(config.vocab_lowest_ids, vocab_size)))), dtype=torch.long)


def pad_batch(texts: Sequence[Sequence[int]], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(min(len(t), max_tokens) for t in texts))
    ids = torch.zeros((len(texts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, text in enumerate(texts):
        cut = list(text[:max_tokens])
        ids[row, : len(cut)] = torch.tensor(cut, dtype=torch.long)
        mask[row, : len(cut)] = 1
    return ids, mask


CLASSIFIER_FOLDER = FolderKind("classifier folder", lambda folder: (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file())  # or one from before markers


def save_classifier(model: TextClassifier, meta: dict[str, Any], tokenizer_dir: Path | None, out_dir: Path) -> None:
    """Weights, config and label names (and the teacher tokenizer, so the student runs on raw text alone).

    Written into a temporary folder and renamed: a crash never leaves half a classifier.
    """
    with atomic_dir(Path(out_dir)) as tmp:
        tmp.mkdir()
        torch.save(model.state_dict(), tmp / WEIGHTS_FILE)
        config = {"config": model.config.model_dump(), "num_labels": model.num_labels, **meta}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, tmp / "tokenizer")
        write_marker(tmp, CLASSIFIER_FOLDER)


def init_embeddings_from_teacher(model: TextClassifier, table: torch.Tensor) -> None:
    """`embedding_init: teacher`: every kept id's row from `teacher_embedding_rows`; UNK starts at the mean (zero), PAD stays zero."""
    if int(model.vocab_ids.max()) >= len(table):
        raise PipelineError(f"the teacher's embedding table has {len(table)} rows, but the classifier keeps token ids up to {int(model.vocab_ids.max())}")
    with torch.no_grad():
        model.embedding.weight[2:] = teacher_embedding_rows(table, model.vocab_ids, model.config.embedding_dim)
        model.embedding.weight[UNK] = 0.0


def load_classifier(model_dir: Path) -> tuple[TextClassifier, dict[str, Any]]:
    path = Path(model_dir) / CONFIG_FILE
    if not path.exists():
        raise PipelineError(f"no classifier at {model_dir}: {CONFIG_FILE} not found")
    meta = json.loads(path.read_text())
    state = torch.load(Path(model_dir) / WEIGHTS_FILE, map_location="cpu")
    model = TextClassifier(ClassifierConfig(**meta["config"]), meta["num_labels"], state["vocab_ids"])
    model.load_state_dict(state)
    return model.eval(), meta
