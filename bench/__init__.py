"""Benchmarks: measurements of the product on this machine, not tests."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path


def provenance() -> str:
    """One line naming the commit, date and machine a bench ran on, printed above its table."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    date = datetime.date.today().isoformat()
    return f"commit {commit}{' (with uncommitted changes)' if dirty else ''}, {date}, {cores} CPU cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}"
