"""Student training for language models: stream the cache, minimise the distillation loss."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from transformers import AutoTokenizer

from pipeline.cache.format import CAUSAL_LM_TASK
from pipeline.cache.reader import Cache
from pipeline.errors import PipelineError
from pipeline.hashing import tokenizer_sha256
from pipeline.lm.chunked_loss import chunked_distillation_loss
from pipeline.lm.losses import LossSpec
from pipeline.lm.streaming import Positions, TopKBatch, scored_positions, stream_batches
from pipeline.lm.student import SCRATCH, initial_student, position_hidden
from pipeline.models import count_parameters, save_checkpoint
from pipeline.settings import Positive
from pipeline.training import train_loop, write_loss_log

log = logging.getLogger(__name__)


class StudentSettings(LossSpec):
    """The `student` section: the student's architecture, the loss (LossSpec's fields) and the optimisation."""

    init: str = "scratch"  # scratch: a random student built from `model`; or the path of a pretrained HF causal-LM folder to start from
    model: dict[str, Any] = {}  # LlamaConfig fields of a scratch student; the vocabulary comes from the cache
    positions: Positions = "response"  # or "all": CE also on prompt tokens
    chunk_positions: Positive = 256
    epochs: Positive = 4
    batch_size: Positive = 8
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(10, ge=0)
    seed: int = 0
    shuffle_rows: Positive = 256


def check_compatibility(cache: Cache, tokenizer: Any, tokenizer_path: Path, settings: StudentSettings) -> None:
    """Refuse a cache this student cannot learn from, saying what differs."""
    cache.require_task(CAUSAL_LM_TASK, "a causal LM student")
    manifest = cache.manifest
    expected = manifest["tokenizer"]["sha256"]
    actual = tokenizer_sha256(tokenizer)
    if actual != expected:
        raise PipelineError(
            f"tokenizer mismatch: the cache was made with tokenizer {expected[:12]} "
            f"({manifest['tokenizer']['tokenizer_size']} tokens), the student's at {tokenizer_path} is {actual[:12]} ({len(tokenizer)} tokens)"
        )
    if cache.sampled and settings.loss != "forward_kl":
        raise PipelineError(f"{cache.path} is a sampled cache: it supports student.loss forward_kl only (its unbiased estimator), not '{settings.loss}'")
    if cache.sampled and settings.tail != "bucket":
        raise PipelineError(f"{cache.path} is a sampled cache: it has no top-k tail to treat, so student.tail '{settings.tail}' does not apply (leave it at bucket)")


def student_tokenizer_path(cache: Cache, tokenizer_path: Path | None, init: str = SCRATCH) -> Path:
    """The tokenizer given, else a pretrained student's own, else the one shipped inside the cache."""
    own = Path(init) if init != SCRATCH and (Path(init) / "tokenizer_config.json").exists() else None
    path = tokenizer_path or own or cache.tokenizer_dir
    if not path.exists():
        raise PipelineError(f"no tokenizer at {path}: this cache does not ship one, pass the teacher's tokenizer folder")
    return path


def estimated_steps(cache: Cache, split: str, settings: StudentSettings) -> int:
    shards = cache.splits[split]["shards"]
    per_epoch = sum(math.ceil(min(settings.shuffle_rows, s["rows"] - w) / settings.batch_size) for s in shards for w in range(0, s["rows"], settings.shuffle_rows))
    return per_epoch * settings.epochs


def batch_loss(model: torch.nn.Module, batch: TopKBatch, settings: StudentSettings) -> dict[str, torch.Tensor]:
    """The training loss of one batch, with the output layer applied chunk by chunk inside the loss."""
    rows, columns, targets = scored_positions(batch, settings.positions)
    hidden = position_hidden(model, batch.input_ids, batch.attention_mask, rows, columns)
    head = model.get_output_embeddings()
    return chunked_distillation_loss(hidden, head.weight, head.bias, targets, batch.topk_ids, batch.topk_logprobs, settings, settings.chunk_positions, batch.counts)


def train_student(cache_dir: Path, settings: StudentSettings, out_dir: Path, tokenizer_path: Path | None = None, loss_log: Path | None = None) -> list[dict[str, float]]:
    """Train a student on the cache's train split, save it (with the tokenizer) to out_dir; returns the step log.

    tokenizer_path None means the tokenizer shipped in the cache; `loss_log` also writes the log as CSV.
    """
    cache = Cache.open(cache_dir)
    tokenizer_path = student_tokenizer_path(cache, tokenizer_path, settings.init)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    check_compatibility(cache, tokenizer, tokenizer_path, settings)
    cache.check_shards("train")
    model = initial_student(settings.init, settings.model, cache.vocab_size, settings.seed)
    tokens = [0]

    def count_tokens(batch: TopKBatch) -> int:
        tokens[0] += batch.num_tokens
        return batch.num_tokens

    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps = train_loop(
        model,
        optimizer,
        lambda epoch: stream_batches(cache, "train", settings.batch_size, seed=settings.seed + epoch, shuffle_rows=settings.shuffle_rows),
        lambda batch: batch_loss(model, batch, settings),
        epochs=settings.epochs,
        total_steps=estimated_steps(cache, "train", settings),
        peak_lr=settings.lr,
        warmup_steps=settings.warmup_steps,
        desc=f"student {settings.loss} a={settings.alpha}",
        count_tokens=count_tokens,
    )
    save_checkpoint(model.eval(), tokenizer, out_dir)
    log.info("student: %.2fM parameters, %d steps, %d tokens, saved to %s", count_parameters(model) / 1e6, len(steps), tokens[0], out_dir)
    if loss_log is not None:
        write_loss_log(steps, loss_log)
    return steps
