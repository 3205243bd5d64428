"""A README for every cache directory, generated from its manifest: a logit dataset describes itself."""

from __future__ import annotations

import json
from typing import Any


def dataset_card(manifest: dict[str, Any]) -> str:
    if manifest.get("task") == "classify_soft_labels":
        from pipeline.classify_cache import classify_card

        return classify_card(manifest)
    teacher, tokenizer, generation = manifest["teacher"], manifest["tokenizer"], manifest["generation"]
    splits = manifest["splits"]
    tokens = sum(s["tokens"] for s in splits.values())
    size = sum(s["bytes"] for s in splits.values())
    split_rows = "\n".join(f"| {name} | {s['rows']:,} | {s['tokens']:,} | {len(s['shards'])} | {s['bytes']:,} |" for name, s in splits.items())
    settings = {key: manifest[key] for key in ("k", "shard_rows")} | {"backend": teacher["backend"], "dtype": teacher["dtype"], "generation": generation}
    template = tokenizer.get("chat_template")
    return f"""# Teacher logit dataset ({manifest['format']} v{manifest['format_version']})

Top-{manifest['k']} next-token log-probabilities of a teacher LLM for every answer position, made by
kd-pipeline {manifest['created_by']['version']} for offline knowledge distillation. Generated from `manifest.json`.

| | |
|---|---|
| task | `{manifest['task']}` |
| teacher | {teacher['name']} |
| teacher weights sha256 | `{teacher['weights_sha256']}` |
| tokenizer sha256 | `{tokenizer['sha256']}` ({tokenizer['tokenizer_size']:,} tokens, output vocabulary {tokenizer['vocab_size']:,}); files in `{tokenizer.get('files', 'tokenizer')}/` |
| chat template | {'see `manifest.json` (`tokenizer.chat_template`)' if template else 'none (raw text prompts)'} |
| k, encoding | {manifest['k']}; {manifest['logprobs']}; token ids int32; zstd Parquet |
| size | {tokens:,} cached positions, {size:,} bytes ({size / max(1, tokens):.1f} bytes per position) |
| source data sha256 | `{manifest['source']['sha256']}` |

| split | rows | positions | shards | bytes |
|---|---|---|---|---|
{split_rows}

## How it was produced

The teacher stage of kd-pipeline (`dvc repro teacher`, or `kd teacher --params params.yaml`) with these settings:

```json
{json.dumps(settings, indent=2)}
```

## Columns

| column | type | meaning |
|---|---|---|
| `id` | string | prompt id |
| `input_ids` | list<int32> | prompt (chat template applied) followed by the teacher's answer |
| `response_start` | int32 | index of the first answer token in `input_ids` |
| `topk_ids` | list<list<int32>> | per answer position, the teacher's top-k next-token ids, most likely first |
| `topk_logprobs` | list<list<float32>> | their log-probabilities (temperature 1), descending |
| `token_logprobs` | list<float32> | per answer position, the log-probability of the actual token |

Row j of the per-position lists predicts `input_ids[response_start + j]`.

## How to load it

```python
import polars as pl
train = pl.read_parquet("train/*.parquet")

import pyarrow.dataset as ds                  # streaming, batch by batch
for batch in ds.dataset("train", format="parquet").to_batches(batch_size=64):
    ...

import duckdb
duckdb.sql("SELECT id, len(token_logprobs) AS positions FROM 'train/*.parquet'")

from datasets import load_dataset
data = load_dataset("parquet", data_files={{"train": "train/*.parquet", "validation": "validation/*.parquet"}})
```

Train a student with kd-pipeline (the tokenizer ships in `tokenizer/`, no teacher needed):

```bash
kd verify .   # checksums, schema, counts, log-prob sanity
kd student --cache . --out my-student
```
"""
