"""Prompt sets: read JSONL/CSV/Parquet, validate, give every row a stable id, split deterministically."""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl
from pydantic import Field

from pipeline.atomic import atomic_path
from pipeline.errors import PipelineError
from pipeline.settings import Settings

READERS = {".jsonl": pl.read_ndjson, ".ndjson": pl.read_ndjson, ".csv": pl.read_csv, ".parquet": pl.read_parquet}
TEXT_FORMATS = (".jsonl", ".ndjson", ".csv")
SPLITS = ("train", "validation")


class DataSettings(Settings):
    """The `data` section: the prompt set and its train/validation split."""

    prompts: Path = Path("data/prompts.jsonl")  # JSONL, CSV or Parquet with a prompt column (and optional id, response)
    text_column: str = "prompt"
    validation_fraction: float = Field(0.2, gt=0, le=1)  # 1: an evaluation-only prompt set (every prompt validation, train empty)
    seed: int = 0


def prepare_prompts(settings: DataSettings, out_dir: Path) -> dict[str, pl.DataFrame]:
    """`kd prepare` and the prepare stage: read and check the prompt set, split it, write the splits."""
    splits = split_prompts(read_prompts(settings.prompts, settings.text_column), settings.validation_fraction, settings.seed)
    write_splits(splits, out_dir)
    return splits


def read_prompts(path: Path, text_column: str = "prompt", response_column: str = "response") -> pl.DataFrame:
    """Columns out: id, prompt, and response when the data has one (then the teacher scores it)."""
    path = Path(path)
    frame = read_frame(path, "prompt")
    if text_column not in frame.columns:
        raise PipelineError(f"{path} has no '{text_column}' column (columns: {', '.join(frame.columns)})")
    columns = {"prompt": pl.col(text_column).cast(pl.String)}
    if response_column in frame.columns:
        columns["response"] = pl.col(response_column).cast(pl.String)
    if "id" in frame.columns:
        columns["id"] = pl.col("id").cast(pl.String)
    out = frame.select(**columns)
    check_text(out, "prompt", path)
    if "response" in out.columns:
        check_text(out, "response", path)
    if "id" not in out.columns:
        out = out.with_columns(id=pl.col("prompt").map_elements(text_id, return_dtype=pl.String))
    blank_ids = out.filter(pl.col("id").is_null() | (pl.col("id").str.strip_chars() == "")).height
    if blank_ids:
        raise PipelineError(f"{path}: {blank_ids} row(s) have an empty id")
    duplicated = out.filter(pl.col("id").is_duplicated())["id"].unique().sort()
    if len(duplicated):
        raise PipelineError(f"{path}: duplicate id(s) {', '.join(duplicated[:5].to_list())} (duplicate prompts get the same id)")
    return out.select(["id", "prompt"] + (["response"] if "response" in out.columns else []))


def read_frame(path: Path, kind: str) -> pl.DataFrame:
    """A JSONL/CSV/Parquet file as a non-empty frame, or a one-line error naming the problem."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{kind} file not found: {path}")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise PipelineError(f"unsupported {kind} file type '{path.suffix}' for {path} (use .jsonl, .csv or .parquet)")
    if path.suffix.lower() in TEXT_FORMATS:
        _check_text_file(path)
    try:
        frame = reader(path)
    except Exception as error:  # polars raises several types for malformed files
        raise PipelineError(f"cannot read {path}: {str(error).splitlines()[0]}") from error
    if frame.height == 0:
        raise PipelineError(f"{path} has no rows")
    return frame


def _check_text_file(path: Path) -> None:
    """Name the line of the first bad byte and call an empty file empty, where a parser would not."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise PipelineError(f"{path} is not valid UTF-8: byte 0x{data[error.start]:02x} on line {line}") from error
    if not text.strip():
        raise PipelineError(f"{path} has no rows")


def check_text(frame: pl.DataFrame, column: str, path: Path) -> None:
    blank = frame.with_row_index().filter(pl.col(column).is_null() | (pl.col(column).str.strip_chars() == ""))
    if blank.height:
        raise PipelineError(f"{path}: {blank.height} row(s) have an empty {column}, first at row {blank['index'][0]}")


def text_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sample_rows(frame: pl.DataFrame, count: int, seed: int) -> pl.DataFrame:
    """The `count` rows with the smallest sha256(seed:id), in file order: the same rows on every machine, and adding rows to the file keeps most of them."""
    rank = frame["id"].map_elements(lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest(), return_dtype=pl.String)
    keep = frame.with_row_index("_row").with_columns(_rank=rank).sort("_rank").head(count).sort("_row")
    return keep.drop("_row", "_rank")


def split_prompts(prompts: pl.DataFrame, validation_fraction: float, seed: int) -> dict[str, pl.DataFrame]:
    """Assign each id to a split by a seeded hash: adding prompts never moves existing ones.

    validation_fraction 1 makes an evaluation-only prompt set: every prompt in validation, train empty
    (with the same columns), for scoring students on prompts they were not trained on.
    """
    if not 0 < validation_fraction <= 1:
        raise PipelineError(f"validation_fraction must be above 0 and at most 1 (1: an evaluation-only prompt set), got {validation_fraction}")
    if validation_fraction == 1:
        return {"train": prompts.clear(), "validation": prompts.sort("id")}
    bucket = prompts["id"].map_elements(lambda i: int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") / 2**64, return_dtype=pl.Float64)
    is_validation = bucket < validation_fraction
    splits = {"train": prompts.filter(~is_validation).sort("id"), "validation": prompts.filter(is_validation).sort("id")}
    for name, frame in splits.items():
        if frame.height == 0:
            hint = " (use validation_fraction 1 for an evaluation-only prompt set)" if name == "train" else ""
            raise PipelineError(f"the {name} split is empty: {prompts.height} prompts with validation_fraction={validation_fraction}{hint}")
    return splits


def write_splits(splits: dict[str, pl.DataFrame], out_dir: Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        with atomic_path(out_dir / f"{name}.parquet") as tmp:
            frame.write_parquet(tmp)


def read_split(prepared_dir: Path, split: str) -> pl.DataFrame:
    path = Path(prepared_dir) / f"{split}.parquet"
    if not path.exists():
        raise PipelineError(f"prepared split not found: {path} (run the prepare stage first)")
    return pl.read_parquet(path)
