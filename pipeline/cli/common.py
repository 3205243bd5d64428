"""What every `kd` command shares: one-line errors, logging, the params file, shared options."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional

import typer

from pipeline.errors import PipelineError, setup_logging
from pipeline.storage import URL

if TYPE_CHECKING:
    from pipeline.cache.manifest import Manifest

# Options that `kd teacher` and `kd classify teacher` share.
TeacherModel = Annotated[Optional[str], typer.Option(help="'embedded' (SmolLM2-135M-Instruct) or an HF model folder [default: teacher.model of --params, else embedded]")]
EmbeddedDir = Annotated[Path, typer.Option(help="where the embedded teacher is converted")]
NumWorkers = Annotated[int, typer.Option(help="processes filling disjoint shards of the same cache")]
WorkerIndex = Annotated[int, typer.Option(help="which of the --num-workers processes this is, from 0")]
UseRay = Annotated[bool, typer.Option("--ray", help="run on a Ray cluster: a pool of actors fills the shards (runner ray; docs/ray.md)")]
RayAddress = Annotated[Optional[str], typer.Option("--address", help="Ray cluster address for --ray [default: ray.address of --params, else $RAY_ADDRESS or a local cluster]")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="replace an output that exists and holds something else (never one of the command's inputs); a cache starts afresh")]
ParamsFile = Annotated[Optional[Path], typer.Option("--params", help="params.yaml whose sections give the settings (options override them)")]


def clean_errors(command: Callable) -> Callable:
    """A PipelineError ends the command with one `error:` line and exit code 1, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        setup_logging()
        try:
            return command(*args, **kwargs)
        except PipelineError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def cache_location(value: Any) -> Path:
    """A cache directory option: a local path, or an object-store URL (s3://bucket/prefix) kept as text.

    The library turns a URL into its storage handle (pipeline.storage.location) inside the command, so a
    missing extra is a one-line error there, not a usage error here; Path() would fold '//'.
    """
    return value if isinstance(value, str) and URL.match(value) else Path(value)


def ray_runner(use_ray: bool, address: Optional[str]) -> dict[str, Any]:
    """Settings overrides for --ray/--address: the runner, and the address in its `ray` block."""
    if address is not None and not use_ray:
        raise PipelineError("--address is the Ray cluster's: give it with --ray")
    return {"runner": "ray" if use_ray else None, "ray": {"address": address} if address is not None else None}


def student_folders(items: list[str]) -> dict[str, Path]:
    """`--student NAME=FOLDER` options as {name: folder}; each folder must exist."""
    students = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not Path(folder).is_dir():
            raise PipelineError(f"--student expects NAME=FOLDER with an existing folder, got '{item}'")
        students[name] = Path(folder)
    return students


def named_files(items: list[str], default_name: str) -> dict[str, Path]:
    """`NAME=FILE` options (a bare FILE is named `default_name`) as {name: file}; a name given twice is an error."""
    files: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        name, path = (name, path) if sep else (default_name, item)
        if name in files:
            raise PipelineError(f"two files are named '{name}' ({files[name]} and {path}); give each NAME=FILE a different name")
        files[name] = Path(path)
    return files


def echo_fill_result(manifest: Optional[Manifest], out: Path, worker_index: int, count: Literal["rows", "tokens"], unit: str) -> None:
    """What a teacher worker leaves behind: a complete cache (`count` summed over splits), or its share of one."""
    if manifest is None:
        typer.echo(f"worker {worker_index} done; other workers' shards are still missing in {out}")
    else:
        typer.echo(f"cache complete: {sum(getattr(split, count) for split in manifest.splits.values())} {unit} in {out}")
