"""Student training throughput: is the cache ever what the accelerator waits for?

Three measurements in one process on the same student and the same steps, interleaved per repeat
so that machine noise falls on all alike (median over repeats):

  (a) kd     the training step as `kd student` runs it: batches streamed from the cache and decoded
             ahead in a thread, the chunked distillation loss, backward, clip, AdamW;
  (b) ce     the same model and steps trained with plain cross-entropy at the same positions, on
             the same token ids already in memory (no cache reading, full logits);
  (c) reader the cache alone: shards read and decoded into batches, one thread, no training.

Target: (a) >= 0.9 x (b) in positions per second, and (c) >= 10 x what (a) consumes.
With --peak-tflops the model FLOPs utilisation of (a) and (b) is printed too, counted as
6 x (body parameters x input tokens + head parameters x scored positions) + 6 x layers x hidden x
sum of squared sequence lengths (causal attention, forward and backward).

    python -m bench.student_throughput --params bench/params/student_throughput.yaml --cache data/cache
    # on a GPU (bf16, a ~1B student):
    python -m bench.student_throughput --params bench/params/student_throughput-1b.yaml --cache data/cache --peak-tflops 989
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.cache import Cache
from pipeline.errors import run_main
from pipeline.lm.batch import DistillationStep, TopKBatch
from pipeline.lm.parallel import Processes, autocast, resolve_device
from pipeline.lm.step_plan import StepPlan
from pipeline.lm.streaming import stream_batches
from pipeline.lm.student import build_student, position_logits
from pipeline.lm.student_settings import StudentSettings
from pipeline.lm.trainer import accumulated_step
from pipeline.models import count_parameters
from pipeline.settings import read_section
from pipeline.train_loop import backward_terms, train_loop


def step_flops(model: torch.nn.Module, group: list[TopKBatch]) -> float:
    """Model FLOPs of one training step (forward and backward) over these batches."""
    config = model.config
    head = config.vocab_size * config.hidden_size
    body = count_parameters(model) - head * (1 if config.tie_word_embeddings else 2)
    flops = 0.0
    for batch in group:
        lengths = batch.attention_mask.sum(1).double()
        flops += 6 * (body * lengths.sum().item() + head * batch.num_tokens) + 6 * config.num_hidden_layers * config.hidden_size * (lengths**2).sum().item()
    return flops


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh(settings: StudentSettings, vocab_size: int, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = build_student(settings.model, vocab_size, settings.seed).to(device)
    return model, torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)


def timed_kd(cache: Cache, settings: StudentSettings, processes: Processes, steps: int) -> float:
    """Seconds for `steps` training steps fed from the cache (the stream starts cold, as in a run)."""
    student, _ = fresh(settings, cache.vocab_size, processes.device)
    model = DistillationStep(student, settings.training_objective())
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    stream = StepPlan(cache, settings, processes).steps(0)
    synchronise(processes.device)
    started = time.perf_counter()
    train_loop(model, optimizer, itertools.islice(stream, steps), lambda group: accumulated_step(model, group, settings, processes), total_steps=steps, peak_lr=settings.lr, show_progress=False)
    synchronise(processes.device)
    elapsed = time.perf_counter() - started
    stream.close()
    return elapsed


def timed_ce(groups: list[list[TopKBatch]], settings: StudentSettings, vocab_size: int, device: torch.device) -> float:
    """Seconds for the same steps with plain cross-entropy on batches already in memory (and on the device)."""
    model, optimizer = fresh(settings, vocab_size, device)

    def ce_step(group: list[TopKBatch]) -> dict[str, float]:
        totals: dict[str, float] = {"loss": 0.0}
        positions = sum(batch.num_tokens for batch in group)
        for batch in group:
            with autocast(device, settings.precision):
                logits = position_logits(model, batch.input_ids, batch.attention_mask, batch.rows, batch.columns)
            loss = F.cross_entropy(logits.float(), batch.targets, reduction="sum") / positions
            totals["loss"] += backward_terms({"loss": loss})["loss"]
        return totals

    synchronise(device)
    started = time.perf_counter()
    train_loop(model, optimizer, ((0, group) for group in groups), ce_step, total_steps=len(groups), peak_lr=settings.lr, show_progress=False)
    synchronise(device)
    return time.perf_counter() - started


def timed_reader(cache: Cache, settings: StudentSettings, batches: int) -> tuple[float, int]:
    """Seconds and positions to decode `batches` batches from the shards, one thread."""
    started, positions = time.perf_counter(), 0
    for i, batch in enumerate(stream_batches(cache, "train", settings.batch_size, settings.seed, settings.shuffle_rows)):
        positions += batch.num_tokens
        if i + 1 == batches:
            break
    return time.perf_counter() - started, positions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("bench/params/student_throughput.yaml"))
    parser.add_argument("--cache", type=Path, default=Path("data/cache"))
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak at the training precision, for MFU")
    args = parser.parse_args()

    settings = read_section(args.params, "student", StudentSettings)
    cache = Cache.open(args.cache)
    device = resolve_device(settings.device)
    processes = Processes(0, 1, device)
    plan = StepPlan(cache, settings, processes)
    if args.steps > plan.total:
        raise SystemExit(f"--steps {args.steps}: the cache gives {plan.total} steps at these settings (student.epochs)")
    groups = [[batch.to(device) for batch in group] for _, group in itertools.islice(plan.steps(0), args.steps)]
    positions = sum(batch.num_tokens for group in groups for batch in group)
    micro_batches = sum(map(len, groups))
    flops = step_flops(build_student(settings.model, cache.vocab_size, 0), [batch for group in groups for batch in group])
    timed_kd(cache, settings, processes, 2)  # warm-up: kernels, allocator, page cache
    times: dict[str, list[float]] = {"kd": [], "ce": [], "reader": []}
    for _ in range(args.repeats):
        times["kd"].append(timed_kd(cache, settings, processes, args.steps))
        times["ce"].append(timed_ce(groups, settings, cache.vocab_size, device))
        seconds, read = timed_reader(cache, settings, micro_batches)
        times["reader"].append(seconds * positions / read)
    rate = {name: positions / statistics.median(values) for name, values in times.items()}
    model = build_student(settings.model, cache.vocab_size, 0)
    print(
        f"student {count_parameters(model) / 1e6:.1f}M parameters on {device} ({settings.precision}), {args.steps} steps x {micro_batches // args.steps} micro-batches of {settings.batch_size}, {positions} positions; median of {args.repeats}"
    )
    print(f"{'':8} {'positions/s':>12} {'MFU':>7}")
    for name in ("kd", "ce", "reader"):
        mfu = f"{flops / statistics.median(times[name]) / (args.peak_tflops * 1e12):.1%}" if args.peak_tflops and name != "reader" else "-"
        print(f"{name:8} {rate[name]:12.0f} {mfu:>7}")
    print(f"kd / ce = {rate['kd'] / rate['ce']:.3f} (target >= 0.9); reader / kd = {rate['reader'] / rate['kd']:.1f} (target >= 10)")


if __name__ == "__main__":
    run_main(main)
