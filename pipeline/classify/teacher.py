"""The classify teacher stage: label every text zero-shot with the teacher, write a soft-label cache.

Same cache machinery as the top-k path (plan.json first, shards renamed into place, manifest
last, tokenizer shipped, resume by skipping finished shards, disjoint shards per worker); only
the task ("classify_soft_labels") and the shard schema differ.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
from tqdm import tqdm

from pipeline.backends.base import BackendName, TeacherBackend
from pipeline.backends.registry import load_backend
from pipeline.backends.verbalizer_scoring import normalise
from pipeline.cache.format import CLASSIFY_TASK, tokenizer_record
from pipeline.cache.manifest import Manifest, ShardEntry
from pipeline.cache.plan import ShardSpec
from pipeline.cache.ray_runner import RaySettings, check_ray_run, fill_cache_on_ray, gpus_per_actor
from pipeline.cache.reader import Cache
from pipeline.cache.soft_labels import SOFT_LABEL_SCHEMA, SOFT_LABELS, mass_summary
from pipeline.cache.writer import CacheJob, claim_cache_folder, fill_cache, write_shard
from pipeline.classify.prompt import ClassifyPrompt, render_prompt, verbalizer_ids
from pipeline.errors import PipelineError
from pipeline.hashing import sha256_rows
from pipeline.settings import Positive
from pipeline.storage import location

log = logging.getLogger(__name__)

LOW_MASS = 0.1  # mean verbalizer mass below this: the teacher mostly says something else, the prompt does not work


class ClassifyTeacherSettings(ClassifyPrompt):
    """The `classify.teacher` section: the prompt (ClassifyPrompt's fields) and how the teacher runs."""

    backend: BackendName = "transformers"
    dtype: str = "float32"  # the backend checks it (transformers: float32, bfloat16, float16; vLLM also its own names)
    device: str = "cpu"
    batch_size: Positive = 16
    shard_rows: Positive = 128
    runner: Literal["local", "ray"] = "local"  # local: this process (and --num-workers/--worker-index); ray: a pool of Ray actors (docs/ray.md)
    ray: RaySettings = RaySettings()

    @property
    def prompt(self) -> ClassifyPrompt:
        return ClassifyPrompt(**self.model_dump(include=set(ClassifyPrompt.model_fields)))


def soft_label_table(rows: pl.DataFrame, text_ids: list[list[int]], raw: np.ndarray) -> pa.Table:
    normalised, mass = normalise(raw)
    float_lists = pa.list_(pa.float32())
    return pa.Table.from_arrays(
        [
            pa.array(rows["id"].to_list(), pa.string()),
            pa.array(text_ids, pa.list_(pa.int32())),
            pa.array(rows["label"].to_list(), pa.int32()),
            pa.array(normalised.astype(np.float32).tolist(), float_lists),
            pa.array(raw.astype(np.float32).tolist(), float_lists),
            pa.array(mass.astype(np.float32), pa.float32()),
        ],
        schema=SOFT_LABEL_SCHEMA,
    )


def check_ids_across_splits(data: dict[str, pl.DataFrame]) -> None:
    """Refuse an id in two splits: the cache keys rows by id, and a text in both train and test is leakage."""
    seen: dict[str, str] = {}
    for split, frame in data.items():
        for row_id in frame["id"].to_list():
            if row_id in seen:
                raise PipelineError(f"id '{row_id}' is in both the {seen[row_id]} and the {split} data (the same text, or the same id column value); ids must be unique across splits")
            seen[row_id] = split


def run_classify_teacher(
    data: dict[str, pl.DataFrame],
    teacher: dict[str, Any],
    out_dir: Path,
    settings: ClassifyTeacherSettings,
    worker_index: int = 0,
    num_workers: int = 1,
    backend: TeacherBackend | None = None,
    overwrite: bool = False,
    data_files: Sequence[Path] = (),
) -> Manifest | None:
    """Fill this worker's shards (runner local) or all of them on Ray; returns the manifest once every shard exists.

    `data` maps split names to read_labelled frames; `teacher` is {name, path, weights_sha256}.
    Every check runs before the directory is created; `overwrite` replaces what `out_dir` holds (never
    the teacher or `data_files`, the files `data` was read from).
    """
    check_ids_across_splits(data)
    out_dir = location(out_dir)
    claim_cache_folder(out_dir, [Path(teacher["path"]), *data_files], overwrite, num_workers)
    make_job = partial(classify_teacher_job, data, teacher, out_dir, settings)
    if settings.runner == "ray":
        check_ray_run(worker_index, num_workers, backend)
        manifest = fill_cache_on_ray(out_dir, make_job, settings.ray, gpus_per_actor(settings.device), replace=overwrite)
    else:
        job = make_job(backend)
        manifest = fill_cache(out_dir, job.plan, job.shards, job.fill, job.save_tokenizer, worker_index, num_workers, replace=overwrite)
    if manifest is not None:
        report_mass(mass_summary(Cache(out_dir, manifest)))
    return manifest


def classify_teacher_job(data: dict[str, pl.DataFrame], teacher: dict[str, Any], out_dir: Path, settings: ClassifyTeacherSettings, backend: TeacherBackend | None = None) -> CacheJob:
    """Load the backend (unless given), check the prompts fit and make the plan: what a classify teacher process needs to write shards."""
    prompt = settings.prompt
    backend = backend or load_backend(settings.backend, Path(teacher["path"]), settings.dtype, settings.batch_size, settings.device, len(prompt.labels))
    tokenizer = backend.tokenizer
    verbalizers = verbalizer_ids(tokenizer, prompt)
    longest = max(len(render_prompt(tokenizer, prompt, text)) for frame in data.values() for text in frame["text"]) + max(map(len, verbalizers))
    if longest > backend.max_length:
        raise PipelineError(f"a prompt with its verbalizer is {longest} tokens, over the teacher's limit of {backend.max_length}")
    plan = {
        "task": CLASSIFY_TASK,
        "teacher": {**teacher, "backend": settings.backend, "dtype": settings.dtype},
        "tokenizer": tokenizer_record(tokenizer, backend.vocab_size, prompt.chat_template),
        "classify": {**prompt.model_dump(), "label_names": prompt.label_names, "verbalizer_ids": verbalizers},
        "logprobs": "raw log-softmax of the teacher at temperature 1; sequence log-prob = sum over verbalizer tokens",
        "source": {
            "sha256": sha256_rows(row for frame in data.values() for row in frame.iter_rows(named=True)),
            "rows": {name: frame.height for name, frame in data.items()},
        },
        "batch_size": settings.batch_size,
        "shard_rows": settings.shard_rows,
    }
    fill = partial(_fill_shards, backend, data, out_dir=out_dir, settings=settings, verbalizers=verbalizers)
    return CacheJob(plan, fill, tokenizer.save_pretrained)


def _fill_shards(backend: TeacherBackend, data: dict[str, pl.DataFrame], shards: list[ShardSpec], out_dir: Path, settings: ClassifyTeacherSettings, verbalizers: list[list[int]]) -> list[ShardEntry]:
    tokenizer, prompt, started, texts = backend.tokenizer, settings.prompt, time.perf_counter(), 0
    written: list[ShardEntry] = []
    with tqdm(total=sum(s.stop - s.start for s in shards), unit="text", desc="classify teacher") as progress:
        for shard in shards:
            rows = data[shard.split].slice(shard.start, shard.stop - shard.start)
            raw = []
            for start in range(0, rows.height, settings.batch_size):
                chunk = rows["text"][start : start + settings.batch_size].to_list()
                raw.append(backend.verbalizer_logprobs([render_prompt(tokenizer, prompt, t) for t in chunk], verbalizers))
                texts += len(chunk)
                progress.update(len(chunk))
                progress.set_postfix(text_per_s=f"{texts / (time.perf_counter() - started):.1f}")
            text_ids = [list(tokenizer.encode(t, add_special_tokens=False)) for t in rows["text"]]
            written.append(write_shard(soft_label_table(rows, text_ids, np.concatenate(raw)), out_dir, shard, SOFT_LABELS))
    return written


def report_mass(mass: dict[str, float]) -> None:
    """Say so when the teacher puts little probability on the verbalizers: the prompt does not work."""
    log.info("classify teacher: verbalizer mass mean %.3f, p10 %.3f, min %.3f", mass["mean"], mass["p10"], mass["min"])
    if mass["mean"] < LOW_MASS:
        log.warning(
            "classify teacher: the teacher puts only %.1f%% of its probability on the verbalizers on average; the prompt or the verbalizers do not fit this teacher (see docs/classification.md)",
            100 * mass["mean"],
        )
