"""Cost of each distillation loss against plain CE: training step time and peak tensor memory.

One batch from a real cache, the student from params.yaml, every loss on the same batch in one
process. A step is what the training loop does: zero the gradients, forward, backward, clip, AdamW.
Time: median and minimum over repeats, the variants interleaved within each repeat so that load
from other processes falls on all of them alike (on a shared machine the minimum is the least
disturbed measurement). Memory: the peak of tensor bytes allocated during one step after zero_grad
and still alive (bench.memory): activations, logits, gradients, temporaries; the model and the
optimizer state (created by a warm-up step) are not counted.

    python -m bench.loss_cost --cache data/cache --batch-size 8
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from bench.memory import peak_tensor_bytes
from pipeline.cache import Cache
from pipeline.errors import run_main
from pipeline.lm.batch import TopKBatch
from pipeline.lm.losses import DIVERGENCES, TAILS, distillation_loss
from pipeline.lm.streaming import stream_batches
from pipeline.lm.student import build_student, position_logits
from pipeline.lm.student_settings import StudentSettings

Loss = Callable[[torch.nn.Module, TopKBatch], torch.Tensor]


def variants(settings: StudentSettings) -> dict[str, Loss]:
    """Plain CE first (the baseline), the full-logit autograd loss, then the chunked losses used in training
    (at the params.yaml settings except where the name says otherwise)."""

    def logits(model: torch.nn.Module, batch: TopKBatch) -> torch.Tensor:
        return position_logits(model, batch.input_ids, batch.attention_mask, batch.rows, batch.columns)

    table: dict[str, Loss] = {
        "ce, plain (full logits)": lambda model, batch: F.cross_entropy(logits(model, batch), batch.targets),
        "forward_kl bucket, full logits": lambda model, batch: distillation_loss(logits(model, batch), batch.targets, batch.listed_ids, batch.listed_logprobs, settings)["loss"],
        "ce, chunked (alpha 0)": lambda model, batch: batch.loss(model, settings.updated("student", alpha=0.0).training_objective())["loss"],
    }
    choices = {f"{divergence} {tail}": settings.updated("student", loss=divergence, tail=tail) for divergence in DIVERGENCES for tail in TAILS}
    choices["forward_kl bucket, T = 2"] = settings.updated("student", loss="forward_kl", tail="bucket", temperature=2.0)
    for name, chosen in choices.items():
        table[name] = lambda model, batch, chosen=chosen: batch.loss(model, chosen.training_objective())["loss"]
    return table


def update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: Loss, batch: TopKBatch) -> None:
    """A training step after zero_grad: forward, backward, clip, AdamW."""
    loss(model, batch).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: Loss, batch: TopKBatch) -> None:
    optimizer.zero_grad(set_to_none=True)
    update(model, optimizer, loss, batch)


def measure(cache: Path, params: Path, batch_size: int, repeats: int) -> list[tuple[str, float, float, int]]:
    """(variant, median and minimum step seconds, peak tensor bytes) for every variant on the first training batch."""
    settings = StudentSettings.from_section(yaml.safe_load(params.read_text())["student"], "student")
    opened = Cache.open(cache)
    batch = next(iter(stream_batches(opened, "train", batch_size)))
    model = build_student(settings.model, opened.vocab_size, settings.seed).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    losses = variants(settings)
    peaks = {}
    for name, loss in losses.items():
        training_step(model, optimizer, loss, batch)
        optimizer.zero_grad(set_to_none=True)
        peaks[name] = peak_tensor_bytes(lambda loss=loss: update(model, optimizer, loss, batch))
    times: dict[str, list[float]] = {name: [] for name in losses}
    for _ in range(repeats):
        for name, loss in losses.items():
            started = time.perf_counter()
            training_step(model, optimizer, loss, batch)
            times[name].append(time.perf_counter() - started)
    print(
        f"batch: {batch_size} sequences, {batch.num_tokens} cached positions, vocabulary {model.config.vocab_size}, chunk_positions {settings.chunk_positions}, {repeats} repeats, {torch.get_num_threads()} threads"
    )
    return [(name, statistics.median(times[name]), min(times[name]), peaks[name]) for name in losses]


def format_rows(rows: list[tuple[str, float, float, int]]) -> str:
    _, base_median, base_min, base_peak = rows[0]
    header = f"{'loss':<34}{'median ms':>10}{'x CE':>7}{'min ms':>8}{'x CE':>7}{'peak MB':>9}{'x CE':>7}"
    lines = [header, "-" * len(header)]
    for name, median, least, peak in rows:
        lines.append(f"{name:<34}{median * 1e3:>10.0f}{median / base_median:>7.2f}{least * 1e3:>8.0f}{least / base_min:>7.2f}{peak / 1e6:>9.0f}{peak / base_peak:>7.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=Path("data/cache"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(format_rows(measure(args.cache, args.params, args.batch_size, args.repeats)))


if __name__ == "__main__":
    run_main(main)
