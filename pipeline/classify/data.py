"""Labelled text sets for classification: a train set and named test sets, each a text column and an optional gold label column."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import field_validator, model_validator

from pipeline.data import check_text, read_frame, sample_rows, text_id
from pipeline.errors import PipelineError
from pipeline.settings import Positive, Settings

log = logging.getLogger(__name__)

SPLIT_NAME = re.compile(r"[a-z][a-z0-9_]*")


class TextSet(Settings):
    """One labelled text file, or a seeded sample of it. A plain path in params.yaml means the whole file."""

    path: Path
    sample: Positive | None = None  # this many rows, the ones whose seeded hash of the id is smallest (null: every row)
    repeated_texts: Literal["refuse", "keep_first"] = "refuse"  # the same text twice: an error, or keep its first row (its labels must agree)

    @model_validator(mode="before")
    @classmethod
    def _path_alone(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str | Path) else value


class ClassifyDataSettings(Settings):
    """The `classify.data` section: the texts the teacher labels for training, and the test sets (with gold labels) students are scored on."""

    train: TextSet = TextSet(path=Path("data/real-reviews/transfer-train.jsonl"))
    tests: dict[str, TextSet] = {}  # name: text set; each becomes a cache split of that name
    text_column: str = "text"
    label_column: str = "label"
    seed: int = 0  # of the samples

    @field_validator("tests")
    @classmethod
    def _split_names(cls, tests: dict[str, TextSet]) -> dict[str, TextSet]:
        for name in tests:
            if name == "train" or not SPLIT_NAME.fullmatch(name):
                raise ValueError(f"test set name '{name}' must be lowercase letters, digits and _ (starting with a letter), and not 'train'")
        return tests


def read_classify_data(settings: ClassifyDataSettings, labels: Sequence[str]) -> dict[str, pl.DataFrame]:
    """The train set and every test set as read_labelled frames, by split name (train first)."""
    sets = {"train": settings.train, **settings.tests}
    return {split: read_text_set(text_set, labels, settings.text_column, settings.label_column, settings.seed) for split, text_set in sets.items()}


def read_text_set(text_set: TextSet, labels: Sequence[str], text_column: str = "text", label_column: str = "label", seed: int = 0) -> pl.DataFrame:
    """read_labelled on the file, then its seeded sample; refuses a sample larger than the file."""
    frame = read_labelled(text_set.path, labels, text_column, label_column, text_set.repeated_texts)
    if text_set.sample is None:
        return frame
    if text_set.sample > frame.height:
        raise PipelineError(f"{text_set.path}: sample {text_set.sample} is more than its {frame.height} rows")
    return sample_rows(frame, text_set.sample, seed)


def read_labelled(path: Path, labels: Sequence[str], text_column: str = "text", label_column: str = "label", repeated_texts: str = "refuse") -> pl.DataFrame:
    """Columns out: id (str), text (str), label (Int32 index into `labels`, null where the data has no label).

    A label outside the label set is an error (a typo there would silently become a wrong class).
    Ids come from an `id` column, else from the text, so a repeated text is a repeated id.
    """
    path = Path(path)
    frame = read_frame(path, "text", (text_column, label_column))
    if text_column not in frame.columns:
        raise PipelineError(f"{path} has no '{text_column}' column (columns: {', '.join(frame.columns)})")
    columns = {"text": pl.col(text_column).cast(pl.String)}
    columns["id"] = pl.col("id").cast(pl.String) if "id" in frame.columns else pl.col(text_column).cast(pl.String).map_elements(text_id, return_dtype=pl.String)
    raw = pl.col(label_column).cast(pl.String) if label_column in frame.columns else pl.lit(None, pl.String)
    out = frame.select(**columns, raw_label=raw)
    check_text(out, "text", path)
    if repeated_texts == "keep_first":
        out = _drop_repeated_texts(out, path)
    duplicated = out.filter(pl.col("id").is_duplicated())["id"].unique().sort()
    if len(duplicated):
        raise PipelineError(f"{path}: duplicate id(s) {', '.join(duplicated[:5].to_list())} (duplicate texts get the same id; repeated_texts: keep_first keeps the first)")
    unknown = out.filter(pl.col("raw_label").is_not_null() & ~pl.col("raw_label").is_in(list(labels)))
    if unknown.height:
        values = unknown["raw_label"].unique().sort().to_list()
        raise PipelineError(f"{path}: {unknown.height} row(s) have a label outside the label set ({', '.join(labels)}): {', '.join(repr(v) for v in values[:5])}, first in row '{unknown['id'][0]}'")
    index = {name: i for i, name in enumerate(labels)}
    label = pl.col("raw_label").replace_strict(index, default=None, return_dtype=pl.Int32)
    return out.select("id", "text", label=label)


def _drop_repeated_texts(frame: pl.DataFrame, path: Path) -> pl.DataFrame:
    """Keep the first row of each repeated (id, text); a repeated text with different labels is an error."""
    conflicting = frame.group_by("id", "text").agg(pl.col("raw_label").n_unique().alias("labels")).filter(pl.col("labels") > 1)
    if conflicting.height:
        raise PipelineError(f"{path}: {conflicting.height} repeated text(s) have different labels, e.g. {conflicting['text'][0]!r}")
    kept = frame.unique(["id", "text"], keep="first", maintain_order=True)
    if kept.height < frame.height:
        log.info("%s: kept the first of %d repeated text(s)", path, frame.height - kept.height)
    return kept
