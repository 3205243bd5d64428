"""Labelled text sets for classification: a text column and an optional gold label column."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from pipeline.data import check_text, read_frame, text_id
from pipeline.errors import PipelineError
from pipeline.settings import Settings


class ClassifyDataSettings(Settings):
    """The `classify.data` section: labelled texts (train, and test with gold labels for evaluation)."""

    train: Path = Path("data/reviews/train.jsonl")
    test: Path | None = Path("data/reviews/test.jsonl")  # needs gold labels: the evaluation split
    text_column: str = "text"
    label_column: str = "label"


def read_classify_data(settings: ClassifyDataSettings, labels: Sequence[str]) -> dict[str, pl.DataFrame]:
    """The train (and test) texts as read_labelled frames, by split."""
    files = {"train": settings.train, "test": settings.test}
    return {split: read_labelled(path, labels, settings.text_column, settings.label_column) for split, path in files.items() if path is not None}


def read_labelled(path: Path, labels: Sequence[str], text_column: str = "text", label_column: str = "label") -> pl.DataFrame:
    """Columns out: id (str), text (str), label (Int32 index into `labels`, null where the data has no label).

    A label outside the label set is an error (a typo there would silently become a wrong class).
    """
    path = Path(path)
    frame = read_frame(path, "text")
    if text_column not in frame.columns:
        raise PipelineError(f"{path} has no '{text_column}' column (columns: {', '.join(frame.columns)})")
    columns = {"text": pl.col(text_column).cast(pl.String)}
    columns["id"] = pl.col("id").cast(pl.String) if "id" in frame.columns else pl.col(text_column).cast(pl.String).map_elements(text_id, return_dtype=pl.String)
    raw = pl.col(label_column).cast(pl.String) if label_column in frame.columns else pl.lit(None, pl.String)
    out = frame.select(**columns, raw_label=raw)
    check_text(out, "text", path)
    duplicated = out.filter(pl.col("id").is_duplicated())["id"].unique().sort()
    if len(duplicated):
        raise PipelineError(f"{path}: duplicate id(s) {', '.join(duplicated[:5].to_list())} (duplicate texts get the same id)")
    unknown = out.filter(pl.col("raw_label").is_not_null() & ~pl.col("raw_label").is_in(list(labels)))
    if unknown.height:
        values = unknown["raw_label"].unique().sort().to_list()
        raise PipelineError(f"{path}: {unknown.height} row(s) have a label outside the label set ({', '.join(labels)}): {', '.join(repr(v) for v in values[:5])}, first in row '{unknown['id'][0]}'")
    index = {name: i for i, name in enumerate(labels)}
    label = pl.col("raw_label").replace_strict(index, default=None, return_dtype=pl.Int32)
    return out.select("id", "text", label=label)
