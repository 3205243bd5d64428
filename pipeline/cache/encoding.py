"""Pure numpy encode/decode pieces of the compact cache encoding (format version 2).

Why these pieces: a top-k position is a handful of (id, probability) pairs plus the mass outside
them. Probabilities are quantised uniformly in sqrt(p), where the KL cost of a rounding error is
about the same for every p (sqrt is the Fisher/Hellinger-uniform coordinate); the tail mass and the
actual token's log-prob are quantised in log space. Ids are sorted ascending within a position and
stored as gaps, split into byte planes so that zstd's Huffman stage codes each plane with its own
table. Everything here works on flat arrays for a whole record batch: no Python loop per position.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import PipelineError

MAX_LEVEL_U16 = 0xFFFF


def byte_width(largest: int) -> int:
    """The fewest whole bytes that hold values 0..largest."""
    return max(1, (int(largest).bit_length() + 7) // 8)


def quantize_sqrt(probs: np.ndarray, step: float) -> np.ndarray:
    """Level round(sqrt(p) / step): |sqrt(p) - level * step| <= step / 2."""
    return np.rint(np.sqrt(np.clip(probs, 0.0, 1.0)) / step).astype(np.int64)


def dequantize_sqrt(levels: np.ndarray, step: float) -> np.ndarray:
    """sqrt(p) of each level; level 0 decodes to step / 4, the middle of [0, step / 2], so a kept entry is never 0."""
    return np.maximum(levels.astype(np.float64) * step, step / 4)


def quantize_neglog(logprobs: np.ndarray, step: float) -> np.ndarray:
    """Level round(-log p / step), clipped to 16 bits: |log p + level * step| <= step / 2 inside the range."""
    return np.clip(np.rint(-np.asarray(logprobs, dtype=np.float64) / step), 0, MAX_LEVEL_U16).astype(np.int64)


def dequantize_neglog(levels: np.ndarray, step: float) -> np.ndarray:
    return -levels.astype(np.float64) * step


def segment_starts(lengths: np.ndarray) -> np.ndarray:
    """Index of the first element of each segment in the flat array."""
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return starts


def segment_index(lengths: np.ndarray) -> np.ndarray:
    """Segment number of every element of the flat array."""
    return np.repeat(np.arange(len(lengths)), lengths)


def ids_to_gaps(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Gaps of ids sorted strictly ascending within each segment: first id, then id - previous - 1 (>= 0)."""
    previous = np.concatenate([[-1], ids[:-1]]).astype(np.int64)
    previous[segment_starts(lengths)[lengths > 0]] = -1
    gaps = ids.astype(np.int64) - previous - 1
    if (gaps < 0).any():
        raise PipelineError("entry ids repeat within a position (each listed id must be unique)")
    return gaps


def gaps_to_ids(gaps: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Inverse of ids_to_gaps: a cumulative sum that restarts at every segment."""
    steps = gaps.astype(np.int64) + 1
    total = np.cumsum(steps)
    before = np.concatenate([[0], total])[segment_starts(lengths)]
    return total - np.repeat(before, lengths) - 1


def pack_planes(values: np.ndarray, width: int, row_lengths: np.ndarray, planes: range) -> tuple[np.ndarray, np.ndarray]:
    """Little-endian bytes `planes` of each value, laid out plane after plane within each row.

    Returns the flat uint8 data and each row's byte length. One plane of a row is contiguous, so a
    stream of only low bytes (near uniform) is not mixed with high bytes (mostly small).
    """
    values = np.asarray(values, dtype=np.int64)
    if len(values) and (values.min() < 0 or values.max() >= 1 << (8 * width)):
        raise PipelineError(f"a value does not fit in {width} byte(s)")
    raw = values.astype("<u8").view(np.uint8).reshape(-1, 8)[:, list(planes)]
    count = len(planes)
    row = segment_index(row_lengths)
    starts = segment_starts(row_lengths)
    local = np.arange(len(values)) - starts[row]
    out = np.empty(len(values) * count, dtype=np.uint8)
    for p in range(count):
        out[count * starts[row] + p * row_lengths[row] + local] = raw[:, p]
    return out, row_lengths * count


def unpack_planes(data: np.ndarray, row_lengths: np.ndarray, planes: range) -> np.ndarray:
    """Inverse of pack_planes: the values (only the bytes in `planes`; the others are 0)."""
    count = len(planes)
    if len(data) != int(row_lengths.sum()) * count:
        raise PipelineError(f"a byte stream holds {len(data)} bytes where its entry counts call for {int(row_lengths.sum()) * count}")
    row = segment_index(row_lengths)
    starts = segment_starts(row_lengths)
    local = np.arange(len(row)) - starts[row]
    values = np.zeros(len(row), dtype=np.int64)
    for p, plane in enumerate(planes):
        values |= data[count * starts[row] + p * row_lengths[row] + local].astype(np.int64) << (8 * plane)
    return values
