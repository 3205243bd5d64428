"""dvc.yaml against the code: every project file a stage runs is among that stage's deps.

Edited code must rerun the stages that run it, or `dvc repro` reports "up to date" on outputs made
by old code. The imports of each stage module are followed statically (lazy imports inside
functions included) through `pipeline` and `stages`; the files reached must lie under a dep.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("pipeline", "stages")


def module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imported_names(path: Path) -> set[str]:
    """Every module name an import statement in `path` may load (`from a import b` may load a.b)."""
    package = list(path.relative_to(REPO).with_suffix("").parts)
    if path.name == "__init__.py":
        package = package[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join((package[: len(package) - node.level + 1] if node.level else []) + ([node.module] if node.module else []))
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return names


def files_run_by(module: str) -> set[str]:
    """Project files loaded when `module` runs: the module, its packages' __init__ files, and what they import, transitively."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        parts = todo.pop().split(".")
        if parts[0] not in PROJECT_PACKAGES:
            continue
        for depth in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:depth]))
            if path is not None and path not in seen:
                seen.add(path)
                todo += imported_names(path)
    return {path.relative_to(REPO).as_posix() for path in seen}


def stages() -> dict[str, tuple[str, list[str]]]:
    """Stage name -> (module its cmd runs, its deps); foreach stages once, with their template."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in spec.items():
        stage = stage.get("do", stage)
        module = re.fullmatch(r"python -m (\S+)(?: .*)?", stage["cmd"]).group(1)
        out[name] = (module, [str(dep) for dep in stage.get("deps", [])])
    return out


@pytest.mark.parametrize("stage", sorted(stages()))
def test_every_file_a_stage_runs_is_one_of_its_deps(stage):
    module, deps = stages()[stage]
    covered = [dep.rstrip("/") for dep in deps]
    missing = sorted(file for file in files_run_by(module) if not any(file == dep or file.startswith(dep + "/") for dep in covered))
    assert not missing, f"stage {stage} runs {missing}, which dvc.yaml does not list among its deps"


@pytest.mark.parametrize("stage, task", [("teacher", "lm"), ("classify_teacher", "classify")])
def test_teacher_stages_do_not_depend_on_student_code_or_the_other_task(stage, task):
    """The expensive teachers rerun for teacher code only, not when a loss, a classifier or the other task changes."""
    other = "classify" if task == "lm" else "lm"
    _, deps = stages()[stage]
    student_code = tuple(f"pipeline/{task}/{module}.py" for module in ("trainer", "student", "student_settings", "step_plan", "validation", "batch", "evaluate", "metrics"))
    assert not any(dep in ("pipeline", f"pipeline/{task}") or dep.startswith((f"pipeline/{other}", *student_code)) for dep in deps)
    assert not any(file.startswith((f"pipeline/{other}/", *student_code)) for file in files_run_by(f"stages.{stage}"))


def stage_outputs() -> set[str]:
    """Every path a stage of dvc.lock writes: a dep under one of them comes from an earlier stage, not from the branch."""
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    return {out["path"].rstrip("/") for stage in lock.values() for out in stage.get("outs", [])}


def test_dvc_lock_records_the_code_and_params_on_the_branch():
    """A stale dvc.lock makes a fresh clone's `dvc repro` rerun stages the lock says are current.

    DVC itself compares the lock with the working tree (`dvc status`, which lists a changed params section
    among the changed deps too); only inputs that live on the branch count (code, params, the prompts), not
    the outputs of earlier stages, which a fresh clone lacks.
    """
    import json
    import subprocess
    import sys

    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=REPO, capture_output=True, text=True, check=True)
    made_by_stages = stage_outputs()
    stale = []
    for stage, changes in json.loads(status.stdout or "{}").items():
        for change in changes if isinstance(changes, list) else []:
            if not isinstance(change, dict):
                continue
            for path, state in change.get("changed deps", {}).items():
                if not any(path == out or path.startswith(out + "/") for out in made_by_stages):
                    stale.append(f"{stage}: {path} {state}")
    assert not stale, "dvc.lock does not match the branch (run `dvc repro` and commit dvc.lock): " + "; ".join(stale)
