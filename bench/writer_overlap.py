"""Does writing shards slow the teacher? The teacher stage with its background writer, against writing inline and the teacher alone.

Runs the teacher stage (`run_teacher`, the params file's teacher settings) on the first `--rows`
prepared prompts three ways, alternating `--repeats` times: the teacher alone (shards encoded and
written nowhere), writing inline after each shard (as before the background writer), and the
shipped background writer. Prints the seconds of each and their ratios to the teacher alone.

A CPU teacher is far slower than its writer, so it cannot show what a GPU teacher loses. With
`--simulate-tps T` the same three ways run again with a stand-in for a GPU teacher: the real
teacher's outputs of the first run, handed back after sleeping as long as T tokens/s would take (a
GPU kernel leaves the CPU free, as sleeping does), so the writer's real encoding competes with it.
Then, for each `--zstd` level, the writer's own seconds per shard, its positions per second, and
bytes per cached token.

    python -m bench.writer_overlap --model models/smollm2-135m-instruct --prepared data/prepared --params params.yaml --rows 48 --shard-rows 4 --simulate-tps 10000 --zstd 19 3

Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

import pipeline.lm.teacher as teacher_stage
from bench import provenance
from pipeline.cache import read_manifest
from pipeline.data import SPLITS, write_splits
from pipeline.errors import run_main
from pipeline.lm.teacher import TeacherSettings, run_teacher
from pipeline.settings import read_section
from pipeline.teacher_model import resolve_teacher


class InlineWriter:
    """Writes each shard at once, in the caller: the teacher waits for it."""

    def __init__(self, depth: int = 1) -> None:
        self.results: list = []

    def submit(self, write) -> None:
        self.results.append(write())

    def __enter__(self) -> InlineWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@contextmanager
def mode(name: str, writes: list[float]) -> Iterator[None]:
    """Patch the teacher stage for one way of writing; `writes` collects the seconds of each shard's encode and write."""
    writer, write = teacher_stage.BackgroundWriter, teacher_stage._write_outputs

    def timed_write(*args):
        started = time.perf_counter()
        entry = write(*args)
        writes.append(time.perf_counter() - started)
        return entry

    teacher_stage._write_outputs = (lambda *args: None) if name == "alone" else timed_write
    if name == "inline":
        teacher_stage.BackgroundWriter = InlineWriter
    try:
        yield
    finally:
        teacher_stage.BackgroundWriter, teacher_stage._write_outputs = writer, write


@contextmanager
def teacher_outputs(recorded: dict[int, list], simulate_tps: float | None) -> Iterator[None]:
    """Record the real teacher's outputs by chunk seed; with `simulate_tps`, hand them back after sleeping for their tokens instead."""
    real = teacher_stage._teacher_outputs

    def recording(backend, encoded, scoring, settings, seed):
        recorded[seed] = real(backend, encoded, scoring, settings, seed)
        return recorded[seed]

    def replaying(backend, encoded, scoring, settings, seed):
        outputs = recorded[seed]
        time.sleep(sum(len(o.input_ids) for o in outputs) / simulate_tps)
        return outputs

    teacher_stage._teacher_outputs = recording if simulate_tps is None else replaying
    try:
        yield
    finally:
        teacher_stage._teacher_outputs = real


def run(name: str, prepared: Path, teacher: dict, settings: TeacherSettings, work: Path, recorded: dict[int, list], simulate_tps: float | None = None) -> tuple[float, list[float], Path]:
    """(seconds of the shard loop, per-shard write seconds, the cache folder) of one teacher run."""
    out = work / f"{name}-{time.perf_counter_ns()}"
    spent: list[float] = []
    writes: list[float] = []
    fill = teacher_stage._fill_shards

    def timed_fill(*args, **kwargs):
        started = time.perf_counter()
        written = fill(*args, **kwargs)
        spent.append(time.perf_counter() - started)
        return written

    teacher_stage._fill_shards = timed_fill
    try:
        with mode(name, writes), teacher_outputs(recorded, simulate_tps):
            run_teacher(prepared, teacher, out, settings)  # alone: no shard is written, so no manifest either
    finally:
        teacher_stage._fill_shards = fill
    return sum(spent), writes, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/smollm2-135m-instruct"))
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--shard-rows", type=int, default=16, help="sequences per shard (several shards, so the writer has something to overlap)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--zstd", type=int, nargs="+", default=[19, 3], help="zstd levels whose writer cost and size are measured")
    parser.add_argument("--simulate-tps", type=float, default=None, help="also time a stand-in GPU teacher at this many tokens/s (the real outputs replayed)")
    args = parser.parse_args()
    print(provenance())
    base = read_section(args.params, "teacher", TeacherSettings).updated("teacher", shard_rows=args.shard_rows)
    teacher = resolve_teacher(str(args.model), args.model)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        train = pl.read_parquet(args.prepared / "train.parquet").head(args.rows)
        write_splits({SPLITS[0]: train, SPLITS[1]: train.clear()}, work / "prepared")
        recorded: dict[int, list] = {}
        tokens = 0
        for label, tps in (("teacher", None), (f"stand-in teacher at {args.simulate_tps:,.0f} tok/s", args.simulate_tps)):
            if label != "teacher" and tps is None:
                continue
            seconds: dict[str, list[float]] = {"alone": [], "inline": [], "background": []}
            for _ in range(args.repeats):
                for name in seconds:
                    spent, _, out = run(name, work / "prepared", teacher, base, work, recorded, tps)
                    seconds[name].append(spent)
                    if name != "alone":
                        tokens = sum(s["tokens"] for s in read_manifest(out)["splits"].values())
            alone = statistics.median(seconds["alone"])
            print(f"{label} {args.model}, {args.rows} prompts in shards of {args.shard_rows}, {tokens:,} cached tokens; params {args.params}; {args.repeats} repeats (medians)")
            for name, values in seconds.items():
                spent = statistics.median(values)
                print(f"  {name:<11} {spent:7.2f} s  ({', '.join(f'{v:.2f}' for v in values)})   ratio to the teacher alone {alone / spent:.3f}")
        for level in args.zstd:
            settings = base.updated("teacher", cache={"zstd_level": level})
            _, writes, out = run("inline", work / "prepared", teacher, settings, work, recorded, args.simulate_tps or 1e9)
            manifest = read_manifest(out)
            size = sum(s["bytes"] for s in manifest["splits"].values())
            positions = sum(s["tokens"] for s in manifest["splits"].values())
            print(
                f"zstd {level:>2}: writer {statistics.mean(writes):.4f} s per shard ({sum(writes):.2f} s in all, {positions / sum(writes):,.0f} cached positions/s), {size / max(1, positions):.2f} bytes per cached token"
            )


if __name__ == "__main__":
    run_main(main)
