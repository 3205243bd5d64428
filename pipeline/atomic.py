"""Writes that are whole or absent: every file and folder the pipeline publishes goes through here.

A file or folder is written under a temporary name beside its target (`.<name>.tmp-<pid>`, so
concurrent writers never share one) and renamed into place once complete. A crash therefore
leaves at most a temporary, which the next writer of that path clears (`remove_temp_files`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.storage import is_remote

TEMP_MARK = ".tmp-"


def temp_path(path: Path) -> Path:
    """Where `path` is written before its rename; the pid keeps concurrent writers apart."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


DISK_FULL_MESSAGES = ("No space left on device", "os error 28")  # how native writers (safetensors, tokenizers) report ENOSPC


def is_disk_full(error: BaseException) -> bool:
    """Whether an error, or one it was raised from, is a full disk.

    Python writes raise OSError ENOSPC; torch.save wraps it in a RuntimeError ("unexpected pos");
    safetensors and tokenizers raise their own types with the system's message.
    """
    seen: BaseException | None = error
    while seen is not None:
        if (isinstance(seen, OSError) and seen.errno == errno.ENOSPC) or any(text in str(seen) for text in DISK_FULL_MESSAGES):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def write_error(path: Path, error: BaseException) -> PipelineError:
    """One line for a failed write; a full disk says so, since the fix is space, not a rerun."""
    if is_disk_full(error):
        return PipelineError(f"disk full while writing {path}; free space and rerun to resume")
    return PipelineError(f"cannot write {path}: {getattr(error, 'strerror', None) or error}")


def is_write_failure(error: BaseException) -> bool:
    """An error a write raised because of the file system (not a bug, not a PipelineError): said in one line."""
    return not isinstance(error, PipelineError) and (isinstance(error, OSError) or is_disk_full(error))


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary name beside `path` (its folder created); when the body succeeds, fsync it and rename it into place.

    A file at `path` is therefore always whole; a failed write leaves nothing and says why in one line.
    On an object store the body writes `path` itself: an object PUT is atomic already.
    """
    if is_remote(path):
        try:
            yield path
        except Exception as error:
            if is_write_failure(error):
                raise write_error(path, error) from error
            raise
        return
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as error:
        if is_write_failure(error):
            raise write_error(path, error) from error
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path` for the body to create a folder at; on success it becomes `path`.

    replace: `path` has one writer (a checkpoint being rewritten): an existing `path` is replaced, and
    temporaries that killed earlier writers of it left are removed first. Without it an existing `path`
    wins and the new copy is dropped (parallel workers shipping the same tokenizer).
    """
    path = Path(path)
    tmp = temp_path(path)
    if replace:
        remove_temp_files(path.parent, [path.name])
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if replace:
            shutil.rmtree(path, ignore_errors=True)
        try:
            os.replace(tmp, path)
        except OSError:
            if replace or not path.is_dir():
                raise
    except Exception as error:
        if is_write_failure(error):
            raise write_error(path, error) from error
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: Path, value: Any) -> None:
    """Indented UTF-8 JSON, written atomically (the parent folder is created)."""
    path = path if is_remote(path) else Path(path)
    write_bytes(path, (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode())


def remove_temp_files(folder: Path, files: Sequence[str] | None = None) -> None:
    """Delete what killed writers of these files left behind; only the files' owner may call this.

    files None: every temporary file or folder below `folder`, for a caller that owns all of it.
    An object store has none: its files are written directly. Each folder is listed once, so the
    cost is linear in the files (a cache of 300k shards is one listing per split).
    """
    if is_remote(folder):
        return
    folder = Path(folder)
    if files is None:
        leftovers = list(folder.rglob(f".*{TEMP_MARK}*"))
    else:
        wanted: dict[Path, set[str]] = {}
        for file in files:
            wanted.setdefault((folder / file).parent, set()).add(Path(file).name)
        leftovers = [
            entry
            for parent, names in wanted.items()
            if parent.is_dir()
            for entry in parent.iterdir()
            if entry.name.startswith(".") and TEMP_MARK in entry.name and entry.name[1:].rsplit(TEMP_MARK, 1)[0] in names
        ]
    for leftover in leftovers:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
