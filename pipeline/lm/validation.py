"""Validation during training: the KL `kd evaluate` reports, on a bounded seeded sample of the validation split."""

from __future__ import annotations

import torch

from pipeline.cache.reader import Cache
from pipeline.lm.batch import Objective
from pipeline.lm.cross_tokenizer import CrossTokenizer
from pipeline.lm.losses import LossSpec
from pipeline.lm.parallel import Processes
from pipeline.lm.streaming import stream_batches
from pipeline.lm.student_settings import StudentSettings

VALIDATION_SPEC = LossSpec(loss="forward_kl", tail="bucket", alpha=1.0, temperature=1.0)  # the KL `kd evaluate` reports


def validation_objective(settings: StudentSettings) -> Objective:
    """Forward KL on the answer positions (the exact-map KL across tokenizers), whatever the training loss."""
    return Objective(VALIDATION_SPEC, "response", settings.chunk_positions, validation=True)


def validation_kl(model: torch.nn.Module, cache: Cache, settings: StudentSettings, processes: Processes, convert: CrossTokenizer | None = None) -> float | None:
    """Mean KL(teacher || student) over the cache's validation split (top-k + tail, or the sampled estimate).

    A split larger than `student.eval_positions` is scored on a seeded sample of it (shards and rows
    in the seeded order, batches until that many positions), the same sample at every validation, so
    validation stays a bounded cost at any cache size. Every process scores the same positions, so
    FSDP's collectives line up and no reduction is needed. None when the cache has no validation split.
    """
    if not cache.has_split("validation"):
        return None
    kl, positions = 0.0, 0
    sample, objective = validation_is_sampled(cache, settings), validation_objective(settings)
    was_training = model.training
    model.eval()
    with torch.no_grad():  # float32 even when training in bf16: the figure `kd evaluate` reports
        batches = stream_batches(cache, "validation", settings.batch_size, seed=settings.seed if sample else None)
        for batch in batches if convert is None else convert.batches(batches):
            kl += model(batch.to(processes.device), (1, 1), objective)["kd"].item()  # totals (1, 1): sums, not means
            positions += batch.num_tokens
            if sample and positions >= (settings.eval_positions or 0):
                break
    model.train(was_training)
    return kl / max(positions, 1)


def validation_is_sampled(cache: Cache, settings: StudentSettings) -> bool:
    """Whether validation during training scores a sample (the split has more positions than student.eval_positions)."""
    return settings.eval_positions is not None and cache.splits["validation"].tokens > settings.eval_positions


def describe_validation(cache: Cache, settings: StudentSettings) -> str:
    """Which validation the training log shows: the whole split, or a sample of it."""
    total = cache.splits["validation"].tokens
    if validation_is_sampled(cache, settings):
        return f"validation KL on a seeded sample of about {settings.eval_positions:,} of the split's {total:,} positions (student.eval_positions); `kd evaluate` scores them all"
    return f"validation KL on the whole validation split ({total:,} positions)"
