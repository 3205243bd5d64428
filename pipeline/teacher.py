"""The teacher stage: tokenise prompts, run a backend shard by shard, write the top-k cache."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from tqdm import tqdm

from pipeline.backends import EngineSettings, GenerationSettings, TeacherBackend, load_backend
from pipeline.cache import TeacherOutput, finalize_cache, open_cache_for_writing, outputs_to_table, pending_shards, plan_shards, worker_shards, write_shard
from pipeline.data import SPLITS, read_split
from pipeline.errors import PipelineError
from pipeline.hashing import sha256_rows, tokenizer_sha256


@dataclass
class TeacherSettings:
    backend: str = "transformers"
    k: int = 20
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: int = 8
    shard_rows: int = 64
    chat_template: bool = True
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)


def encode_prompt(tokenizer: Any, prompt: str, use_chat_template: bool) -> list[int]:
    if use_chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt)["input_ids"]


def encode_conversation(tokenizer: Any, prompt: str, response: str, use_chat_template: bool) -> tuple[list[int], int]:
    """Token ids of prompt + response and where the response starts."""
    prompt_ids = encode_prompt(tokenizer, prompt, use_chat_template)
    if not use_chat_template:
        return prompt_ids + tokenizer(response, add_special_tokens=False)["input_ids"], len(prompt_ids)
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    full = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    if full[: len(prompt_ids)] != prompt_ids:
        raise PipelineError("the chat template renders the prompt differently with and without the response; set teacher.chat_template: false")
    return full, len(prompt_ids)


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
) -> dict[str, Any] | None:
    """Fill this worker's shards of `out_dir`; returns the manifest once every shard exists.

    `teacher` is {name, path, weights_sha256} from resolve_teacher.
    """
    splits = {name: read_split(prepared_dir, name) for name in SPLITS}
    backend = backend or load_backend(settings.backend, Path(teacher["path"]), settings.dtype, settings.batch_size, settings.device, settings.k, settings.engine)
    tokenizer = backend.tokenizer
    use_template = settings.chat_template
    if use_template and not getattr(tokenizer, "chat_template", None):
        raise PipelineError(f"teacher tokenizer at {teacher['path']} has no chat template; set teacher.chat_template: false")
    if settings.generation.max_new_tokens < 1:
        raise PipelineError("generation.max_new_tokens must be at least 1")
    if not 1 <= settings.k <= backend.vocab_size:
        raise PipelineError(f"k={settings.k} must be between 1 and the teacher's vocabulary size {backend.vocab_size}")

    plan = {
        "task": "causal_lm_topk",
        "teacher": {**teacher, "backend": settings.backend, "dtype": settings.dtype},
        "tokenizer": {
            "sha256": tokenizer_sha256(tokenizer),
            "vocab_size": backend.vocab_size,
            "tokenizer_size": len(tokenizer),
            "chat_template": tokenizer.chat_template if use_template else None,
        },
        "k": settings.k,
        "logprobs": "raw log-softmax of the teacher at temperature 1, float32",
        "generation": {**settings.generation.to_dict(), "batch_size": settings.batch_size},
        "source": {
            "sha256": sha256_rows(row for name in SPLITS for row in splits[name].iter_rows(named=True)),
            "rows": {name: frame.height for name, frame in splits.items()},
        },
        "shard_rows": settings.shard_rows,
    }
    shards = plan_shards({name: frame.height for name, frame in splits.items()}, settings.shard_rows)
    if open_cache_for_writing(out_dir, plan):
        todo = pending_shards(out_dir, worker_shards(shards, worker_index, num_workers))
        _fill_shards(backend, splits, todo, out_dir, settings, use_template)
    if pending_shards(out_dir, shards):
        return None
    return finalize_cache(out_dir, shards)


def _fill_shards(backend: TeacherBackend, splits: dict[str, pl.DataFrame], shards: list, out_dir: Path, settings: TeacherSettings, use_template: bool) -> None:
    started, tokens = time.perf_counter(), 0
    with tqdm(total=sum(s.stop - s.start for s in shards), unit="seq", desc="teacher") as progress:
        for shard in shards:
            outputs = []
            rows = splits[shard.split].slice(shard.start, shard.stop - shard.start)
            for chunk_index, start in enumerate(range(0, rows.height, settings.batch_size)):
                chunk = rows.slice(start, settings.batch_size)
                seed = shard_seed(settings.generation.seed, shard.split, shard.index) + chunk_index
                outputs += _teacher_outputs(backend, chunk, settings, use_template, seed)
                tokens += sum(len(o.input_ids) for o in outputs[-chunk.height :])
                progress.update(chunk.height)
                progress.set_postfix(tok_per_s=f"{tokens / (time.perf_counter() - started):.0f}")
            write_shard(outputs_to_table(rows["id"].to_list(), outputs), out_dir / shard.file)


def _teacher_outputs(backend: TeacherBackend, rows: pl.DataFrame, settings: TeacherSettings, use_template: bool, seed: int) -> list[TeacherOutput]:
    """Score the given responses, or generate responses when the data has none."""
    tokenizer = backend.tokenizer
    if "response" in rows.columns:
        encoded = [encode_conversation(tokenizer, p, r, use_template) for p, r in zip(rows["prompt"], rows["response"])]
        _check_lengths(rows["id"], [len(ids) for ids, _ in encoded], backend.max_length)
        return backend.score([ids for ids, _ in encoded], [start for _, start in encoded], settings.k)
    prompts = [encode_prompt(tokenizer, p, use_template) for p in rows["prompt"]]
    _check_lengths(rows["id"], [len(p) for p in prompts], backend.max_length - settings.generation.max_new_tokens)
    return backend.generate(prompts, settings.generation, settings.k, seed)


def _check_lengths(ids: pl.Series, lengths: list[int], limit: int) -> None:
    for row_id, length in zip(ids, lengths):
        if length > limit:
            raise PipelineError(f"prompt '{row_id}' is {length} tokens, over the teacher's limit of {limit} (max length minus max_new_tokens)")
