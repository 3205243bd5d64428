"""Stream a top-k cache into padded training batches without loading it whole.

Positions may list different numbers of ids (compact caches drop near-zero entries; sampled caches
hold as many unique ids as were drawn): the batch pads each position to the batch's widest with
id PAD_ID and log-prob -inf, which the losses treat as absent.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from queue import Empty, Queue
from typing import TypeVar

import numpy as np
import pyarrow as pa
import torch

from pipeline.cache.codec import CacheRows, decode, padded_entries
from pipeline.cache.encoding import segment_index, segment_starts
from pipeline.cache.reader import Cache, CachedShard, iter_record_batches
from pipeline.cache.schema import FLOAT32_BLOCK, EncodingBlock
from pipeline.errors import PipelineError
from pipeline.lm.batch import PAD_ID, TopKBatch

T = TypeVar("T")


def to_topk_batch(records: pa.RecordBatch | CacheRows, block: EncodingBlock = FLOAT32_BLOCK) -> TopKBatch:
    """Vectorised conversion of shard rows (in the encoding `block`, default float32) or decoded rows."""
    rows = records if isinstance(records, CacheRows) else decode(records, block)
    seq_lengths, starts = rows.seq_lengths, rows.response_start
    batch, width = len(seq_lengths), int(seq_lengths.max())
    input_ids = np.full((batch, width), PAD_ID, dtype=np.int64)
    mask = np.arange(width)[None, :] < seq_lengths[:, None]
    input_ids[mask] = rows.input_ids
    positions = rows.positions
    row_of = segment_index(positions)
    token_index = starts[row_of] + np.arange(positions.sum()) - segment_starts(positions)[row_of]
    ids, logprobs, counts = padded_entries(rows)
    return TopKBatch(
        input_ids=torch.from_numpy(input_ids),
        attention_mask=torch.from_numpy(mask.astype(np.int64)),
        rows=torch.from_numpy(row_of),
        columns=torch.from_numpy(token_index - 1),
        targets=torch.from_numpy(input_ids[row_of, token_index]),
        listed_ids=torch.from_numpy(ids),
        listed_logprobs=torch.from_numpy(logprobs),
        token_logprobs=torch.from_numpy(rows.token_logprobs),
        response_start=torch.from_numpy(starts),
        counts=None if counts is None else torch.from_numpy(counts),
    )


def process_shards(cache: Cache, split: str, rng: np.random.Generator | None, rank: int = 0, world: int = 1) -> list[CachedShard]:
    """The shards one process streams: all of them, shuffled by `rng` when given, dealt round-robin to `world` processes."""
    shards = cache.shards(split)
    if rng is not None:
        shards = [shards[i] for i in rng.permutation(len(shards))]
    return shards[rank::world]


def count_batches(cache: Cache, split: str, batch_size: int, seed: int, shuffle_rows: int = 256, rank: int = 0, world: int = 1) -> int:
    """How many batches `stream_batches` yields with these arguments, from the manifest alone."""
    shards = process_shards(cache, split, np.random.default_rng(seed), rank, world)
    return math.ceil(sum(shard.rows for shard in shards) / batch_size)


def stream_batches(cache: Cache, split: str, batch_size: int, seed: int | None = None, shuffle_rows: int = 256, rank: int = 0, world: int = 1, skip: int = 0) -> Iterator[TopKBatch]:
    """Yield TopKBatch of `batch_size` sequences (the last may be smaller); with a seed, shards and rows come shuffled.

    Rows stream shard after shard, shuffled within windows of `shuffle_rows` rows of a shard, so
    memory stays bounded; a batch takes its rows across shard boundaries, so `batch_size` means what
    it says whatever the shard size. With `world` processes, process `rank` streams its own disjoint
    share of the shards. `skip` batches are passed over without being decoded: where a resumed run
    picks the stream up again.
    """
    rng = np.random.default_rng(seed) if seed is not None else None
    window = shuffle_rows if rng is not None else batch_size
    skip_rows, carried = skip * batch_size, None
    for records in iter_record_batches(process_shards(cache, split, rng, rank, world), window):
        order = None if rng is None else rng.permutation(records.num_rows)  # drawn even when skipped: the stream stays the same
        if skip_rows >= records.num_rows:
            skip_rows -= records.num_rows
            continue
        table = pa.Table.from_batches([records if order is None else records.take(pa.array(order))]).slice(skip_rows)
        skip_rows = 0
        if carried is not None:
            table = pa.concat_tables([carried, table])
        whole = table.num_rows - table.num_rows % batch_size
        for start in range(0, whole, batch_size):
            yield checked_batch(table.slice(start, batch_size), cache, split)
        carried = table.slice(whole) if whole < table.num_rows else None
    if carried is not None:
        yield checked_batch(carried, cache, split)


def checked_batch(records: pa.Table, cache: Cache, split: str) -> TopKBatch:
    """Decode rows into a batch, after checking every id against the vocabulary."""
    rows = decode(records, cache.encoding)
    outside = rows.id_outside(cache.vocab_size)
    if outside:
        raise PipelineError(f"{cache.path}, {split} split: {outside}; the cache is damaged: run `kd verify {cache.path}`")
    return to_topk_batch(rows)


def prefetched(batches: Iterator[T], depth: int = 4) -> Iterator[T]:
    """Iterate `batches` with up to `depth` items made ahead in a background thread.

    Decoding shards (numpy, pyarrow and zstd release the GIL) then overlaps the training step; an
    exception in the thread is raised in the consumer.
    """
    queue: Queue = Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in batches:
                if stop.is_set():
                    return
                queue.put(item)
            queue.put(done)
        except BaseException as error:  # handed to the consumer
            queue.put(error)

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                queue.get_nowait()
            except Empty:
                thread.join(timeout=0.01)
