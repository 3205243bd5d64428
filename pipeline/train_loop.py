"""The one training loop both tasks run, its learning-rate schedule, and the per-step loss log.

Each task supplies its steps and a function that runs one (loss and backward); the loop owns the
rest: schedule, zero_grad / clip / step, the log and the progress bar.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from tqdm import tqdm

from pipeline.atomic import atomic_path
from pipeline.outputs import FileKind

B = TypeVar("B")
LossTerms = dict[str, torch.Tensor]  # "loss" (what backward runs on) and any terms to log


def learning_rate(step: int, total: int, peak: float, warmup_steps: int = 0) -> float:
    """Linear warm-up to `peak`, then cosine decay to 10% of it at step `total`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def epoch_steps(epochs: int, epoch_batches: Callable[[int], Iterable[B]]) -> Iterator[tuple[int, B]]:
    """(epoch, batch) pairs over `epochs` passes: the steps of a loop without accumulation or resume."""
    for epoch in range(epochs):
        for batch in epoch_batches(epoch):
            yield epoch, batch


def backward_terms(terms: LossTerms) -> dict[str, float]:
    """Run backward on the loss; the terms as floats for the log."""
    terms["loss"].backward()
    return {name: value.item() for name, value in terms.items()}


def train_loop(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    steps: Iterable[tuple[int, B]],
    run_step: Callable[[B], dict[str, float]],
    *,
    total_steps: int,
    peak_lr: float,
    warmup_steps: int = 0,
    desc: str = "train",
    count_tokens: Callable[[B], int] | None = None,
    log: Sequence[dict[str, float]] = (),
    after_step: Callable[[list[dict[str, float]]], None] | None = None,
    show_progress: bool = True,
) -> list[dict[str, float]]:
    """One optimizer step per item of `steps` (epoch, step input); returns the log (step, epoch, terms).

    `run_step` computes the loss and runs backward (over one batch, or several accumulated ones) and
    returns the terms to log; the loop owns the rest: the learning rate (`learning_rate` over
    `total_steps`), zero_grad, clipping to norm 1, the optimizer step and the progress bar. A resumed
    run passes the `log` so far (the next step is len(log)); `after_step` sees the log after each step.
    With `count_tokens`, the progress bar shows tokens per second.
    """
    rows = list(log)
    started, tokens = time.perf_counter(), 0
    model.train()
    with tqdm(total=total_steps, initial=len(rows), unit="step", desc=desc, disable=not show_progress) as progress:
        for epoch, step_input in steps:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(len(rows), total_steps, peak_lr, warmup_steps)
            optimizer.zero_grad(set_to_none=True)
            terms = run_step(step_input)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            rows.append({"step": len(rows), "epoch": epoch, **terms})
            progress.update(1)
            postfix = {"loss": f"{rows[-1]['loss']:.3f}"}
            if count_tokens is not None:
                tokens += count_tokens(step_input)
                postfix["tok_per_s"] = f"{tokens / (time.perf_counter() - started):.0f}"
            progress.set_postfix(postfix)
            if after_step is not None:
                after_step(rows)
    return rows


def is_loss_log(path: Path) -> bool:
    """Whether a file is a loss log this package wrote: a CSV whose first column is `step`."""
    try:
        with open(path, newline="") as f:
            return next(csv.reader(f), [""])[0] == "step"
    except (OSError, UnicodeDecodeError, csv.Error):
        return False


LOSS_LOG_FILE = FileKind("loss log", is_loss_log)


def write_loss_log(log: list[dict[str, float]], path: Path) -> None:
    """The per-step log as CSV (what DVC plots read), written atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(log[0]))
            writer.writeheader()
            writer.writerows(log)


def read_loss_log(path: Path) -> list[dict[str, float]]:
    with open(path) as f:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]
