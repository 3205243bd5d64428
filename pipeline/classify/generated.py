"""Texts the teacher writes: the answers in a language-model cache, as a text set to label.

The teacher stage already generates answers to prompts, seeded, sharded, resumable and validated, so
"the LLM writes reviews" is that stage run on review-writing prompts; this module turns its cache
back into texts: each answer decoded, its first paragraph kept, wrapping quotes and a lead-in line
("Here is a review:") dropped, then repeats and answers of fewer than `min_words` words dropped.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from pipeline.atomic import write_bytes
from pipeline.cache.format import CAUSAL_LM_TASK
from pipeline.cache.reader import Cache
from pipeline.errors import PipelineError
from pipeline.outputs import FileKind

TEXTS_FILE = FileKind("texts file")  # what `kd classify augment` and `answers` write: any existing file is the user's

log = logging.getLogger(__name__)

QUOTES = "\"'“”‘’"


def clean_answer(answer: str) -> str:
    """The first paragraph of an answer, without a lead-in line that ends with ':' and without wrapping quotes."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n|\n", answer.strip()) if p.strip()]
    if len(paragraphs) > 1 and paragraphs[0].endswith(":"):
        paragraphs = paragraphs[1:]
    text = paragraphs[0] if paragraphs else ""
    if len(text) > 1 and text[0] in QUOTES and text[-1] in QUOTES:
        text = text[1:-1].strip()
    return " ".join(text.split())


def answers_as_texts(cache_dir: Path, split: str, min_words: int = 3) -> list[dict[str, Any]]:
    """[{text, prompt_id}] for the answers of `split`, in cache order; repeats and short answers dropped."""
    from transformers import AutoTokenizer

    cache = Cache.open(cache_dir)
    cache.require_task(CAUSAL_LM_TASK, "kd classify answers", "give the cache `kd teacher` wrote from review-writing prompts")
    tokenizer = AutoTokenizer.from_pretrained(cache.tokenizer_dir)
    rows, seen, short = [], set(), 0
    for batch in cache.batches(split, 256, ["id", "input_ids", "response_start"]):
        for row_id, ids, start in zip(*(batch.column(c).to_pylist() for c in ("id", "input_ids", "response_start"))):
            text = clean_answer(tokenizer.decode(ids[start:], skip_special_tokens=True))
            if len(text.split()) < min_words:
                short += 1
            elif text not in seen:
                seen.add(text)
                rows.append({"text": text, "prompt_id": row_id})
    log.info("%s: %d answers kept, %d shorter than %d words, %d repeats", cache_dir, len(rows), short, min_words, cache.splits[split].rows - len(rows) - short)
    if not rows:
        raise PipelineError(f"no answer of {min_words} words or more in the {split} split of {cache_dir}")
    return rows


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    """Rows as JSON lines, written atomically (a crash leaves the old file or none)."""
    write_bytes(Path(path), "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode())
