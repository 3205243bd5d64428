"""What checking every shard's sha256 while streaming costs a student: training steps with and without it, side by side.

Trains the params file's student on a cache for `--steps` optimizer steps, alternately with the
readers' checksum (as shipped) and with it removed (the same bytes read, not hashed), `--repeats`
times, and prints the seconds per step of each and their ratio. It also times the hashing itself
(sha256 over every train shard's bytes) against decoding those shards into batches, and reports the
hashing seconds one training step pays (the shards one epoch reads, over its steps) as a share of a step.

    python -m bench.checksum_cost --cache data/cache --params params.yaml --steps 48 --repeats 3

Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa

import pipeline.cache.reader as reader
import pipeline.lm.trainer as training
from pipeline.cache.reader import Cache
from pipeline.errors import run_main
from pipeline.lm.parallel import training_processes
from pipeline.lm.step_plan import StepPlan
from pipeline.lm.streaming import stream_batches
from pipeline.lm.student_settings import StudentSettings
from pipeline.lm.trainer import train_student
from pipeline.settings import read_section


@contextmanager
def without_checksums() -> Iterator[None]:
    """Readers as if shards were not hashed: the same whole-file read, no sha256."""
    checked = reader.read_shard

    def unchecked(shard: reader.CachedShard):
        reader._check_size(shard)
        return reader._opened(shard, pa.BufferReader(shard.path.read_bytes()))

    reader.read_shard = unchecked
    try:
        yield
    finally:
        reader.read_shard = checked


def timed_steps(cache: Path, settings: StudentSettings, work: Path) -> float:
    """Seconds per optimizer step of one training run (the loop alone: not model set-up, validation or saving)."""
    seconds: list[float] = []
    loop = training.train_loop

    def timed(*args, **kwargs):
        started = time.perf_counter()
        rows = loop(*args, **kwargs)
        seconds.append(time.perf_counter() - started)
        return rows

    training.train_loop = timed
    try:
        train_student(cache, settings, work / "student", overwrite=True)
    finally:
        training.train_loop = loop
    return seconds[0] / settings.max_steps


def hashing_against_decoding(cache: Cache, settings: StudentSettings) -> dict[str, float]:
    """sha256 seconds over the train split's bytes, and seconds to read and decode it into batches."""
    shards = cache.shards("train")
    data = [shard.path.read_bytes() for shard in shards]
    started = time.perf_counter()
    for raw in data:
        hashlib.sha256(raw).hexdigest()
    hashing = time.perf_counter() - started
    started = time.perf_counter()
    with without_checksums():
        batches = sum(1 for _ in stream_batches(cache, "train", settings.batch_size, settings.seed, settings.shuffle_rows))
    decoding = time.perf_counter() - started
    return {"hash_s": hashing, "decode_s": decoding, "bytes": sum(map(len, data)), "batches": batches}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("data/cache"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--steps", type=int, default=48, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="checked and unchecked runs alternate this many times (a shared machine's load moves between runs)")
    args = parser.parse_args()
    settings = read_section(args.params, "student", StudentSettings).updated("student", max_steps=args.steps, eval_every=0, save_every=0)
    cache = Cache.open(args.cache)
    per_step: dict[str, list[float]] = {"checked": [], "unchecked": []}
    with tempfile.TemporaryDirectory() as folder:
        timed_steps(args.cache, settings, Path(folder))  # warm-up, not counted: the first run pays for imports and allocator growth
        for _ in range(args.repeats):
            per_step["checked"].append(timed_steps(args.cache, settings, Path(folder)))
            with without_checksums():
                per_step["unchecked"].append(timed_steps(args.cache, settings, Path(folder)))
    direct = hashing_against_decoding(cache, settings)
    with training_processes("cpu") as processes:
        steps_per_epoch = StepPlan(cache, settings, processes).steps_in(0)
    checked, unchecked = (statistics.median(per_step[mode]) for mode in ("checked", "unchecked"))
    hash_per_step = direct["hash_s"] / steps_per_epoch
    print(
        f"cache {args.cache}: {len(cache.shards('train'))} train shards, {direct['bytes']:,} bytes, {steps_per_epoch} steps per epoch; params {args.params}, {args.steps} steps x {args.repeats} repeats"
    )
    print(
        f"seconds per step     checked {checked:.4f}   unchecked {unchecked:.4f}   ratio {checked / unchecked:.4f}  (medians; each run: {', '.join(f'{c:.4f}/{u:.4f}' for c, u in zip(per_step['checked'], per_step['unchecked']))})"
    )
    print(f"sha256 of the train split {direct['hash_s'] * 1e3:.2f} ms ({direct['bytes'] / max(direct['hash_s'], 1e-9) / 1e6:,.0f} MB/s); reading and decoding it {direct['decode_s'] * 1e3:.1f} ms")
    print(f"hashing per step {hash_per_step * 1e3:.3f} ms = {hash_per_step / checked:.3%} of a step")


if __name__ == "__main__":
    run_main(main)
