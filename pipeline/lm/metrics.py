"""How close a student is to its teacher, measured on a cached split."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoConfig

from pipeline.atomic import write_json
from pipeline.cache.reader import Cache
from pipeline.errors import PipelineError
from pipeline.hashing import weights_sha256
from pipeline.lm.batch import TopKBatch
from pipeline.lm.charts import plot_training
from pipeline.lm.cross_tokenizer import cross_agreement, decode, own_tokenizer_converter
from pipeline.lm.losses import sampled_forward_kl, sparse_forward_kl
from pipeline.lm.streaming import stream_batches
from pipeline.lm.student import position_logits
from pipeline.models import count_parameters, load_causal_lm
from pipeline.reporting import ReportKind, model_table
from pipeline.settings import Positive, Settings
from pipeline.train_loop import read_loss_log


class EvaluateSettings(Settings):
    """The `evaluate` section."""

    speed_sequences: Positive = 16  # validation sequences timed, teacher and students side by side
    batch_size: Positive = 8


def is_metrics(value: Any) -> bool:
    """Whether a JSON value is what `kd evaluate` writes: models by name, each with its parameter count."""
    models = value.get("models") if isinstance(value, dict) else None
    return isinstance(models, dict) and bool(models) and all(isinstance(m, dict) and isinstance(m.get("params"), int) for m in models.values())


METRICS_FILE = ReportKind("metrics file", "kd evaluate", is_metrics)


def kl_to_teacher(logits: torch.Tensor, batch: TopKBatch) -> torch.Tensor:
    """Per-position KL(teacher || student): over the top-k + tail on a top-k cache, the unbiased estimate on a sampled one."""
    if batch.counts is None:
        return sparse_forward_kl(logits, batch.listed_ids, batch.listed_logprobs)
    return sampled_forward_kl(batch.listed_logprobs, batch.counts, F.log_softmax(logits, dim=-1).gather(-1, batch.listed_ids))


@torch.inference_mode()
def student_agreement(model: torch.nn.Module, cache: Cache, split: str = "validation", batch_size: int = 8) -> dict[str, float]:
    """Per-token means over the split: top-1 agreement, KL to the teacher, CE on the teacher's tokens.

    KL is over the top-k + tail on a top-k cache, the unbiased estimate on a sampled one; the
    teacher's top-1 is its most likely listed (or drawn) id.
    """
    sums = {"top1_agreement": 0.0, "kl_to_teacher": 0.0, "ce": 0.0, "teacher_ce": 0.0}
    tokens = 0
    for batch in stream_batches(cache, split, batch_size):
        logits = position_logits(model, batch.input_ids, batch.attention_mask, batch.rows, batch.columns).float()
        teacher_top1 = batch.listed_ids.gather(-1, batch.listed_logprobs.argmax(-1, keepdim=True))[:, 0]
        sums["top1_agreement"] += (logits.argmax(-1) == teacher_top1).sum().item()
        sums["kl_to_teacher"] += kl_to_teacher(logits, batch).sum().item()
        sums["ce"] += F.cross_entropy(logits, batch.targets, reduction="sum").item()
        sums["teacher_ce"] -= batch.token_logprobs.sum().item()
        tokens += batch.num_tokens
    return {name: value / tokens for name, value in sums.items()} | {"tokens": tokens}


@torch.inference_mode()
def tokens_per_second(model: torch.nn.Module, sequences: Sequence[torch.Tensor], batch_size: int = 8, repeats: int = 2) -> float:
    """Forward throughput (full logits) on the given sequences; best of `repeats` after one warm-up."""
    batches = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(chunk):
            ids[row, : len(seq)], mask[row, : len(seq)] = seq, 1
        batches.append((ids, mask))
    total = sum(int(m.sum()) for _, m in batches)
    model(input_ids=batches[0][0], attention_mask=batches[0][1])
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for ids, mask in batches:
            model(input_ids=ids, attention_mask=mask)
        best = min(best, time.perf_counter() - started)
    return total / best


def validation_sequences(cache: Cache, count: int, split: str = "validation") -> list[torch.Tensor]:
    """The first `count` sequences of a split (the speed measurement's input)."""
    sequences: list[torch.Tensor] = []
    for batch in stream_batches(cache, split, count):
        for row in range(len(batch.input_ids)):
            sequences.append(batch.input_ids[row][batch.attention_mask[row].bool()])
        break
    return sequences[:count]


def cross_sequences(convert: Any, sequences: list[torch.Tensor]) -> list[torch.Tensor]:
    """The speed sequences in the student's own tokens (the same text)."""
    return [torch.tensor(convert.student(decode(convert.teacher, ids.numpy()), add_special_tokens=False)["input_ids"]) for ids in sequences]


def format_table(metrics: dict[str, Any]) -> str:
    columns = [
        ("params", "params", "{:,}"),
        ("top-1 agree", "top1_agreement", "{:.3f}"),
        ("KL to teacher", "kl_to_teacher", "{:.3f}"),
        ("CE", "ce", "{:.3f}"),
        ("tok/s", "tokens_per_s", "{:,.0f}"),
        ("speed-up", "speedup_vs_teacher", "{:.1f}x"),
    ]
    return "\n".join(model_table(metrics["models"], columns, 12, 15))


def check_teacher(cache: Cache, teacher_path: Path, any_teacher: bool = False) -> None:
    """Refuse a teacher folder other than the one that made the cache (by weights hash), unless `any_teacher`."""
    if not (Path(teacher_path) / "config.json").is_file():
        raise PipelineError(f"teacher model folder not found or has no config.json: {teacher_path}")
    try:
        actual = weights_sha256(Path(teacher_path))
    except FileNotFoundError as error:
        raise PipelineError(f"--teacher {teacher_path}: {error}") from None
    expected = cache.manifest.teacher.weights_sha256
    if expected is None and not any_teacher:
        raise PipelineError(f"{cache.path} records no teacher weights hash to check --teacher {teacher_path} against; pass --any-teacher to compare with this model anyway")
    if actual != expected and not any_teacher:
        raise PipelineError(
            f"--teacher {teacher_path} is not the teacher that made {cache.path} (weights sha256 {actual[:12]}, the cache's {str(expected)[:12]}); give that teacher, or pass --any-teacher to compare with this model anyway"
        )


def check_student_folder(name: str, path: Path, cache: Cache) -> Any:
    """A student folder's problems, before any model loads: not a model, an unreadable config, too few embedding rows for the cache's ids.

    Returns its tokenizer converter (see own_tokenizer_converter): None for a student with the cache's tokenizer.
    """
    if not (Path(path) / "config.json").is_file():
        raise PipelineError(f"student '{name}' at {path} is not a model folder (no config.json)")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PipelineError(f"student '{name}' at {path}: config.json cannot be read ({str(error).splitlines()[0]})") from None
    convert = own_tokenizer_converter(cache, path)
    rows = getattr(config, "vocab_size", None)
    if convert is None and (not isinstance(rows, int) or rows < cache.vocab_size):
        raise PipelineError(f"student '{name}' at {path} has {rows} embedding rows, but {cache.path} holds token ids up to {cache.vocab_size - 1}: it is not a student of this cache")
    return convert


def evaluate_models(
    cache_dir: Path, teacher_path: Path, students: dict[str, Path], speed_sequences: int = 16, batch_size: int = 8, split: str = "validation", any_teacher: bool = False
) -> dict[str, Any]:
    """Metrics of each student against the cached teacher on one split (only that split is read), with throughput measured side by side.

    The teacher must be the cache's (by weights hash) unless `any_teacher`; every folder is checked before any model loads.
    """
    cache = Cache.open(cache_dir)
    cache.check_shards(split)  # a missing or damaged split stops the run before any model loads
    check_teacher(cache, teacher_path, any_teacher)
    converters = {name: check_student_folder(name, path, cache) for name, path in students.items()}
    sequences = validation_sequences(cache, speed_sequences, split)
    teacher = load_causal_lm(teacher_path)
    teacher_speed = tokens_per_second(teacher, sequences, batch_size)
    models: dict[str, dict[str, Any]] = {"teacher": {"params": count_parameters(teacher), "tokens_per_s": teacher_speed, "speedup_vs_teacher": 1.0}}
    del teacher
    tokens = 0
    for name, path in students.items():
        model = load_causal_lm(path)
        convert = converters[name]
        if convert is not None:  # distilled across tokenizers: scored on aligned positions, CE per student token
            scores = cross_agreement(model, convert.batches(stream_batches(cache, split, batch_size)))
            report = convert.report()
            scores = {key: scores[key] for key in ("top1_agreement", "kl_to_teacher", "ce")} | {
                "aligned_positions": scores["aligned"],
                "aligned_share": report["aligned_student_share"],
                "mapped_mass_share": report["mapped_mass_share"],
            }
            speed = tokens_per_second(model, [ids[: model.config.max_position_embeddings] for ids in cross_sequences(convert, sequences)], batch_size)
            models[name] = {"params": count_parameters(model), **scores, "tokens_per_s": speed, "speedup_vs_teacher": speed / teacher_speed}
            continue
        scores = student_agreement(model, cache, split, batch_size)
        tokens = scores.pop("tokens")
        models["teacher"]["ce"] = scores.pop("teacher_ce")
        speed = tokens_per_second(model, sequences, batch_size)
        models[name] = {"params": count_parameters(model), **scores, "tokens_per_s": speed, "speedup_vs_teacher": speed / teacher_speed}
    return {"split": split, "tokens": tokens, "models": models}


def evaluate_students(
    cache_dir: Path,
    teacher_path: Path,
    students: dict[str, Path],
    settings: EvaluateSettings,
    metrics_path: Path | None = None,
    chart_path: Path | None = None,
    loss_logs: dict[str, Path] | None = None,
    split: str = "validation",
    overwrite: bool = False,
    any_teacher: bool = False,
) -> dict[str, Any]:
    """`kd evaluate` and the evaluate stage: the metrics, written as JSON, and the training chart from the loss logs.

    The output files are checked before any work (pipeline.outputs); `overwrite` lets them replace other files.
    """
    METRICS_FILE.claim(metrics_path, chart_path, [cache_dir, teacher_path, *students.values()], overwrite)
    metrics = evaluate_models(cache_dir, teacher_path, students, settings.speed_sequences, settings.batch_size, split, any_teacher)
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    if chart_path is not None and loss_logs:
        plot_training({name: read_loss_log(path) for name, path in loss_logs.items()}, metrics, chart_path)
    return metrics
