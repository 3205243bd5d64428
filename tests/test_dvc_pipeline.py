"""The repository's own dvc.yaml, run on a tiny teacher inside a temporary git repository."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ALL_STAGES = {"teacher_model", "prepare", "teacher", "student@distilled", "student@ce_only", "evaluate"}

pytestmark = pytest.mark.slow


def run(args, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def repro(cwd):
    return set(re.findall(r"Running stage '([^']+)'", run([sys.executable, "-m", "dvc", "repro"], cwd)))


@pytest.fixture
def project(tmp_path, tiny_teacher, small_prompts):
    root = tmp_path / "project"
    root.mkdir()
    for name in ("dvc.yaml", "stages", "pipeline"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    (root / "data").mkdir()
    shutil.copy(small_prompts, root / "data" / "prompts.jsonl")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["teacher"].update(model=str(tiny_teacher), k=8, batch_size=4, shard_rows=5)
    params["teacher"]["generation"]["max_new_tokens"] = 8
    params["student"].update(epochs=2, batch_size=4)
    params["student"]["model"] = {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 128}
    params["evaluate"]["speed_sequences"] = 4
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    run(["git", "init", "-q"], root)
    run([sys.executable, "-m", "dvc", "init", "-q"], root)
    return root


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
