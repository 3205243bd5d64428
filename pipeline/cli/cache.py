"""`kd finalize`, `kd verify`, `kd inspect`, `kd convert`: working with a cache of any task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from pipeline.cli.common import Overwrite, cache_location, clean_errors, echo_fill_result

app = typer.Typer()


@app.command()
@clean_errors
def finalize(
    path: Path = typer.Argument(..., parser=cache_location, help="cache directory (or object-store URL) that parallel workers filled"),
    rehash: bool = typer.Option(False, "--rehash", help="checksum the shards as they are now, even those an existing manifest lists with other checksums"),
) -> None:
    """Write manifest.json once every shard exists (the worker that finishes last does this itself)."""
    from pipeline.cache import finalize_from_plan

    echo_fill_result(finalize_from_plan(path, rehash), path, 0, "tokens", "tokens")


@app.command()
@clean_errors
def verify(path: Path = typer.Argument(..., parser=cache_location, help="cache directory or object-store URL")) -> None:
    """Check a cache against its manifest: checksums, schema, counts, value sanity, ids in the vocabulary."""
    from pipeline.cache import Cache
    from pipeline.cache.format import VOCABULARY_ONLY
    from pipeline.cache.verify import verify_cache

    problems = verify_cache(path)
    for problem in problems:
        typer.echo(f"error: {problem}", err=True)
    if problems:
        raise typer.Exit(1)
    manifest = Cache.open(path).manifest
    splits = manifest.splits
    shards = len(manifest.shard_entries)
    typer.echo(f"ok: {path}: {shards} shards, {sum(split.rows for split in splits.values())} rows, {manifest.tokens} tokens and the shipped tokenizer match the manifest")
    if manifest.tokenizer.definition_sha256 is None:
        typer.echo(f"note: {VOCABULARY_ONLY}")


@app.command()
@clean_errors
def inspect(path: Path = typer.Argument(..., parser=cache_location, help="cache directory or object-store URL"), as_json: bool = typer.Option(False, "--json")) -> None:
    """Print what a cache holds: rows, tokens, bytes per token, k, retained top-k mass, provenance."""
    from pipeline.cache.summary import format_summary, summarize_cache

    summary = summarize_cache(path)
    typer.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


@app.command()
@clean_errors
def convert(
    src: Path = typer.Argument(..., parser=cache_location, help="cache directory (or object-store URL) to read"),
    dst: Path = typer.Argument(..., parser=cache_location, help="new cache directory or object-store URL (resumed if it holds the same conversion)"),
    encoding: str = typer.Option("compact", help="compact (version 2 default) or float32 (exact, the version 1 columns)"),
    sqrt_step: Optional[float] = typer.Option(None, help="compact: probability step in sqrt(p); error <= step / 2"),
    drop_zero_level: Optional[bool] = typer.Option(None, help="compact: top-k entries that quantise to level 0 join the tail"),
    tail_log_step: Optional[float] = typer.Option(None, help="compact: step of the log tail mass"),
    token_logprob_step: Optional[float] = typer.Option(None, help="compact: step of the actual token's log-prob"),
    zstd_level: Optional[int] = typer.Option(None, help="compact: Parquet zstd level"),
    overwrite: Overwrite = False,
) -> None:
    """Rewrite a cache in another encoding, shard by shard (rerun to resume); options left unset take the default compact settings (those in params.yaml)."""
    from pipeline.cache.codec import CacheEncoding
    from pipeline.cache.convert import convert_cache

    settings = CacheEncoding().updated(
        "", encoding=encoding, sqrt_step=sqrt_step, drop_zero_level=drop_zero_level, tail_log_step=tail_log_step, token_logprob_step=token_logprob_step, zstd_level=zstd_level
    )
    manifest = convert_cache(src, dst, settings, overwrite)
    tokens, size = manifest.tokens, manifest.bytes
    typer.echo(f"converted: {tokens} tokens in {dst}, encoding {encoding}, {size / max(1, tokens):.1f} bytes/token")
