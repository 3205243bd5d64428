"""How far a re-encoded cache is from the original: the error definition docs/cache-format.md's table reports.

Each cache implies a full-vocabulary distribution per position: a listed id has its probability,
and the remaining mass (the tail) is spread uniformly over the V - n ids not listed. The decoding
error of a position is KL(original || decoded) between those two distributions. It bounds the
change any loss that sees the listed ids plus one tail bucket can notice.
"""

from __future__ import annotations

import numpy as np

from pipeline.cache.codec import CacheRows
from pipeline.cache.encoding import segment_index


def _implied(rows: CacheRows, vocab_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    probs = np.exp(rows.entry_logprobs.astype(np.float64))
    position = segment_index(rows.entries)
    tail = np.clip(1 - np.bincount(position, weights=probs, minlength=len(rows.entries)), 0, 1)
    return probs, position, tail / np.maximum(vocab_size - rows.entries, 1)


def position_kl(original: CacheRows, decoded: CacheRows, vocab_size: int) -> np.ndarray:
    """KL(original || decoded) per cached position, in nats, vectorised over the union of listed ids."""
    if len(original.entries) != len(decoded.entries):
        raise ValueError("the two caches hold different numbers of positions")
    p, p_pos, p_unlisted = _implied(original, vocab_size)
    q, q_pos, q_unlisted = _implied(decoded, vocab_size)
    keys = np.concatenate([p_pos * vocab_size + original.entry_ids, q_pos * vocab_size + decoded.entry_ids])
    union, inverse = np.unique(keys, return_inverse=True)
    position = union // vocab_size
    left, right = p_unlisted[position], q_unlisted[position]
    left[inverse[: len(p)]] = p
    right[inverse[len(p) :]] = q
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(left > 0, left * np.log(left / right), 0.0)
        rest = np.where(p_unlisted > 0, p_unlisted * np.log(p_unlisted / q_unlisted), 0.0)
    listed = np.bincount(position, minlength=len(original.entries))
    return np.bincount(position, weights=terms, minlength=len(original.entries)) + (vocab_size - listed) * rest
