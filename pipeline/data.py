"""Prompt sets: read JSONL/CSV/Parquet, validate, give every row a stable id, split deterministically."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path

import polars as pl
from pydantic import Field

from pipeline.atomic import atomic_path, write_error
from pipeline.errors import PipelineError
from pipeline.outputs import FolderKind, claim_folder, holds_only, write_marker
from pipeline.settings import Settings
from pipeline.storage import remove_tree

READERS = {".jsonl": pl.read_ndjson, ".ndjson": pl.read_ndjson, ".csv": pl.read_csv, ".parquet": pl.read_parquet}
TEXT_FORMATS = (".jsonl", ".ndjson", ".csv")
JSON_LINES = (".jsonl", ".ndjson")
UTF8_BOM = b"\xef\xbb\xbf"
JSON_TYPES = {bool: "true or false", int: "a number", float: "a number", list: "a list", dict: "an object"}
SPLITS = ("train", "validation")
PREPARED_FOLDER = FolderKind("prepared prompt set", lambda folder: holds_only(folder, [f"{split}.parquet" for split in SPLITS]))  # or one from before markers


class DataSettings(Settings):
    """The `data` section: the prompt set and its train/validation split."""

    prompts: Path = Path("data/prompts.jsonl")  # JSONL, CSV or Parquet with a prompt column (and optional id, response)
    text_column: str = "prompt"
    validation_fraction: float = Field(0.2, gt=0, le=1)  # 1: an evaluation-only prompt set (every prompt validation, train empty)
    seed: int = 0


def prepare_prompts(settings: DataSettings, out_dir: Path, overwrite: bool = False) -> dict[str, pl.DataFrame]:
    """`kd prepare` and the prepare stage: read and check the prompt set, split it, write the splits.

    `out_dir` must be new, empty or a prepared prompt set; `overwrite` replaces a folder of anything else.
    """
    foreign = claim_folder(out_dir, PREPARED_FOLDER, "--out", [settings.prompts], overwrite)
    splits = split_prompts(read_prompts(settings.prompts, settings.text_column), settings.validation_fraction, settings.seed)
    if foreign:
        remove_tree(out_dir)
    write_splits(splits, out_dir)
    return splits


def read_prompts(path: Path, text_column: str = "prompt", response_column: str = "response") -> pl.DataFrame:
    """Columns out: id, prompt, and response when the data has one (then the teacher scores it)."""
    path = Path(path)
    frame = read_frame(path, "prompt", (text_column, response_column))
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


def read_frame(path: Path, kind: str, text_columns: Sequence[str] = ()) -> pl.DataFrame:
    """A JSONL/CSV/Parquet file as a non-empty frame, or a one-line error naming the problem (and its line, in a text file).

    `text_columns` that the file has must hold text: a JSON number, list or object there, or a
    Parquet column of another type, is refused rather than turned into a string. A UTF-8 byte-order
    mark at the start of a text file is skipped.
    """
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{kind} file not found: {path}")
    suffix = path.suffix.lower()
    reader = READERS.get(suffix)
    if reader is None:
        raise PipelineError(f"unsupported {kind} file type '{path.suffix}' for {path} (use .jsonl, .csv or .parquet)")
    source: Path | io.BytesIO = path
    if suffix in TEXT_FORMATS:
        data = _text_file_bytes(path)
        if suffix in JSON_LINES:
            _check_json_lines(path, data, text_columns)
        source = io.BytesIO(data)
    try:
        frame = reader(source)
    except Exception as error:  # polars raises several types for malformed files
        raise PipelineError(f"cannot read {path}: {str(error).splitlines()[0]}") from error
    if frame.height == 0:
        raise PipelineError(f"{path} has no rows")
    if suffix not in (".csv",):  # CSV has no types: a prompt "42" is text there
        for column in (c for c in text_columns if c in frame.columns and frame.schema[c] not in (pl.String, pl.Null)):
            raise PipelineError(f"{path}: column '{column}' holds {frame.schema[column]} values, not text")
    return frame


def _text_file_bytes(path: Path) -> bytes:
    """The file's bytes without a byte-order mark; the line of the first bad byte named, and an empty file called empty."""
    data = path.read_bytes().removeprefix(UTF8_BOM)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise PipelineError(f"{path} is not valid UTF-8: byte 0x{data[error.start]:02x} on line {line}") from error
    if not text.strip():
        raise PipelineError(f"{path} has no rows")
    return data


def _check_json_lines(path: Path, data: bytes, text_columns: Sequence[str]) -> None:
    """Each non-empty line one JSON object whose text columns hold strings, or the first line that is not."""
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise PipelineError(f"{path}: line {number} is not valid JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(record, dict):
            raise PipelineError(f"{path}: line {number} is not a JSON object")
        for column in text_columns:
            value = record.get(column)
            if value is not None and not isinstance(value, str):
                raise PipelineError(f"{path}: line {number}: '{column}' is {JSON_TYPES.get(type(value), type(value).__name__)}, not text (quote it)")


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
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_marker(out_dir, PREPARED_FOLDER)
    except OSError as error:
        raise write_error(out_dir, error) from error
    for name, frame in splits.items():
        with atomic_path(out_dir / f"{name}.parquet") as tmp:
            frame.write_parquet(tmp)


def read_split(prepared_dir: Path, split: str) -> pl.DataFrame:
    path = Path(prepared_dir) / f"{split}.parquet"
    if not path.exists():
        raise PipelineError(f"prepared split not found: {path} (run the prepare stage first)")
    return pl.read_parquet(path)
