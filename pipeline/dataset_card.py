"""A README for every cache directory, generated from its manifest: a logit dataset describes itself."""

from __future__ import annotations

import json
from typing import Any

from pipeline.codec import manifest_encoding


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
    block = manifest_encoding(manifest)
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
| k, encoding | {manifest['k']}; {manifest['logprobs']}; encoding `{block['name']}`{'' if block['name'] == 'float32' else f" ({block['storage']})"}; zstd Parquet |
| decoding error bound | {', '.join(f'{name} {value:g}' for name, value in block['error_bound'].items())} (see `manifest.json`, `encoding`) |
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

{_columns(block)}

## How to load it

```python
import polars as pl
train = pl.read_parquet("train/*.parquet")

import pyarrow.dataset as ds                  # streaming, batch by batch
for batch in ds.dataset("train", format="parquet").to_batches(batch_size=64):
    ...

import duckdb
duckdb.sql("SELECT id, len(input_ids) - response_start AS positions FROM 'train/*.parquet'")

from datasets import load_dataset
data = load_dataset("parquet", data_files={{"train": "train/*.parquet", "validation": "validation/*.parquet"}})
```

Train a student with kd-pipeline (the tokenizer ships in `tokenizer/`, no teacher needed):

```bash
kd verify .   # checksums, schema, counts, log-prob sanity
kd student --cache . --out my-student
```
"""


FLOAT32_COLUMNS = """| column | type | meaning |
|---|---|---|
| `id` | string | prompt id |
| `input_ids` | list<int32> | prompt (chat template applied) followed by the teacher's answer |
| `response_start` | int32 | index of the first answer token in `input_ids` |
| `topk_ids` | list<list<int32>> | per answer position, the teacher's top-k next-token ids, most likely first |
| `topk_logprobs` | list<list<float32>> | their log-probabilities (temperature 1), descending |
| `token_logprobs` | list<float32> | per answer position, the log-probability of the actual token |

Row j of the per-position lists predicts `input_ids[response_start + j]`."""

COMPACT_COLUMNS = """| column | type | meaning |
|---|---|---|
| `id` | string | prompt id |
| `input_ids` | list<{input_ids}> | prompt (chat template applied) followed by the teacher's answer |
| `response_start` | int32 | index of the first answer token in `input_ids`; positions `response_start .. len - 1` are cached |
| `entries` | binary | per position, how many ids it lists ({entry_bytes} byte(s) each) |
| `id_gap_lo`, `id_gap_hi` | binary | the listed ids, ascending within a position, as gaps (first id, then id - previous - 1): low byte, then the {hi} higher byte(s) |
| `prob_levels` | binary | per listed id, round(sqrt(p) / {sqrt_step}) |
| `tail_levels` | binary | per position, round(-log(tail mass) / {tail_log_step}), 2 bytes |
| `token_logprob_levels` | binary | per position, round(-log p(actual token) / {token_logprob_step}), 2 bytes |{counts}

Multi-byte values are little-endian and split into byte planes within each row (all first bytes of
the row, then all second bytes). Decoding: p = max(level * step, step / 4)^2, tail = exp(-level * step),
then the listed probabilities and the tail are renormalised to sum to 1. kd-pipeline decodes these
columns (`pipeline.codec.decode`); `kd convert . out --encoding float32` rewrites the cache with plain
list columns for other tools."""


def _columns(block: dict[str, Any]) -> str:
    if block["name"] == "float32":
        return FLOAT32_COLUMNS
    counts = "\n| `counts` | binary | per listed id, how often it was drawn ({} byte(s) each); a position's counts add up to {} |".format(block["count_bytes"], block["draws"]) if block["storage"] == "sampled" else ""
    return COMPACT_COLUMNS.format(hi=block["id_bytes"] - 1, counts=counts, **block)
