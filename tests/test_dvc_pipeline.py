"""The repository's own dvc.yaml, run on a tiny teacher inside a temporary git repository."""

import json
import re
import sys

import pytest
import yaml
from conftest import run

ALL_STAGES = {"teacher_model", "prepare", "teacher", "student_start", "student@distilled", "student@ce_only", "evaluate", "judge"}
STUDENT_SIDE = {"student@distilled", "student@ce_only", "evaluate", "judge"}  # what a student setting reruns (the start depends only on init, prune, model and seed)
CLASSIFY_STUDENTS = {f"classify_student@{arch}-{targets}" for arch in ("bilstm", "bag") for targets in ("soft", "hard")}
ALL_STAGES |= {"classify_teacher", "classify_evaluate"} | CLASSIFY_STUDENTS

pytestmark = pytest.mark.slow


def repro(cwd):
    return set(re.findall(r"Running stage '([^']+)'", run([sys.executable, "-m", "dvc", "repro"], cwd)))


def test_repro_runs_everything_then_nothing_then_only_the_student_side(project):
    assert repro(project) == ALL_STAGES
    metrics = yaml.safe_load((project / "reports" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"teacher", "start", "distilled", "ce_only"}
    assert (project / "reports" / "training.png").stat().st_size > 0
    judged = yaml.safe_load((project / "reports" / "generation.json").read_text())
    assert set(judged["models"]) == {"greedy", "sampled"} and all(set(m) == {"start", "distilled", "ce_only", "teacher"} for m in judged["models"].values())
    assert judged["prompts"]["judged"] == 3 and judged["comparisons"]["greedy"][0]["model"] == "distilled"
    assert (project / "reports" / "generation.md").read_text().count("**ce_only**, sampled") == 3
    report = run([sys.executable, "-m", "pipeline.cli", "report"], project)
    assert "greedy decoding: 3 held-out prompts" in report and "answers to the first 2 held-out prompts" in report

    assert repro(project) == set()

    shard = project / "data" / "cache" / "train" / "shard-00000.parquet"
    written = shard.stat().st_mtime_ns
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["student"]["lr"] = 0.002  # params.yaml has 0.001
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert repro(project) == STUDENT_SIDE
    assert shard.stat().st_mtime_ns == written

    classify_metrics = yaml.safe_load((project / "reports" / "classify_metrics.json").read_text())
    assert classify_metrics["headline"] == "imdb" and set(classify_metrics["splits"]) == {"imdb", "in_domain", "generated"}  # every test set of params.yaml
    assert {name: split["gold_labels"] for name, split in classify_metrics["splits"].items()} == {"imdb": 20, "in_domain": 10, "generated": 10}
    for split in classify_metrics["splits"].values():
        fitted = [name for name in split["models"] if name.startswith("teacher T=")]  # the teacher at the fitted label temperature
        assert len(fitted) == 1 and set(split["models"]) - set(fitted) == {"teacher", "bilstm-soft", "bilstm-hard", "bag-soft", "bag-hard"}
        assert 0 < split["vocabulary_coverage"] <= 1
    assert (project / "reports" / "classify_reliability.png").stat().st_size > 0
    classify_shard = project / "data" / "classify-cache" / "train" / "shard-00000.parquet"
    written = classify_shard.stat().st_mtime_ns
    params["classify"]["student"]["lr"] = 0.001
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert repro(project) == CLASSIFY_STUDENTS | {"classify_evaluate"}
    assert classify_shard.stat().st_mtime_ns == written

    # Edited code reruns the stages that run it, and only those (dvc.yaml lists code folders as deps).
    assert changed_by_edit(project, "pipeline/lm/losses.py") == STUDENT_SIDE | {"student_start"}
    assert changed_by_edit(project, "pipeline/lm/generation.py") == STUDENT_SIDE | {"student_start"}  # pipeline/lm is one dep
    assert changed_by_edit(project, "pipeline/classify/trainer.py") == CLASSIFY_STUDENTS | {"classify_evaluate"}
    assert changed_by_edit(project, "pipeline/cache/reader.py") >= {"teacher", "student@distilled", "classify_teacher", "classify_evaluate"}

    # An experiment the DVC way: `dvc exp run -S` on the cached teacher output reruns the student side only.
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "baseline"], project)
    output = run([sys.executable, "-m", "dvc", "exp", "run", "-S", "student.alpha=0.5", "--name", "alpha-half"], project)
    assert set(re.findall(r"Running stage '([^']+)'", output)) == STUDENT_SIDE
    shown = _json_tail(run([sys.executable, "-m", "dvc", "exp", "show", "--json"], project))
    experiments = [e for baseline in shown for e in (baseline.get("experiments") or [])]
    names = {run_["name"] for e in experiments for run_ in e.get("revs", [])}
    assert "alpha-half" in names


def _json_tail(output: str):
    """The JSON document in a command's output (DVC may print notices before it)."""
    start = min(i for i in (output.find("["), output.find("{")) if i >= 0)
    return json.JSONDecoder().raw_decode(output[start:])[0]


def changed_by_edit(project, file: str) -> set[str]:
    """The stages `dvc status` reports changed after appending a comment to `file` (the edit is undone after)."""
    path = project / file
    original = path.read_text()
    path.write_text(original + "\n# edited\n")
    try:
        output = run([sys.executable, "-m", "dvc", "status", "--json"], project)
        status, _ = json.JSONDecoder().raw_decode(output[output.index("{") :])
    finally:
        path.write_text(original)
    return set(status)
