"""Output paths: a command replaces only what it made, and says so before any work.

Every folder a command publishes carries what it is: a marker file (`.kd-output.json`, naming the
kind) or, for a cache, its own `plan.json` / `manifest.json`. Before the first step, `claim_folder`
and `claim_file` check each output path a command will write, and refuse with one line:

- a path that is the working directory or a folder above it, or that is, holds or lies inside one of
  the command's inputs (never overridable: replacing it would destroy what the run reads);
- a file where a folder is written, or a folder where a file is written;
- an existing folder that holds something other than this kind of output, or an existing file that
  is not one this kind of command writes, unless the user passes `--overwrite`;
- a path that cannot be created (a parent is a file, or is not writable).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline import __version__
from pipeline.errors import PipelineError
from pipeline.storage import is_remote, location

MARKER_FILE = ".kd-output.json"
OVERWRITE_FLAG = "--overwrite"


@dataclass(frozen=True)
class FolderKind:
    """A kind of output folder: its marker name, and files that mark it too (a cache's plan and manifest)."""

    name: str  # in messages: "a student folder"
    files: tuple[str, ...] = ()

    def marks(self, folder: Path) -> bool:
        """Whether `folder` already is an output of this kind."""
        return marker_kind(folder) == self.name or any((folder / name).exists() for name in self.files)


@dataclass(frozen=True)
class FileKind:
    """A kind of output file, recognised by its content (a metrics JSON, a loss-log CSV)."""

    name: str
    recognise: Callable[[Path], bool] | None = None  # None: any existing file is the user's


def marker_kind(folder: Path) -> str | None:
    """The kind a folder's marker names, or None (no marker, or not one of ours)."""
    path = folder / MARKER_FILE
    try:
        marker = json.loads(path.read_text()) if path.exists() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return marker.get("kind") if isinstance(marker, dict) and marker.get("written_by") == "kd-pipeline" else None


def write_marker(folder: Path, kind: FolderKind) -> None:
    """Mark a folder being written (inside its temporary name) as an output of `kind`."""
    (folder / MARKER_FILE).write_text(json.dumps({"kind": kind.name, "written_by": "kd-pipeline", "version": __version__}) + "\n")


def claim_folder(path: Path, kind: FolderKind, option: str = "--out", inputs: Sequence[Path | None] = (), overwrite: bool = False) -> bool:
    """Refuse, before any work, a folder output that would destroy something.

    A missing or empty folder, or one that already is this kind of output, is fine. `inputs` are the
    command's inputs (a cache, a tokenizer, a teacher): the output may not be, hold or lie inside one.
    Returns True when the folder holds something else and `overwrite` lets the command replace it
    (the caller clears it before writing).
    """
    path = location(path)
    _check_place(path, option, inputs)
    if not path.exists():
        return False
    if not path.is_dir():
        raise PipelineError(f"{option} {path} is a file; it must be a folder (or not exist yet)")
    entries = sorted(entry.name for entry in path.iterdir())
    if not entries or kind.marks(path):
        return False
    if not overwrite:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        count = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
        raise PipelineError(f"{option} {path} already holds files that are not a {kind.name} ({count}: {shown}); choose another folder, or pass {OVERWRITE_FLAG} to replace it")
    return True


def claim_file(path: Path, kind: FileKind, option: str = "--out", inputs: Sequence[Path | None] = (), overwrite: bool = False) -> None:
    """Refuse, before any work, a file output that is a folder, cannot be created, or would replace a file of another kind."""
    path = Path(path)
    _check_place(path, option, inputs)
    if path.is_dir():
        raise PipelineError(f"{option} {path} is a folder; it must be a file name")
    if path.exists() and not overwrite and (kind.recognise is None or not kind.recognise(path)):
        what = "" if kind.recognise is None else f" and is not a {kind.name}"
        raise PipelineError(f"{option} {path} exists{what}; choose another file name, or pass {OVERWRITE_FLAG} to replace it")


def _check_place(path: Path, option: str, inputs: Sequence[Path | None]) -> None:
    """The checks every output shares: not the working directory or above it, clear of the inputs, creatable."""
    for given in inputs:
        if given is not None:
            _check_clear_of_input(path, location(given), option)
    if is_remote(path):
        return
    resolved, cwd = Path(path).resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise PipelineError(f"{option} {path} is the working directory or a folder above it; give a folder of its own")
    parent = resolved.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise PipelineError(f"cannot create {option} {path}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PipelineError(f"cannot create {option} {path}: {parent} is not writable")


def _check_clear_of_input(path: Path, given: Path, option: str) -> None:
    if is_remote(path) or is_remote(given):
        out, inp = str(path).rstrip("/"), str(given).rstrip("/")
        inside, holds = out.startswith(inp + "/"), inp.startswith(out + "/")
    else:
        out_path, inp_path = Path(path).resolve(), Path(given).resolve()
        out, inp = str(out_path), str(inp_path)
        inside, holds = inp_path in out_path.parents, out_path in inp_path.parents
    if out == inp:
        raise PipelineError(f"{option} {path} is {given}, an input of this command; write the output somewhere else")
    if holds:
        raise PipelineError(f"{option} {path} holds {given}, an input of this command; write the output somewhere else")
    if inside:
        raise PipelineError(f"{option} {path} lies inside {given}, an input of this command; write the output somewhere else")
