"""Where a cache lives: a local folder, or an object-store URL (`s3://bucket/prefix`, and other fsspec stores).

A local path stays a `pathlib.Path` and takes the code paths it always took. A URL becomes a
`upath.UPath` (universal_pathlib over fsspec), which has the same methods (`/`, `exists`,
`read_text`, `write_bytes`, `open`, `stat`), so the cache code reads and writes both through one
interface. Credentials and the endpoint come from the store's usual settings (for S3 the AWS
environment variables: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...)
or fsspec's own configuration (FSSPEC_S3_* variables, ~/.config/fsspec); nothing is hard-coded.
An object PUT is atomic, so remote files are written directly, never under a temporary name.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any

from pipeline.errors import PipelineError

URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
LOCAL_PROTOCOLS = ("", "file", "local")


def location(value: str | Path) -> Path:
    """A cache directory given by the user: a URL becomes a UPath, anything else a local Path."""
    if is_remote(value):
        return value  # type: ignore[return-value]  # already a UPath
    text = str(value)
    if not URL.match(text):
        return Path(text)
    try:
        from upath import UPath
    except ImportError as error:
        raise PipelineError(f"{text}: caches on object storage need universal_pathlib and the store's fsspec package: pip install 'kd-pipeline[s3]'") from error
    try:
        path = UPath(text, use_listings_cache=False)  # workers write beside us: never trust a listed directory from before
        path.fs  # noqa: B018  # the protocol's fsspec package is imported here, so a missing one is one line now
    except (ImportError, ValueError) as error:
        raise PipelineError(f"{text}: {str(error).splitlines()[0]} (for s3:// install 'kd-pipeline[s3]')") from error
    return path


def is_remote(path: Any) -> bool:
    """True for a UPath on an object store (anything but the local file system)."""
    return getattr(path, "protocol", "") not in LOCAL_PROTOCOLS


def open_for_reading(path: Path) -> IO[bytes] | Path:
    """What pyarrow reads: the local path itself, or an open fsspec file (ranged reads from the store)."""
    return path.open("rb") if is_remote(path) else path


def remove_tree(path: Path) -> None:
    """Delete a folder and everything under it, if it exists."""
    if is_remote(path):
        try:
            path.fs.rm(path.path, recursive=True)
        except FileNotFoundError:
            pass
    else:
        shutil.rmtree(path, ignore_errors=True)


def upload_folder(local: Path, remote: Path) -> None:
    """Copy a local folder's files to a remote folder (one PUT per file)."""
    for file in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        (remote / file.relative_to(local).as_posix()).write_bytes(file.read_bytes())


def local_folder(path: Path) -> Path:
    """A local folder with the contents of `path`: itself when local, else a download removed when the process exits.

    For small folders that libraries read by local path (a cache's tokenizer); a remote folder that does
    not exist gives a local path that does not exist either.
    """
    if not is_remote(path):
        return path
    target = Path(tempfile.mkdtemp(prefix="kd-download-")) / path.name
    atexit.register(shutil.rmtree, target.parent, True)
    if path.exists():
        for file in path.fs.find(path.path):
            relative = file[len(path.path) :].lstrip("/")
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            (target / relative).write_bytes(path.fs.cat_file(file))
    return target


def same_location(first: Path, second: Path) -> bool:
    if is_remote(first) or is_remote(second):
        return str(first).rstrip("/") == str(second).rstrip("/")
    return Path(first).resolve() == Path(second).resolve()
