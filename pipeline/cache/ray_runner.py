"""The Ray runner: a pool of Ray actors fills the shards of a plan, the driver writes the manifest.

Ray Core actors, not Ray Data: the unit of work is one writer call per shard (the task's own `fill`,
the one the local runner calls), and that is one actor method call. An actor loads the backend
once and takes shards as they come (`ActorPool.map_unordered`); a dead actor is restarted by Ray
and its shard retried (`max_restarts`, `max_task_retries`). The driver runs `fill_cache` as the
local runner does (plan first, tokenizer, manifest last), so a rerun after the driver dies skips
the shards that exist. The driver's finalize reads every shard back, as `kd finalize` does: the
entries the actors record as they write stay in the actors (a retried shard may have been written
twice, by an actor Ray took for dead). Ray Data would need a dataset of shard specs, `map_batches`
at batch size 1 and a sink it does not write (the shards are written by the task's writer): more
machinery for the same mapping. Ray is imported only here, and only when the runner is used (extra `[ray]`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import Field

from pipeline.atomic import temp_path
from pipeline.cache.manifest import Manifest, ShardEntry
from pipeline.cache.plan import ShardSpec, planned_shards
from pipeline.cache.writer import CacheJob, fill_cache
from pipeline.errors import PipelineError
from pipeline.settings import Positive, Settings
from pipeline.storage import is_remote

log = logging.getLogger(__name__)

FAULT_FILE_ENV = "KD_RAY_FAULT_FILE"  # test hook: the first actor that takes this file dies in the middle of its shard


class RaySettings(Settings):
    """`teacher.ray` / `classify.teacher.ray`: where the cluster is and how actors are sized."""

    address: str | None = None  # None: $RAY_ADDRESS, else a cluster started on this machine, else a new local one
    actors: Positive | None = None  # None: as many as the cluster holds (its GPUs on cuda, its CPUs on cpu), at most one per shard
    cpus_per_actor: Positive = 1
    max_restarts: int = Field(3, ge=0)  # times Ray restarts a dead actor and retries its shard before the run fails


def gpus_per_actor(device: str, tensor_parallel_size: int = 1) -> int:
    """GPUs one actor reserves: none on CPU, else one per GPU the engine spans."""
    return 0 if device == "cpu" else tensor_parallel_size


def check_ray_run(worker_index: int, num_workers: int, backend: Any) -> None:
    """Ray schedules the shards itself: the manual worker split and a loaded backend do not apply."""
    if num_workers != 1 or worker_index != 0:
        raise PipelineError("--num-workers/--worker-index split the shards by hand (Slurm arrays); the Ray runner schedules them itself, use one or the other")
    if backend is not None:
        raise PipelineError("the Ray runner loads the backend in its actors; a backend loaded in the driver cannot be used")


def import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise PipelineError("the Ray runner needs Ray: pip install 'kd-pipeline[ray]'") from error
    return ray


class ShardWriter:
    """A Ray actor: builds the job (loads the backend) once, on first use, then writes the shards it is given."""

    def __init__(self, make_job: Callable[[], CacheJob], out_dir: str) -> None:
        self._make_job = make_job
        self._out_dir = out_dir
        self._job: CacheJob | None = None

    def _loaded(self) -> CacheJob:
        if self._job is None:
            self._job = self._make_job()
        return self._job

    def plan(self) -> tuple[dict[str, Any], dict[str, bytes] | None]:
        """The plan and the tokenizer's files, for the driver to write."""
        job = self._loaded()
        if job.save_tokenizer is None:
            return job.plan, None
        with tempfile.TemporaryDirectory() as folder:
            job.save_tokenizer(Path(folder))
            files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}
        return job.plan, files

    def write(self, shard: ShardSpec) -> str:
        job = self._loaded()
        _die_if_asked(self._out_dir, shard)
        job.fill([shard])
        return shard.file


def _die_if_asked(out_dir: str, shard: ShardSpec) -> None:
    """Test hook: exit in the middle of a shard, leaving a partial temporary file, as a killed writer does."""
    fault_file = os.environ.get(FAULT_FILE_ENV)
    if not fault_file:
        return
    try:
        os.rename(fault_file, fault_file + ".taken")  # atomic: exactly one actor takes it
    except FileNotFoundError:
        return
    if "://" not in out_dir:
        partial_file = temp_path(Path(out_dir) / shard.file)
        partial_file.parent.mkdir(parents=True, exist_ok=True)
        partial_file.write_bytes(b"PAR1 half a shard")
    os._exit(1)


def save_files(files: dict[str, bytes], folder: Path) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def fill_cache_on_ray(out_dir: Path, make_job: Callable[[], CacheJob], settings: RaySettings, gpus: int, replace: bool = False) -> Manifest:
    """Fill `out_dir` with a pool of Ray actors; returns the manifest (every shard is written before it returns).

    `replace` clears `out_dir` once the first actor has made the plan (and so passed the request's checks).
    """
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=settings.address, logging_level=logging.WARNING)
    if gpus and not is_remote(out_dir):
        log.warning("ray: the cache %s is a local path: on several machines it must be a shared file system (or use an s3:// URL)", out_dir)
    options = {"num_cpus": settings.cpus_per_actor, "num_gpus": gpus, "max_restarts": settings.max_restarts, "max_task_retries": settings.max_restarts}
    writer_class = ray.remote(ShardWriter).options(**options)
    job_ref = ray.put(make_job)
    actors = [writer_class.remote(job_ref, str(out_dir))]
    try:
        plan, tokenizer_files = _result(ray, actors[0].plan.remote())
        shards = planned_shards(plan)
        count = min(settings.actors or _actors_that_fit(ray, settings, gpus), len(shards))
        actors += [writer_class.remote(job_ref, str(out_dir)) for _ in range(count - 1)]
        log.info("ray: %d actor(s) (%d CPU, %d GPU each) for %d shard(s)", len(actors), settings.cpus_per_actor, gpus, len(shards))
        save_tokenizer = partial(save_files, tokenizer_files) if tokenizer_files is not None else None
        manifest = fill_cache(out_dir, plan, shards, partial(_fill_on_actors, ray, actors), save_tokenizer, replace=replace)
    finally:
        for actor in actors:
            ray.kill(actor)
    if manifest is None:  # fill_cache returns None only when shards are missing, which _fill_on_actors does not allow
        raise PipelineError(f"{out_dir} is not complete after the Ray run")
    return manifest


def _actors_that_fit(ray: Any, settings: RaySettings, gpus: int) -> int:
    resources = ray.cluster_resources()
    if gpus:
        fit = int(resources.get("GPU", 0) // gpus)
        if fit < 1:
            raise PipelineError(f"the Ray cluster has {resources.get('GPU', 0):g} GPU(s); an actor needs {gpus} (device cpu runs CPU actors)")
        return fit
    return max(1, int(resources.get("CPU", 1) // settings.cpus_per_actor))


def _fill_on_actors(ray: Any, actors: list[Any], shards: list[ShardSpec]) -> list[ShardEntry]:
    """Hand each shard to the next free actor; Ray restarts a dead actor and retries its shard.

    Returns no entries: the driver wrote no shard, so finalize reads them all.
    """
    from ray.util import ActorPool

    pool = ActorPool(actors)
    done = 0
    try:
        for file in pool.map_unordered(lambda actor, shard: actor.write.remote(shard), shards):
            done += 1
            log.info("ray: %s written (%d/%d)", file, done, len(shards))
    except ray.exceptions.RayError as error:
        raise _pipeline_error(error) from None
    return []


def _result(ray: Any, ref: Any) -> Any:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as error:
        raise _pipeline_error(error) from None


def _pipeline_error(error: Exception) -> PipelineError:
    """A task's own PipelineError as its one line; anything else (an actor dead past its restarts) summarised."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, PipelineError):
        return PipelineError(str(cause))
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return PipelineError(f"the Ray run failed: {type(error).__name__}: {first}")
