"""The one training loop both tasks run, its learning-rate schedule, and the per-step loss log.

Each task supplies its batches (per epoch) and a function from a batch to loss terms; the loop
owns the rest: schedule, zero_grad / backward / clip / step, the log and the progress bar.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import torch
from tqdm import tqdm

from pipeline.atomic import atomic_path

B = TypeVar("B")
LossTerms = dict[str, torch.Tensor]  # "loss" (what backward runs on) and any terms to log


def learning_rate(step: int, total: int, peak: float, warmup_steps: int = 0) -> float:
    """Linear warm-up to `peak`, then cosine decay to 10% of it at step `total`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def train_loop(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch_batches: Callable[[int], Iterable[B]],
    batch_loss: Callable[[B], LossTerms],
    *,
    epochs: int,
    total_steps: int,
    peak_lr: float,
    warmup_steps: int = 0,
    desc: str = "train",
    count_tokens: Callable[[B], int] | None = None,
) -> list[dict[str, float]]:
    """Run `epochs` passes of `epoch_batches(epoch)`; returns one log row per step (step, epoch, terms).

    Gradients are clipped to norm 1; the learning rate follows `learning_rate` over `total_steps`.
    With `count_tokens`, the progress bar shows tokens per second.
    """
    log: list[dict[str, float]] = []
    started, tokens = time.perf_counter(), 0
    model.train()
    with tqdm(total=total_steps, unit="step", desc=desc) as progress:
        for epoch in range(epochs):
            for batch in epoch_batches(epoch):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(len(log), total_steps, peak_lr, warmup_steps)
                terms = batch_loss(batch)
                optimizer.zero_grad(set_to_none=True)
                terms["loss"].backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                log.append({"step": len(log), "epoch": epoch, **{name: value.item() for name, value in terms.items()}})
                progress.update(1)
                postfix = {"loss": f"{log[-1]['loss']:.3f}"}
                if count_tokens is not None:
                    tokens += count_tokens(batch)
                    postfix["tok_per_s"] = f"{tokens / (time.perf_counter() - started):.0f}"
                progress.set_postfix(postfix)
    return log


def write_loss_log(log: list[dict[str, float]], path: Path) -> None:
    """The per-step log as CSV (what DVC plots read), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(log[0]))
            writer.writeheader()
            writer.writerows(log)


def read_loss_log(path: Path) -> list[dict[str, float]]:
    with open(path) as f:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]
