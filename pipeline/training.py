"""The student training loop: stream the cache, minimise the distillation loss."""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import AutoTokenizer

from pipeline.cache import TOKENIZER_DIR, open_shard, read_manifest, split_shards
from pipeline.checkpoint import save_checkpoint
from pipeline.codec import manifest_encoding
from pipeline.errors import PipelineError
from pipeline.hashing import tokenizer_sha256
from pipeline.chunked_loss import chunked_distillation_loss
from pipeline.losses import LossSpec
from pipeline.student import build_student, count_parameters, position_hidden
from pipeline.streaming import POSITIONS, TopKBatch, scored_positions, stream_batches


@dataclass
class TrainSettings:
    loss: str = "forward_kl"  # a pipeline.losses.DIVERGENCES name
    tail: str = "bucket"  # or "renormalize"
    alpha: float = 0.9
    temperature: float = 1.0
    beta: float = 0.5  # jsd only
    skew: float = 0.1  # skew_kl only
    positions: str = "response"  # or "all": CE also on prompt tokens
    chunk_positions: int = 256
    epochs: int = 4
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 10
    seed: int = 0
    shuffle_rows: int = 256

    def loss_spec(self) -> LossSpec:
        return LossSpec(self.loss, self.tail, self.alpha, self.temperature, self.beta, self.skew)

    def validate(self) -> None:
        self.loss_spec()
        if self.positions not in POSITIONS:
            raise PipelineError(f"positions must be one of {', '.join(POSITIONS)}, got '{self.positions}'")
        if self.chunk_positions < 1:
            raise PipelineError(f"chunk_positions must be at least 1, got {self.chunk_positions}")


def check_compatibility(manifest: dict[str, Any], tokenizer: Any, tokenizer_path: Path) -> None:
    """Refuse a cache this student cannot learn from, saying what differs."""
    if manifest.get("task") != "causal_lm_topk":
        raise PipelineError(f"the cache holds task '{manifest.get('task')}', but a causal LM student needs 'causal_lm_topk'")
    expected = manifest["tokenizer"]["sha256"]
    actual = tokenizer_sha256(tokenizer)
    if actual != expected:
        raise PipelineError(
            f"tokenizer mismatch: the cache was made with tokenizer {expected[:12]} "
            f"({manifest['tokenizer']['tokenizer_size']} tokens), the student's at {tokenizer_path} is {actual[:12]} ({len(tokenizer)} tokens)"
        )


def student_tokenizer_path(cache_dir: Path, tokenizer_path: Path | None) -> Path:
    """The tokenizer given, else the one shipped inside the cache."""
    path = tokenizer_path or Path(cache_dir) / TOKENIZER_DIR
    if not path.exists():
        raise PipelineError(f"no tokenizer at {path}: this cache does not ship one, pass the teacher's tokenizer folder")
    return path


def estimated_steps(manifest: dict[str, Any], split: str, settings: TrainSettings) -> int:
    shards = manifest["splits"][split]["shards"]
    per_epoch = sum(
        math.ceil(min(settings.shuffle_rows, s["rows"] - w) / settings.batch_size) for s in shards for w in range(0, s["rows"], settings.shuffle_rows)
    )
    return per_epoch * settings.epochs


def learning_rate(step: int, total: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = min(1.0, (step - settings.warmup_steps) / max(1, total - settings.warmup_steps))
    return settings.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def batch_loss(model: torch.nn.Module, batch: TopKBatch, settings: TrainSettings) -> dict[str, torch.Tensor]:
    """The training loss of one batch, with the output layer applied chunk by chunk inside the loss."""
    rows, columns, targets = scored_positions(batch, settings.positions)
    hidden = position_hidden(model, batch.input_ids, batch.attention_mask, rows, columns)
    head = model.get_output_embeddings()
    return chunked_distillation_loss(
        hidden, head.weight, head.bias, targets, batch.topk_ids, batch.topk_logprobs, settings.loss_spec(), settings.chunk_positions, batch.counts
    )


def train_student(cache_dir: Path, tokenizer_path: Path | None, model_config: dict[str, Any], settings: TrainSettings, out_dir: Path) -> list[dict[str, float]]:
    """Train a student on the cache's train split, save it (with the tokenizer) to out_dir; returns the step log.

    tokenizer_path None means the tokenizer shipped in the cache.
    """
    settings.validate()
    manifest = read_manifest(cache_dir)
    tokenizer_path = student_tokenizer_path(cache_dir, tokenizer_path)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    check_compatibility(manifest, tokenizer, tokenizer_path)
    sampled = manifest_encoding(manifest)["storage"] == "sampled"
    if sampled and settings.loss != "forward_kl":
        raise PipelineError(f"{cache_dir} is a sampled cache: it supports student.loss forward_kl only (its unbiased estimator), not '{settings.loss}'")
    if sampled and settings.tail != "bucket":
        raise PipelineError(f"{cache_dir} is a sampled cache: it has no top-k tail to treat, so student.tail '{settings.tail}' does not apply (leave it at bucket)")
    for shard in split_shards(cache_dir, manifest, "train"):  # a damaged shard stops the run now, not hours in
        open_shard(shard)
    model = build_student(model_config, manifest["tokenizer"]["vocab_size"], settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    total = estimated_steps(manifest, "train", settings)
    log: list[dict[str, float]] = []
    step, started, tokens = 0, time.perf_counter(), 0
    model.train()
    with tqdm(total=total, unit="step", desc=f"student {settings.loss} a={settings.alpha}") as progress:
        for epoch in range(settings.epochs):
            for batch in stream_batches(cache_dir, "train", settings.batch_size, seed=settings.seed + epoch, shuffle_rows=settings.shuffle_rows):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(step, total, settings)
                terms = batch_loss(model, batch, settings)
                optimizer.zero_grad(set_to_none=True)
                terms["loss"].backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                tokens += batch.num_tokens
                log.append({"step": step, "epoch": epoch, **{name: value.item() for name, value in terms.items()}})
                step += 1
                progress.update(1)
                progress.set_postfix(loss=f"{log[-1]['loss']:.3f}", tok_per_s=f"{tokens / (time.perf_counter() - started):.0f}")
    save_checkpoint(model.eval(), tokenizer, out_dir)
    print(f"student: {count_parameters(model) / 1e6:.2f}M parameters, {step} steps, {tokens} tokens, saved to {out_dir}")
    return log


def write_loss_log(log: list[dict[str, float]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(log[0]))
        writer.writeheader()
        writer.writerows(log)


def read_loss_log(path: Path) -> list[dict[str, float]]:
    with open(path) as f:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]
