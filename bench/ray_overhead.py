"""What the Ray runner costs against the local runner: the same teacher on the same prompts, in one run.

Runs the teacher stage on one prepared prompt set with the local runner (this process) and the Ray
runner (the actors of the params file's `teacher.ray`, on a local Ray cluster started here on
loopback with 4 logical CPUs), alternating `--repeats` times. From each cache's shard files (their modification times) and the
manifest's tokens per shard it prints, side by side, the start-up seconds (from the call to the first
shard, less that shard's steady-state time: model load, and for Ray the actor start) and the cached
tokens per second after start-up, with the ratios; the cluster's own start (ray.init) is printed apart.
It also checks the two caches are byte-identical.

    python -m bench.ray_overhead --params bench/params/ray_overhead.yaml --model models/smollm2-135m-instruct --rows 24

Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.cache import read_manifest
from pipeline.data import DataSettings, read_prompts, split_prompts, write_splits
from pipeline.errors import PipelineError, run_main
from pipeline.lm.teacher import TeacherSettings, run_teacher
from pipeline.settings import read_section
from pipeline.teacher_model import EMBEDDED_DIR, resolve_teacher

log = logging.getLogger(__name__)


def shard_timeline(cache: Path, started: float) -> dict[str, float]:
    """Start-up seconds and tokens/s after start-up, from when each shard file was written."""
    manifest = read_manifest(cache)
    shards = sorted(((cache / e["file"]).stat().st_mtime, e["tokens"]) for split in manifest["splits"].values() for e in split["shards"])
    if len(shards) < 3:
        raise PipelineError(f"{cache}: {len(shards)} shards; the bench needs at least 3 (lower teacher.shard_rows or raise --rows)")
    rate = sum(tokens for _, tokens in shards[1:]) / (shards[-1][0] - shards[0][0])
    first_done, first_tokens = shards[0]
    return {"startup_s": first_done - started - first_tokens / rate, "tokens_per_s": rate, "total_s": shards[-1][0] - started}


def timed_run(prepared: Path, teacher: dict[str, Any], out: Path, settings: TeacherSettings) -> dict[str, float]:
    started = time.time()
    run_teacher(prepared, teacher, out, settings)
    return shard_timeline(out, started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("bench/params/ray_overhead.yaml"))
    parser.add_argument("--model", type=Path, default=None, help="teacher folder [default: teacher.model of --params]")
    parser.add_argument("--rows", type=int, default=24, help="prompts used (the first N of data.prompts)")
    parser.add_argument("--repeats", type=int, default=2, help="local and Ray runs alternate this many times (a shared machine's load moves between runs)")
    args = parser.parse_args()
    import ray

    data = read_section(args.params, "data", DataSettings)
    settings = read_section(args.params, "teacher", TeacherSettings)
    teacher = resolve_teacher(str(args.model) if args.model else settings.model, EMBEDDED_DIR)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cluster_started = time.time()
    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
    cluster_s = time.time() - cluster_started
    pairs, identical = [], True
    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared"
        write_splits(split_prompts(read_prompts(data.prompts, data.text_column).head(args.rows), data.validation_fraction, data.seed), prepared)
        for repeat in range(args.repeats):
            local_dir, ray_dir = Path(folder) / f"local-{repeat}", Path(folder) / f"ray-{repeat}"
            local = timed_run(prepared, teacher, local_dir, settings)
            on_ray = timed_run(prepared, teacher, ray_dir, settings.model_copy(update={"runner": "ray"}))
            pairs.append((local, on_ray))
            manifest = read_manifest(local_dir)
            files = [e["file"] for split in manifest["splits"].values() for e in split["shards"]]
            identical &= all((local_dir / f).read_bytes() == (ray_dir / f).read_bytes() for f in files)
    ray.shutdown()
    shards = sum(len(s["shards"]) for s in manifest["splits"].values())
    tokens = sum(s["tokens"] for s in manifest["splits"].values())
    print(f"{args.rows} prompts, {shards} shards, {tokens} cached tokens; Ray: {settings.ray.actors or 'auto'} actor(s), {settings.ray.cpus_per_actor} CPU each; caches byte-identical: {identical}")
    print(f"{'':28}" + "".join(f"{f'local {i + 1}':>10}{f'ray {i + 1}':>10}{'ray/local':>11}" for i in range(len(pairs))) + f"{'median ratio':>14}")
    for label, key, digits in (("start-up s", "startup_s", 1), ("tokens/s after start-up", "tokens_per_s", 1), ("whole run s", "total_s", 1)):
        ratios = [on_ray[key] / local[key] for local, on_ray in pairs]
        cells = "".join(f"{local[key]:10.{digits}f}{on_ray[key]:10.{digits}f}{ratio:11.2f}" for (local, on_ray), ratio in zip(pairs, ratios))
        print(f"{label:28}{cells}{statistics.median(ratios):14.2f}")
    print(f"Ray cluster start (ray.init, once, before the runs; not in the figures above): {cluster_s:.1f} s")


if __name__ == "__main__":
    run_main(main)
