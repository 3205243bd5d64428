"""The repository's own dvc.yaml, run on a tiny teacher inside a temporary git repository."""

import re
import sys

import pytest
import yaml
from conftest import run

ALL_STAGES = {"teacher_model", "prepare", "teacher", "student@distilled", "student@ce_only", "evaluate"}

pytestmark = pytest.mark.slow


def repro(cwd):
    return set(re.findall(r"Running stage '([^']+)'", run([sys.executable, "-m", "dvc", "repro"], cwd)))


def test_repro_runs_everything_then_nothing_then_only_the_student_side(project):
    assert repro(project) == ALL_STAGES
    metrics = yaml.safe_load((project / "reports" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"teacher", "distilled", "ce_only"}
    assert (project / "reports" / "training.png").stat().st_size > 0

    assert repro(project) == set()

    shard = project / "data" / "cache" / "train" / "shard-00000.parquet"
    written = shard.stat().st_mtime_ns
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["student"]["lr"] = 0.001
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert repro(project) == {"student@distilled", "student@ce_only", "evaluate"}
    assert shard.stat().st_mtime_ns == written
