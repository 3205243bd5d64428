"""Output paths: a command replaces only what it made, and says so before any work.

Every folder a command publishes carries what it is: a marker file (`.kd-output.json`, naming the
kind), or content only that kind has (a cache's manifest or plan). Before the first step,
`claim_folder` and `claim_file` check each output path a command will write, and refuse with one line:

- a path that is the working directory or a folder above it, or that is, holds or lies inside one of
  the command's inputs (never overridable: replacing it would destroy what the run reads), or one of
  its other outputs that it deletes (a training state folder);
- a symbolic link, a file where a folder is written, or a folder where a file is written;
- an existing folder that holds something other than this kind of output, or an existing file that
  is not one this kind of command writes, unless the user passes `--overwrite` (and the kind allows it);
- a path that cannot be created (a parent is a file, or is not writable).

The checks delete nothing: a command that may replace a folder clears it only once its own checks
have passed, right before it writes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic import TEMP_MARK
from pipeline.errors import PipelineError
from pipeline.storage import is_remote, location, same_location

MARKER_FILE = ".kd-output.json"
OVERWRITE_FLAG = "--overwrite"


@dataclass(frozen=True)
class FolderKind:
    """A kind of output folder: its marker names it, or `recognise` accepts it (content only this kind has,
    or what an earlier version wrote before markers). `overridable` False: `--overwrite` does not lift a refusal.
    """

    name: str  # in messages: "a student folder"
    recognise: Callable[[Path], bool] | None = None
    overridable: bool = True

    def marks(self, folder: Path) -> bool:
        """Whether `folder` already is an output of this kind."""
        return marker_kind(folder) == self.name or (self.recognise is not None and self.recognise(folder))


def holds_only(folder: Path, names: Sequence[str], temporaries_only: bool = False) -> bool:
    """Whether every entry of `folder` is one of `names` or a temporary a killed writer of one left (with `temporaries_only`, only those)."""
    for entry in (p.name for p in folder.iterdir()):
        temporary = entry.startswith(".") and TEMP_MARK in entry
        name = entry[1:].rsplit(TEMP_MARK, 1)[0] if temporary else entry
        if name not in names or (temporaries_only and not temporary):
            return False
    return True


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
    """Mark a folder being written (inside its temporary name) as an output of `kind`; the same bytes whatever the version."""
    (folder / MARKER_FILE).write_text(json.dumps({"kind": kind.name, "written_by": "kd-pipeline"}) + "\n")


def claim_folder(path: Path, kind: FolderKind, option: str = "--out", inputs: Sequence[Path | None] = (), overwrite: bool = False, apart_from: Mapping[str, Path | None] | None = None) -> bool:
    """Refuse, before any work, a folder output that would destroy something.

    A missing or empty folder, or one that already is this kind of output, is fine. `inputs` are the
    command's inputs (a cache, a tokenizer, a teacher): the output may not be, hold or lie inside one;
    `apart_from` names other outputs (by option) it must stay clear of. Returns True when the folder
    holds something else and `overwrite` lets the command replace it: the caller clears it once its
    own checks have passed.
    """
    path = location(path)
    _check_place(path, option, inputs, apart_from or {})
    if not path.exists():
        return False
    if not path.is_dir():
        raise PipelineError(f"{option} {path} is a file; it must be a folder (or not exist yet)")
    entries = sorted(entry.name for entry in path.iterdir())
    if not entries or kind.marks(path):
        return False
    if not overwrite or not kind.overridable:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        count = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"
        remedy = f"choose another folder, or pass {OVERWRITE_FLAG} to replace it" if kind.overridable else "give a new or empty folder"
        raise PipelineError(f"{option} {path} already holds files that are not a {kind.name} ({count}: {shown}); {remedy}")
    return True


def claim_file(path: Path, kind: FileKind, option: str = "--out", inputs: Sequence[Path | None] = (), overwrite: bool = False, apart_from: Mapping[str, Path | None] | None = None) -> None:
    """Refuse, before any work, a file output that is a folder, cannot be created, or would replace a file of another kind."""
    path = Path(path)
    _check_place(path, option, inputs, apart_from or {})
    if path.is_dir():
        raise PipelineError(f"{option} {path} is a folder; it must be a file name")
    if path.exists() and not overwrite and (kind.recognise is None or not kind.recognise(path)):
        what = "" if kind.recognise is None else f" and is not a {kind.name}"
        raise PipelineError(f"{option} {path} exists{what}; choose another file name, or pass {OVERWRITE_FLAG} to replace it")


def _check_place(path: Path, option: str, inputs: Sequence[Path | None], apart_from: Mapping[str, Path | None]) -> None:
    """The checks every output shares: clear of the inputs and of the outputs it must not share a place with, not the working directory or above it, no link, creatable."""
    for given in inputs:
        if given is not None:
            _check_clear_of(path, location(given), option, "an input of this command")
    for other_option, other in apart_from.items():
        if other is not None and _inside(location(path), location(other)):
            raise PipelineError(f"{option} {path} lies inside {other_option} {other}, which the command replaces or deletes; keep the two apart")
    if is_remote(path):
        return
    if Path(path).is_symlink():
        raise PipelineError(f"{option} {path} is a symbolic link; give the folder or file it points to ({Path(path).resolve()})")
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


def _check_clear_of(path: Path, given: Path, option: str, what: str) -> None:
    """Refuse `path` when it is `given`, holds it or lies inside it."""
    if same_location(path, given):
        raise PipelineError(f"{option} {path} is {given}, {what}; write the output somewhere else")
    if _inside(given, path):
        raise PipelineError(f"{option} {path} holds {given}, {what}; write the output somewhere else")
    if _inside(path, given):
        raise PipelineError(f"{option} {path} lies inside {given}, {what}; write the output somewhere else")


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` lies below `folder` (local paths resolved; URLs compared as text)."""
    if is_remote(path) or is_remote(folder):
        return str(path).rstrip("/").startswith(str(folder).rstrip("/") + "/")
    return Path(folder).resolve() in Path(path).resolve().parents
