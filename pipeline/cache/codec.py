"""Shard tables <-> flat per-position arrays, for each cache encoding.

Two encodings, named in the manifest's `encoding` block:

- `float32`: the version 1 columns (int32 ids, float32 log-probs, most likely first); exact.
- `compact` (the default for new caches): narrow `input_ids`, and per row byte streams for the
  entries (sorted ids as gaps, sqrt-quantised probabilities, the tail mass and the actual token's
  log-prob quantised in log space); see pipeline.cache.encoding and docs/cache-format.md.

Both decode to `CacheRows`, the one shape every reader works from, so a reader never branches on
the encoding. `storage` is `topk` (the teacher's most likely ids), `sampled` (unique ids drawn
from the teacher with their counts) or `hybrid` (the exact top-h head, count 0, plus unique ids drawn
from the rest with their counts); sampled and hybrid need the compact encoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from pipeline.cache.encoding import (
    byte_width,
    dequantize_neglog,
    dequantize_sqrt,
    gaps_to_ids,
    ids_to_gaps,
    pack_planes,
    quantize_neglog,
    quantize_sqrt,
    segment_index,
    segment_starts,
    unpack_planes,
)
from pipeline.cache.schema import FLOAT32_BLOCK, CompactBlock, EncodingBlock, Float32Block, Storage
from pipeline.errors import PipelineError
from pipeline.settings import Number, Settings

EncodingName = Literal["compact", "float32"]
LOG_LEVEL_BYTES = 2  # tail and token log-prob levels: 16 bits
MIN_TAIL = 1e-30  # a smaller tail (float32 sums of a full top-k reach 1) is stored as this: never exactly 0

V1_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("response_start", pa.int32(), nullable=False),
        pa.field("topk_ids", pa.list_(pa.list_(pa.int32())), nullable=False),
        pa.field("topk_logprobs", pa.list_(pa.list_(pa.float32())), nullable=False),
        pa.field("token_logprobs", pa.list_(pa.float32()), nullable=False),
    ]
)
COMPACT_STREAMS = ("entries", "id_gap_lo", "id_gap_hi", "prob_levels", "tail_levels", "token_logprob_levels")


class CacheEncoding(Settings):
    """What `teacher.cache` in params.yaml chooses for a new cache (and `kd convert --encoding`)."""

    encoding: EncodingName = "compact"
    sqrt_step: Number = Field(0.012, ge=0.001, le=0.5)  # probabilities: |sqrt(p) - decoded| <= sqrt_step / 2 before renormalising
    drop_zero_level: bool = True  # top-k entries with p < (sqrt_step / 2)^2 join the tail (never a position's top entry)
    tail_log_step: Number = Field(0.05, ge=0.0001, le=1)  # log of the mass outside the listed ids: error <= step / 2
    token_logprob_step: Number = Field(0.0078125, ge=0.0001, le=1)  # log-prob of the actual token: error <= step / 2 (1/128)
    zstd_level: int = Field(19, ge=1, le=22)

    def block(self, vocab_size: int, storage: Storage) -> EncodingBlock:
        """The manifest's `encoding` block: everything a reader needs, with the declared error bounds."""
        if self.encoding == "float32":
            if storage.drawn:
                raise PipelineError(f"{storage.name} caches need the compact encoding")
            return FLOAT32_BLOCK
        return CompactBlock(
            name="compact",
            storage=storage.name,
            id_bytes=byte_width(vocab_size - 1),
            entry_bytes=byte_width(storage.most_ids(vocab_size)),
            level_bytes=byte_width(int(np.ceil(1 / self.sqrt_step))),
            input_ids="uint16" if vocab_size <= 1 << 16 else "uint32",
            sqrt_step=self.sqrt_step,
            drop_zero_level=self.drop_zero_level and not storage.drawn,
            tail_log_step=self.tail_log_step,
            token_logprob_step=self.token_logprob_step,
            zstd_level=self.zstd_level,
            error_bound={"sqrt_prob": self.sqrt_step / 2, "tail_logprob": self.tail_log_step / 2, "token_logprob": self.token_logprob_step / 2},
            **storage.block_fields(),
        )


def shard_schema(block: EncodingBlock) -> pa.Schema:
    if isinstance(block, Float32Block):
        return V1_SCHEMA
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("input_ids", pa.list_(pa.uint16() if block.input_ids == "uint16" else pa.uint32()), nullable=False),
        pa.field("response_start", pa.int32(), nullable=False),
    ]
    streams = COMPACT_STREAMS + (("counts",) if block.drawn else ())
    return pa.schema(fields + [pa.field(name, pa.binary(), nullable=False) for name in streams])


@dataclass
class CacheRows:
    """A batch of cache rows as flat arrays: what every encoding decodes to and encodes from.

    Per row: `row_ids`, `seq_lengths`, `response_start`. Per cached position (row after row):
    `entries` (how many ids are listed), `token_logprobs`. Per entry (position after position,
    most likely first within a position): `entry_ids`, `entry_logprobs`, and for sampled and hybrid
    caches `entry_counts` (how often the id was drawn; 0 marks a hybrid cache's head id).
    """

    row_ids: list[str]
    input_ids: np.ndarray  # int64, all sequences concatenated
    seq_lengths: np.ndarray  # int64 [R]
    response_start: np.ndarray  # int64 [R]
    entries: np.ndarray  # int64 [P]
    entry_ids: np.ndarray  # int64 [E]
    entry_logprobs: np.ndarray  # float32 [E]
    token_logprobs: np.ndarray  # float32 [P]
    entry_counts: np.ndarray | None = None  # int64 [E], sampled and hybrid caches only

    @property
    def positions(self) -> np.ndarray:
        """Cached positions per row."""
        return self.seq_lengths - self.response_start

    def id_outside(self, vocab_size: int) -> str | None:
        """The first input or listed id outside 0 .. vocab_size - 1, described with its row, or None.

        A reader checks every batch before using it: an index past the embedding table would crash a
        student with a traceback, or on a GPU read another row's weights.
        """
        for name, ids, row_of in (("input", self.input_ids, np.repeat(np.arange(len(self.row_ids)), self.seq_lengths)), ("listed", self.entry_ids, None)):
            bad = np.flatnonzero((ids < 0) | (ids >= vocab_size))
            if len(bad):
                if row_of is None:
                    row_of = np.repeat(np.repeat(np.arange(len(self.row_ids)), self.positions), self.entries)
                return f"{name} id {int(ids[bad[0]])} of row '{self.row_ids[row_of[bad[0]]]}' is outside the vocabulary (0..{vocab_size - 1})"
        return None


def longest_sequence(table: pa.Table | pa.RecordBatch) -> int:
    """The most input ids a row of a shard holds (0 for no rows): what a student's positions must cover."""
    lengths = pc.list_value_length(table.column("input_ids"))
    return int(pc.max(lengths).as_py() or 0)


def flat_values(column: pa.ChunkedArray | pa.Array, depth: int) -> np.ndarray:
    """The values of a nested list column as one flat numpy array, without a Python object per value."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    for _ in range(depth):
        column = pc.list_flatten(column)
    return column.to_numpy(zero_copy_only=False, writable=True)


def _offsets(lengths: Sequence[int] | np.ndarray) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.array(offsets)


def list_array(values: np.ndarray | pa.Array, lengths: Sequence[int] | np.ndarray, value_type: pa.DataType | None = None) -> pa.ListArray:
    return pa.ListArray.from_arrays(_offsets(lengths), values if isinstance(values, pa.Array) else pa.array(values, type=value_type))


def _binary(data: np.ndarray, row_bytes: np.ndarray) -> pa.BinaryArray:
    offsets = np.zeros(len(row_bytes) + 1, dtype=np.int32)
    np.cumsum(row_bytes, out=offsets[1:])
    return pa.BinaryArray.from_buffers(pa.binary(), len(row_bytes), [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data, dtype=np.uint8))])


def _stream(records: pa.RecordBatch | pa.Table, name: str, row_lengths: np.ndarray, planes: range) -> np.ndarray:
    """One byte stream of a record batch, checked row by row against the lengths its counts imply."""
    column = records.column(name)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    actual = pc.binary_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
    expected = row_lengths * len(planes)
    if not np.array_equal(actual, expected):
        bad = int(np.argmax(actual != expected))
        raise PipelineError(f"column {name} has a row of {actual[bad]} bytes where its counts call for {expected[bad]}")
    buffers = column.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int32)[column.offset : column.offset + len(column) + 1]
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None and len(column) else np.zeros(0, np.uint8)
    return unpack_planes(data[offsets[0] : offsets[-1]], row_lengths, planes)


def decode(records: pa.RecordBatch | pa.Table, block: EncodingBlock) -> CacheRows:
    """Decode a record batch (or table) of shard rows; a malformed row raises PipelineError."""
    seq_lengths = pc.list_value_length(records.column("input_ids")).to_numpy(zero_copy_only=False).astype(np.int64)
    common = dict(
        row_ids=records.column("id").to_pylist(),
        input_ids=flat_values(records.column("input_ids"), 1).astype(np.int64),
        seq_lengths=seq_lengths,
        response_start=records.column("response_start").to_numpy(zero_copy_only=False).astype(np.int64),
    )
    if isinstance(block, Float32Block):
        return CacheRows(
            **common,
            entries=pc.list_value_length(pc.list_flatten(records.column("topk_ids"))).to_numpy(zero_copy_only=False).astype(np.int64),
            entry_ids=flat_values(records.column("topk_ids"), 2).astype(np.int64),
            entry_logprobs=flat_values(records.column("topk_logprobs"), 2).astype(np.float32),
            token_logprobs=flat_values(records.column("token_logprobs"), 1).astype(np.float32),
        )
    positions = common["seq_lengths"] - common["response_start"]
    if (positions < 0).any():
        raise PipelineError("response_start is beyond the end of a sequence")
    entries = _stream(records, "entries", positions, range(block.entry_bytes))
    row_entries = np.bincount(segment_index(positions), weights=entries, minlength=len(positions)).astype(np.int64)
    gaps = _stream(records, "id_gap_lo", row_entries, range(1)) | _stream(records, "id_gap_hi", row_entries, range(1, block.id_bytes))
    levels = _stream(records, "prob_levels", row_entries, range(block.level_bytes))
    tail = dequantize_neglog(_stream(records, "tail_levels", positions, range(LOG_LEVEL_BYTES)), block.tail_log_step)
    token = dequantize_neglog(_stream(records, "token_logprob_levels", positions, range(LOG_LEVEL_BYTES)), block.token_logprob_step)
    counts = _stream(records, "counts", row_entries, range(block.count_bytes or 0)) if block.drawn else None
    ids = gaps_to_ids(gaps, entries)
    position = segment_index(entries)
    probs = dequantize_sqrt(levels, block.sqrt_step) ** 2
    total = np.bincount(position, weights=probs, minlength=len(entries)) + np.exp(tail)
    logprobs = np.log(probs) - np.log(total)[position]
    top_level = int(levels.max(initial=0)) + 1
    order = np.argsort(position * top_level + (top_level - 1 - levels), kind="stable")  # most likely first; ties keep ascending ids
    return CacheRows(
        **common,
        entries=entries,
        entry_ids=ids[order],
        entry_logprobs=logprobs[order].astype(np.float32),
        token_logprobs=token.astype(np.float32),
        entry_counts=None if counts is None else counts[order],
    )


def encode(rows: CacheRows, block: EncodingBlock) -> pa.Table:
    """A shard table in the given encoding; the tail is 1 - the sum of the listed probabilities given."""
    schema = shard_schema(block)
    head = [pa.array(rows.row_ids, pa.string()), None, pa.array(rows.response_start, pa.int32())]
    if isinstance(block, Float32Block):
        if rows.entry_counts is not None:
            raise PipelineError("sampled and hybrid caches need the compact encoding")
        positions = rows.positions
        head[1] = list_array(rows.input_ids.astype(np.int32), rows.seq_lengths)
        nested = [list_array(values, rows.entries) for values in (rows.entry_ids.astype(np.int32), rows.entry_logprobs.astype(np.float32))]
        per_position = [list_array(inner, positions) for inner in nested]
        return pa.Table.from_arrays(head + per_position + [list_array(rows.token_logprobs.astype(np.float32), positions)], schema=schema)
    head[1] = list_array(rows.input_ids, rows.seq_lengths, schema.field("input_ids").type.value_type)
    return pa.Table.from_arrays(head + _compact_streams(rows, block), schema=schema)


def _compact_streams(rows: CacheRows, block: CompactBlock) -> list[pa.BinaryArray]:
    positions, entries = rows.positions, rows.entries.astype(np.int64)
    position = segment_index(entries)
    probs = np.exp(rows.entry_logprobs.astype(np.float64))
    levels = quantize_sqrt(probs, block.sqrt_step)
    keep = np.ones(len(levels), dtype=bool)
    if block.drop_zero_level:
        by_prob = np.lexsort((-probs, position))
        top = np.zeros(len(levels), dtype=bool)
        top[by_prob[segment_starts(entries)[entries > 0]]] = True
        keep = (levels > 0) | top
    kept_mass = np.bincount(position[keep], weights=probs[keep], minlength=len(entries))
    dropped_mass = np.bincount(position[~keep], weights=probs[~keep], minlength=len(entries))
    tail = np.clip(np.maximum(1 - kept_mass, dropped_mass), MIN_TAIL, 1)  # dropped entries join the tail
    entries = np.bincount(position[keep], minlength=len(entries)).astype(np.int64)
    order = np.flatnonzero(keep)[np.lexsort((rows.entry_ids[keep], position[keep]))]
    ids, levels = rows.entry_ids[order], levels[order]
    if len(ids) and (ids.min() < 0 or ids.max() >= 1 << (8 * block.id_bytes)):
        raise PipelineError(f"an entry id does not fit the encoding's {block.id_bytes} byte(s)")
    row_entries = np.bincount(segment_index(positions), weights=entries, minlength=len(positions)).astype(np.int64)
    gaps = ids_to_gaps(ids, entries)
    tail_levels = quantize_neglog(np.log(tail), block.tail_log_step)
    streams = [
        pack_planes(entries, block.entry_bytes, positions, range(block.entry_bytes)),
        pack_planes(gaps, block.id_bytes, row_entries, range(1)),
        pack_planes(gaps, block.id_bytes, row_entries, range(1, block.id_bytes)),
        pack_planes(levels, block.level_bytes, row_entries, range(block.level_bytes)),
        pack_planes(tail_levels, LOG_LEVEL_BYTES, positions, range(LOG_LEVEL_BYTES)),
        pack_planes(quantize_neglog(rows.token_logprobs, block.token_logprob_step), LOG_LEVEL_BYTES, positions, range(LOG_LEVEL_BYTES)),
    ]
    if block.drawn:
        if rows.entry_counts is None:
            raise PipelineError(f"a {block.storage} cache needs a count for every entry")
        count_bytes = block.count_bytes or 0
        streams.append(pack_planes(rows.entry_counts[order], count_bytes, row_entries, range(count_bytes)))
    elif rows.entry_counts is not None:
        raise PipelineError("counts given for a top-k cache (use a sampled encoding block)")
    return [_binary(data, row_bytes) for data, row_bytes in streams]


def padded_entries(rows: CacheRows) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    return pad_entries(rows.entries, rows.entry_ids, rows.entry_logprobs, rows.entry_counts)


def pad_entries(entries: np.ndarray, entry_ids: np.ndarray, entry_logprobs: np.ndarray, entry_counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """[P, widest] ids (0), log-probs (-inf) and counts (0) from the flat per-position lists."""
    width = int(entries.max()) if len(entries) else 0
    position = segment_index(entries)
    slot = np.arange(len(position)) - segment_starts(entries)[position]
    ids = np.full((len(entries), width), 0, dtype=np.int64)
    logprobs = np.full((len(entries), width), -np.inf, dtype=np.float32)
    ids[position, slot] = entry_ids
    logprobs[position, slot] = entry_logprobs
    if entry_counts is None:
        return ids, logprobs, None
    counts = np.zeros((len(entries), width), dtype=np.float32)
    counts[position, slot] = entry_counts
    return ids, logprobs, counts


def rows_to_dicts(rows: CacheRows) -> list[dict[str, Any]]:
    """Python rows in the version 1 shape (plus `counts` when sampled): for tests and small tools."""
    entry_bounds = np.cumsum(rows.entries)[:-1]
    per_entry = {"topk_ids": rows.entry_ids, "topk_logprobs": rows.entry_logprobs}
    if rows.entry_counts is not None:
        per_entry["counts"] = rows.entry_counts
    per_position = {name: [part.tolist() for part in np.split(values, entry_bounds)] for name, values in per_entry.items()}
    position_bounds = np.concatenate([[0], np.cumsum(rows.positions)])
    sequences = np.split(rows.input_ids, np.cumsum(rows.seq_lengths)[:-1])
    out = []
    for r, row_id in enumerate(rows.row_ids):
        first, last = position_bounds[r], position_bounds[r + 1]
        row: dict[str, Any] = {"id": row_id, "input_ids": sequences[r].tolist(), "response_start": int(rows.response_start[r])}
        row.update({name: values[first:last] for name, values in per_position.items()})
        row["token_logprobs"] = rows.token_logprobs[first:last].tolist()
        out.append(row)
    return out
