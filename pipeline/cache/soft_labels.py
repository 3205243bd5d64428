"""The classification task (`classify_soft_labels`): per text, the teacher's log-probs of each label.

Reading, auditing and describing such a cache. It is small (one row per text, a few floats per
row), so a split is read whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.cache.codec import flat_values
from pipeline.cache.format import CLASSIFY_TASK, FORMAT_VERSION
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.cache.manifest import Manifest
    from pipeline.cache.reader import Cache
    from pipeline.cache.schema import EncodingBlock

NORMALISED_TOLERANCE = 1e-3  # float32 rounding of label log-probs whose probabilities add up to 1
SOFT_LABEL_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),  # the text alone, teacher tokenizer, no template
        pa.field("label", pa.int32(), nullable=True),  # gold label index, null where the data has none
        pa.field("label_logprobs", pa.list_(pa.float32()), nullable=False),  # normalised over the labels
        pa.field("verbalizer_logprobs", pa.list_(pa.float32()), nullable=False),  # raw sequence log-probs
        pa.field("verbalizer_mass", pa.float32(), nullable=False),  # sum of exp(verbalizer_logprobs)
    ]
)


class SoftLabelTask:
    name = CLASSIFY_TASK
    token_columns = ("input_ids",)

    def check_manifest(self, manifest: Manifest, path: Path) -> None:
        if manifest.classify is None:
            raise PipelineError(f"{path} is malformed: classify: a soft-label cache needs its classify block (labels, label_names)")

    def schema(self, encoding: EncodingBlock) -> pa.Schema:
        return SOFT_LABEL_SCHEMA

    def format_version(self, plan: dict[str, Any]) -> int:
        return FORMAT_VERSION

    def count_tokens(self, table: pa.Table) -> int:
        """Text tokens: the whole of input_ids."""
        return int(pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False).sum())

    def value_problems(self, table: pa.Table, manifest: Manifest) -> list[str]:
        return soft_label_problems(table, manifest)

    def card(self, manifest: Manifest) -> str:
        return soft_label_card(manifest)

    def summarize(self, cache: Cache) -> dict[str, Any]:
        return summarize_soft_labels(cache)

    def format_summary(self, summary: dict[str, Any]) -> str:
        return format_soft_label_summary(summary)


SOFT_LABELS = SoftLabelTask()


@dataclass
class SoftLabels:
    """One split of a classify cache, as arrays."""

    ids: list[str]
    input_ids: list[list[int]]  # the text alone, teacher tokenizer
    label: np.ndarray  # int64 [n], -1 where there is no gold label
    label_logprobs: np.ndarray  # float32 [n, L], normalised over the labels
    verbalizer_mass: np.ndarray  # float32 [n]

    def __len__(self) -> int:
        return len(self.ids)


def read_soft_labels(cache: Cache, split: str) -> SoftLabels:
    """One split of a soft-label cache, whole."""
    cache.require_task(CLASSIFY_TASK, "a classifier", "run the classify teacher")
    batches = list(cache.batches(split, 4096))
    table = pa.Table.from_batches(batches) if batches else SOFT_LABEL_SCHEMA.empty_table()
    labels = len(cache.labels.label_names)
    return SoftLabels(
        ids=table.column("id").to_pylist(),
        input_ids=table.column("input_ids").to_pylist(),
        label=np.asarray(table.column("label").fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64),
        label_logprobs=flat_values(table.column("label_logprobs"), 1).reshape(-1, labels).astype(np.float32),
        verbalizer_mass=np.asarray(table.column("verbalizer_mass").to_numpy(zero_copy_only=False), dtype=np.float32),
    )


def mass_summary(cache: Cache) -> dict[str, float]:
    """Verbalizer mass over every split: how much of the teacher's answer the labels cover."""
    mass = np.concatenate([read_soft_labels(cache, split).verbalizer_mass for split in cache.splits])
    return {"mean": float(mass.mean()), "p10": float(np.percentile(mass, 10)), "p50": float(np.median(mass)), "min": float(mass.min())}


def summarize_soft_labels(cache: Cache) -> dict[str, Any]:
    """`kd inspect` of a classify cache: sizes, verbalizer mass, teacher label shares and accuracy where gold labels exist."""
    manifest, classify = cache.manifest, cache.labels
    names = classify.label_names
    splits = {}
    for split in manifest.splits:
        data = read_soft_labels(cache, split)
        predicted = data.label_logprobs.argmax(1)
        gold = data.label >= 0
        splits[split] = {
            "rows": len(data),
            "gold_labels": int(gold.sum()),
            "teacher_accuracy": float((predicted[gold] == data.label[gold]).mean()) if gold.any() else None,
            "teacher_label_share": {name: float((predicted == i).mean()) for i, name in enumerate(names)},
        }
    return {
        "format_version": manifest.format_version,
        "task": manifest.task,
        "labels": {name: classify.labels[name] for name in names},
        "scoring": classify.scoring,
        "rows": {name: split.rows for name, split in manifest.splits.items()},
        "tokens": manifest.tokens,
        "bytes": manifest.bytes,
        "verbalizer_mass": mass_summary(cache),
        "splits": splits,
        "teacher": manifest.teacher_summary(),
        "tokenizer": manifest.tokenizer_summary(),
    }


def format_soft_label_summary(summary: dict[str, Any]) -> str:
    mass = summary["verbalizer_mass"]
    lines = [
        f"format      kd-topk-cache v{summary['format_version']} ({summary['task']}), {len(summary['labels'])} labels, {summary['scoring']} scoring",
        "labels      " + ", ".join(f"{name} = {verbalizer!r}" for name, verbalizer in summary["labels"].items()),
        "rows        " + ", ".join(f"{name} {count}" for name, count in summary["rows"].items()),
        f"size        {summary['bytes']:,} bytes, {summary['tokens']:,} text tokens",
        f"verbalizer  mass mean {mass['mean']:.3f}, p10 {mass['p10']:.3f}, median {mass['p50']:.3f}, min {mass['min']:.3f}",
    ]
    for split, values in summary["splits"].items():
        accuracy = "n/a" if values["teacher_accuracy"] is None else f"{values['teacher_accuracy']:.3f}"
        shares = ", ".join(f"{name} {share:.2f}" for name, share in values["teacher_label_share"].items())
        lines.append(f"{split:<11} teacher accuracy {accuracy} on {values['gold_labels']} gold labels; predicted shares {shares}")
    teacher = summary["teacher"]
    lines.append(f"teacher     {teacher['name']} (weights {teacher['weights_sha256'][:12]}, {teacher['backend']}, {teacher['dtype']})")
    return "\n".join(lines)


def soft_label_problems(table: pa.Table, manifest: Manifest) -> list[str]:
    """Soft-label sanity of one shard: lengths, finite values, normalisation, mass, label and id ranges."""
    assert manifest.classify is not None  # SoftLabelTask.check_manifest
    labels = len(manifest.classify.label_names)
    vocab_size = manifest.tokenizer.vocab_size
    ids = table.column("id").to_pylist()
    problems = []
    for column in ("label_logprobs", "verbalizer_logprobs"):
        lengths = pc.list_value_length(table.column(column)).to_numpy(zero_copy_only=False)
        if (lengths != labels).any():
            return [f"{column} does not hold {labels} values, first in row '{ids[int(np.flatnonzero(lengths != labels)[0])]}'"]
    normalised = flat_values(table.column("label_logprobs"), 1).reshape(-1, labels).astype(np.float64)
    raw = flat_values(table.column("verbalizer_logprobs"), 1).reshape(-1, labels).astype(np.float64)
    mass = table.column("verbalizer_mass").to_numpy(zero_copy_only=False).astype(np.float64)
    label = np.asarray(table.column("label").fill_null(0).to_numpy(zero_copy_only=False))
    input_ids = table.column("input_ids")
    row_of_token = np.repeat(np.arange(len(ids)), pc.list_value_length(input_ids).to_numpy(zero_copy_only=False))
    token_ids = flat_values(input_ids, 1)
    bad_tokens = np.zeros(len(ids), dtype=bool)
    bad_tokens[row_of_token[(token_ids < 0) | (token_ids >= vocab_size)]] = True
    with np.errstate(invalid="ignore", over="ignore"):
        checks = [
            (~np.isfinite(normalised).all(1) | ~np.isfinite(raw).all(1) | ~np.isfinite(mass), "a log-prob or mass is not finite"),
            ((np.nan_to_num(raw) > 1e-6).any(1) | (np.nan_to_num(normalised) > 1e-6).any(1), "a log-prob is above 0"),
            (np.abs(np.exp(normalised).sum(1) - 1) > NORMALISED_TOLERANCE, "label_logprobs do not add up to probability 1"),
            (np.abs(np.exp(raw).sum(1) - mass) > NORMALISED_TOLERANCE * np.maximum(mass, 1e-3), "verbalizer_mass is not the sum of exp(verbalizer_logprobs)"),
            ((label < 0) | (label >= labels), f"a gold label is outside 0..{labels - 1}"),
            (bad_tokens, f"an input id is outside the vocabulary (0..{vocab_size - 1})"),
        ]
    for bad, message in checks:
        if bad.any():
            problems.append(f"{message}, first in row '{ids[int(np.flatnonzero(bad)[0])]}' ({int(bad.sum())} row(s))")
    return problems


def soft_label_card(manifest: Manifest) -> str:
    """The dataset card (README.md) of a classify cache."""
    teacher, tokenizer, classify = manifest.teacher, manifest.tokenizer, manifest.classify
    assert classify is not None  # SoftLabelTask.check_manifest
    rows = "\n".join(f"| {name} | {s.rows:,} | {s.tokens:,} | {len(s.shards)} | {s.bytes:,} |" for name, s in manifest.splits.items())
    labels = "\n".join(f"| {i} | {name} | `{classify.labels[name]!r}` | {classify.verbalizer_ids[i]} |" for i, name in enumerate(classify.label_names))
    created_by = manifest.created_by.version if manifest.created_by else "(not recorded)"
    return f"""# Teacher soft-label dataset ({manifest.format} v{manifest.format_version}, task `{manifest.task}`)

Zero-shot class probabilities of a teacher LLM for every text, made by kd-pipeline
{created_by} to train small classifiers by distillation. Generated from `manifest.json`.

| | |
|---|---|
| teacher | {teacher.name} |
| teacher weights sha256 | `{teacher.weights_sha256}` ({teacher.backend}, {teacher.dtype}) |
| tokenizer sha256 | `{tokenizer.sha256}` ({tokenizer.tokenizer_size:,} tokens); files in `{tokenizer.files}/` |
| scoring | `{classify.scoring}`; {manifest.logprobs} |
| source data sha256 | `{manifest.source.sha256}` |

| index | label | verbalizer | verbalizer token ids |
|---|---|---|---|
{labels}

Prompt (user message; `{{text}}` is replaced by the text), then the assistant turn starts with
`{classify.assistant_prefix!r}` and the verbalizer follows:

```
{classify.template}
```

| split | rows | text tokens | shards | bytes |
|---|---|---|---|---|
{rows}

## Columns

| column | type | meaning |
|---|---|---|
| `id` | string | text id |
| `input_ids` | list<int32> | the text alone (no prompt), teacher tokenizer: the student's input |
| `label` | int32, nullable | gold label index, null where the data has none |
| `label_logprobs` | list<float32> | teacher log-probs of the labels, normalised over the labels (logsumexp 0) |
| `verbalizer_logprobs` | list<float32> | raw log-prob of each verbalizer's token sequence after the prompt |
| `verbalizer_mass` | float32 | sum of exp(`verbalizer_logprobs`): the teacher's probability on any label |

Settings: `{json.dumps({"system": classify.system, "chat_template": classify.chat_template, "scoring": classify.scoring})}`.
"""
