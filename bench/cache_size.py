"""Bytes per token, decoding error and speed of cache encodings, measured on one cache in one run.

Every shard of the cache is decoded once (the reference), then re-encoded in each setting in
memory: shard bytes as `write_shard` writes them (Parquet, zstd), KL(original || decoded) per
position between the full-vocabulary distributions the two caches imply (listed ids with their
probabilities, the tail spread uniformly over the unlisted ids; pipeline.cache.decoding_error), the
largest error of the actual token's log-prob, and the time to encode + write and to read + decode
into padded batch arrays, against the same for the version 1 (float32) shards. Times are the best
of `--repeats` passes. With `--teacher` and `--draws`, the teacher also rescores the cache's
sequences through the real sampled path (`score(..., draws=N)`) and the resulting sampled caches
are sized the same way (their decoding error is not a KL to a top-k cache: see the quality bench).

    python -m bench.cache_size --cache data/cache [--teacher models/smollm2-135m-instruct --draws 16 32 64]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipeline.cache import Cache
from pipeline.cache.codec import CacheEncoding, CacheRows, decode, encode, padded_entries
from pipeline.cache.convert import convert_cache
from pipeline.cache.decoding_error import position_kl
from pipeline.cache.rows import to_cache_rows
from pipeline.cache.schema import EncodingBlock, Float32Block, Sampled, TopK
from pipeline.cache.writer import shard_bytes
from pipeline.errors import run_main
from pipeline.lm.streaming import stream_batches

SETTINGS: list[tuple[str, CacheEncoding]] = [
    ("float32 (v2 float32 = v1 columns)", CacheEncoding(encoding="float32")),
    ("compact s=0.012 drop zstd19 (default)", CacheEncoding()),
    ("compact s=0.012 drop zstd3", CacheEncoding(zstd_level=3)),
    ("compact s=0.012 keep-zero zstd19", CacheEncoding(drop_zero_level=False)),
    ("compact s=0.008 drop zstd19", CacheEncoding(sqrt_step=0.008)),
    ("compact s=0.010 drop zstd19", CacheEncoding(sqrt_step=0.010)),
    ("compact s=0.016 drop zstd19", CacheEncoding(sqrt_step=0.016)),
    ("compact s=0.024 drop zstd19", CacheEncoding(sqrt_step=0.024)),
]


def best_time(action: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = action()
        best = min(best, time.perf_counter() - started)
    return best, result


def read_decoded(data: list[bytes], block: EncodingBlock) -> list[CacheRows]:
    """What a training step needs from a shard: read, decode, pad the entries into [positions, widest]."""
    rows = [decode(pq.read_table(io.BytesIO(raw)), block) for raw in data]
    for r in rows:
        padded_entries(r)
    return rows


def measure(originals: list[CacheRows], source: list[bytes], source_block: EncodingBlock, vocab: int, k: int, repeats: int) -> list[dict[str, Any]]:
    positions = sum(len(r.entries) for r in originals)
    base_read, _ = best_time(lambda: read_decoded(source, source_block), repeats)
    results = [{"name": f"source files (v{1 if isinstance(source_block, Float32Block) else 2}, {source_block.name})", "bytes": sum(map(len, source)), "read": base_read}]
    for name, settings in SETTINGS:
        block = settings.block(vocab, TopK(k))
        level = block.zstd_level
        encode_s, data = best_time(lambda block=block, level=level: [shard_bytes(encode(r, block), level) for r in originals], repeats)
        read_s, decoded = best_time(lambda data=data, block=block: read_decoded(data, block), repeats)
        kl = np.concatenate([position_kl(o, d, vocab) for o, d in zip(originals, decoded)])
        token_error = max(float(np.abs(o.token_logprobs.astype(np.float64) - d.token_logprobs).max()) for o, d in zip(originals, decoded))
        listed = sum(int(d.entries.sum()) for d in decoded) / positions
        results.append(
            {"name": name, "bytes": sum(map(len, data)), "encode": encode_s, "read": read_s, "kl_mean": float(kl.mean()), "kl_max": float(kl.max()), "token_error": token_error, "listed": listed}
        )
    for row in results:
        row["bytes_per_token"] = row["bytes"] / positions
        row["read_vs_source"] = row["read"] / base_read
    return results


def sampled_sizes(originals: list[CacheRows], teacher: Path, draws: list[int], vocab: int) -> list[dict[str, Any]]:
    """Bytes and unique ids per position of sampled caches of the same sequences, drawn by the teacher stage's own code."""
    from pipeline.backends.transformers_backend import TransformersBackend

    backend, results = TransformersBackend(teacher), []
    for n in draws:
        block = CacheEncoding().block(vocab, Sampled(n))
        size, listed = 0, 0
        for rows in originals:
            sequences = [s.tolist() for s in np.split(rows.input_ids, np.cumsum(rows.seq_lengths)[:-1])]
            sampled = to_cache_rows(rows.row_ids, backend.score(sequences, rows.response_start.tolist(), 1, draws=n, seed=0))
            size += len(shard_bytes(encode(sampled, block), block.zstd_level))
            listed += int(sampled.entries.sum())
        results.append({"name": f"sampled N={n} (compact)", "bytes": size, "listed": listed})
    return results


def column_bytes(originals: list[CacheRows], block: EncodingBlock) -> dict[str, float]:
    """Compressed bytes per token of each column (Parquet metadata), plus the file's own overhead."""
    sizes: dict[str, float] = {}
    positions = sum(len(r.entries) for r in originals)
    for rows in originals:
        raw = shard_bytes(encode(rows, block), block.zstd_level)
        meta = pq.ParquetFile(io.BytesIO(raw)).metadata
        columns = 0
        for group in range(meta.num_row_groups):
            for i in range(meta.num_columns):
                column = meta.row_group(group).column(i)
                name = column.path_in_schema.split(".")[0]
                sizes[name] = sizes.get(name, 0) + column.total_compressed_size
                columns += column.total_compressed_size
        sizes["(file: footer, headers)"] = sizes.get("(file: footer, headers)", 0) + len(raw) - columns
    return {name: size / positions for name, size in sizes.items()}


def stream_rate(cache: Path, repeats: int) -> float:
    """Positions per second through the training reader (stream_batches, 8 sequences a batch, shuffled), all splits."""
    opened = Cache.open(cache)

    def run() -> int:
        return sum(batch.num_tokens for split in opened.splits for batch in stream_batches(opened, split, 8, seed=0))

    seconds, positions = best_time(run, repeats)
    return positions / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=Path("data/cache"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--teacher", type=Path, default=None, help="teacher folder: also size sampled caches of the same sequences")
    parser.add_argument("--draws", type=int, nargs="*", default=[16, 32, 64], help="draws per position of the sampled caches (with --teacher)")
    args = parser.parse_args()
    cache = Cache.open(args.cache)
    manifest = cache.manifest
    source_block, vocab, k = manifest.encoding_block, manifest.tokenizer.vocab_size, manifest.k
    shards = [shard for split in manifest.splits for shard in cache.shards(split)]
    source = [shard.path.read_bytes() for shard in shards]
    originals = [decode(pq.read_table(io.BytesIO(raw)), source_block) for raw in source]
    positions = sum(len(r.entries) for r in originals)
    print(f"cache {args.cache}: {len(shards)} shards, {positions:,} positions, k={k}, vocabulary {vocab:,}, best of {args.repeats}")
    if not isinstance(source_block, Float32Block):
        print(f"warning: {args.cache} is {source_block.name}-encoded: decoding errors below are measured against it, not against the exact teacher output")
    results = measure(originals, source, source_block, vocab, k, args.repeats)
    if args.teacher:
        for row in sampled_sizes(originals, args.teacher, args.draws, vocab):
            results.append({**row, "bytes_per_token": row["bytes"] / positions, "listed": row["listed"] / positions})
    header = f"{'encoding':<38} {'B/token':>8} {'ids/pos':>7} {'KL mean':>9} {'KL max':>9} {'tok err':>8} {'enc pos/s':>10} {'read pos/s':>10} {'read x src':>10}"
    print(header)
    print("-" * len(header))
    for row in results:
        encode_rate = f"{positions / row['encode']:,.0f}" if "encode" in row else "-"
        read = f"{positions / row['read']:>10,.0f} {row['read_vs_source']:>10.2f}" if "read" in row else f"{'-':>10} {'-':>10}"
        kl = f"{row['kl_mean']:9.2e} {row['kl_max']:9.2e} {row['token_error']:8.4f}" if "kl_mean" in row else f"{'-':>9} {'-':>9} {'-':>8}"
        listed = f"{row['listed']:7.2f}" if "listed" in row else f"{'-':>7}"
        print(f"{row['name']:<38} {row['bytes_per_token']:8.1f} {listed} {kl} {encode_rate:>10} {read}")
    with tempfile.TemporaryDirectory() as tmp:
        convert_cache(args.cache, Path(tmp) / "compact", CacheEncoding())
        source_rate, compact_rate = stream_rate(args.cache, args.repeats), stream_rate(Path(tmp) / "compact", args.repeats)
    print(
        f"\ntraining reader (stream_batches, batch 8, shuffled): source {source_rate:,.0f} positions/s, default compact {compact_rate:,.0f} positions/s ({source_rate / compact_rate:.2f}x the source's time)"
    )
    print("\nbytes per token by column, default setting:")
    for name, size in column_bytes(originals, CacheEncoding().block(vocab, TopK(k))).items():
        print(f"  {name:<24} {size:6.2f}")


if __name__ == "__main__":
    run_main(main)
