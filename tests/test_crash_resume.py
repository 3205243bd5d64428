"""The teacher stage as real processes: killed with SIGKILL at random points, or run as parallel workers."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import cache_rows

from pipeline.cache import MANIFEST_FILE, PLAN_FILE, read_manifest
from pipeline.cache.verify import verify_cache
from pipeline.data import SPLITS
from pipeline.lm.teacher import TeacherSettings, run_teacher
from pipeline.teacher_model import resolve_teacher

REPO = Path(__file__).resolve().parents[1]
TEACHER = {"k": 8, "batch_size": 2, "shard_rows": 2, "generation": {"max_new_tokens": 6, "temperature": 1.0, "top_p": 1.0, "seed": 0}}
KILLS = 5

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def params(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump({"teacher": TEACHER}))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_teacher, prepared) -> Path:
    """An uninterrupted single-process run with the same settings."""
    out = tmp_path_factory.mktemp("reference") / "cache"
    assert run_teacher(prepared, resolve_teacher(str(tiny_teacher), tiny_teacher), out, TeacherSettings.from_section(TEACHER, "teacher")) is not None
    return out


def start_teacher(tiny_teacher, prepared, out, params, *extra) -> subprocess.Popen:
    """`kd teacher` in its own process; its output goes to a log file beside `out`."""
    args = [sys.executable, "-m", "pipeline.cli", "teacher", "--model", tiny_teacher, "--prepared", prepared, "--out", out, "--params", params, *extra]
    log = open(out.parent / f"{out.name}-{'-'.join(map(str, extra)) or 'teacher'}.log", "w")
    return subprocess.Popen([str(a) for a in args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def finished_shards(out: Path) -> int:
    """Shards renamed into place so far; only the split folders are listed, since the writer's
    temporary folders (the tokenizer's) can vanish between a listing and a look inside."""
    return sum(len(list((out / split).glob("shard-*.parquet"))) for split in SPLITS)


def kill_after(process: subprocess.Popen, out: Path, shards: int, delay: float) -> bool:
    """SIGKILL once `shards` shards exist (0: once the plan exists) plus `delay` s.

    False if it finished first: exited, or wrote the manifest and was only shutting down when killed.
    """
    while process.poll() is None and not ((out / PLAN_FILE).exists() and finished_shards(out) >= shards):
        time.sleep(0.005)
    time.sleep(delay)
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    process.wait()
    return not (out / MANIFEST_FILE).exists()


def assert_same_cache(out: Path, reference: Path) -> None:
    rows, expected = cache_rows(out), cache_rows(reference)
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), "duplicate ids"
    assert sorted(ids) == sorted(row["id"] for row in expected), "missing or extra ids"
    assert rows == expected, "values differ"
    assert read_manifest(out) == read_manifest(reference)
    assert [p for p in out.rglob("*") if ".tmp-" in p.name] == []
    assert verify_cache(out) == []


def test_sigkill_at_random_points_then_resume(tmp_path, tiny_teacher, prepared, params, reference):
    total = sum(len(split["shards"]) for split in read_manifest(reference)["splits"].values())
    rng = random.Random(20260507)
    points = rng.sample(range(total - 1), KILLS) + rng.sample(range(total // 2), KILLS)  # the second half: retries
    teacher = resolve_teacher(str(tiny_teacher), tiny_teacher)
    kills = []
    for trial, shards in enumerate(points):
        if len(kills) == KILLS:
            break
        out = tmp_path / f"trial-{trial}"
        if not kill_after(start_teacher(tiny_teacher, prepared, out, params), out, shards, rng.uniform(0, 0.15)):
            continue
        kills.append(finished_shards(out))
        assert run_teacher(prepared, teacher, out, TeacherSettings.from_section(TEACHER, "teacher")) is not None
        assert_same_cache(out, reference)
    assert len(kills) == KILLS, f"only {len(kills)} runs were killed before they finished"
    print(f"killed after {kills} of {total} shards")


def test_two_worker_processes_equal_one_run(tmp_path, tiny_teacher, prepared, params, reference):
    out = tmp_path / "cache"
    workers = [start_teacher(tiny_teacher, prepared, out, params, "--num-workers", 2, "--worker-index", i) for i in range(2)]
    for worker in workers:
        assert worker.wait(timeout=300) == 0, [log.read_text()[-2000:] for log in tmp_path.glob("*.log")]
    assert_same_cache(out, reference)
