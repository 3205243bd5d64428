"""How every cost of a cache grows with its size: synthetic top-20 caches through the real writer, 4 sizes 4x apart.

Each cache is written by `fill_cache` with a real plan (the teacher's tokenizer record, the default
compact encoding and shard size) and outputs shaped like the default cache (about 19 listed ids per
position, 248 tokens per row of which 208 are answer positions). For each size, each cost runs in a
fresh process (so its peak RSS is its own): write, finalize (`kd finalize`: every shard read back),
finalize_written (the finalize of the process that wrote the shards, from the entries it recorded as
it wrote them: that process writes a second copy of the cache and only its finalize is timed; its
manifest must equal, byte for byte, the one `kd finalize --rehash` then writes from the shards), verify (all of `kd verify`), verify_manifest
(its check of the manifest against the plan, which does not read shards), inspect, read (every train
batch), student start-up (call to the first step), validation (one pass of the student's validation
as training runs it), and `dvc add`, `dvc status`, `dvc push` to a local remote. It prints a table of
seconds and peak RSS per cost and size, and the growth exponent of each cost between the two largest
sizes (log of the time ratio over log 4; 1 is linear), and each cost extrapolated to 1B tokens from the
largest size at that exponent, or linearly if it grew slower (an upper bound for costs that do not grow).
Last, verify's manifest step on the manifest a 1B-token cache would have, measured directly.

    python -m bench.scale --tokenizer models/smollm2-135m-instruct --params params.yaml --tokens 250000 1000000 4000000 16000000

Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import provenance

EXTRA: dict[str, float] = {}  # figures a cost reports beside its time
COSTS = ("write", "finalize", "finalize_written", "verify", "verify_manifest", "inspect", "read", "student_start", "validation", "dvc_add", "dvc_status", "dvc_push")
PROMPT_TOKENS, ANSWER_TOKENS, K = 40, 208, 20


class FirstStep(Exception):
    """Raised at the first training step: student start-up is over."""


def synthetic_outputs(rows: int, vocab: int, seed: int) -> list[Any]:
    """Teacher rows shaped like the default cache: peaky sorted top-20 distributions with some tail mass."""
    from pipeline.cache.rows import TeacherRow

    rng = np.random.default_rng(seed)
    outputs = []
    for _ in range(rows):
        probs = np.sort(rng.dirichlet(np.full(K, 0.3), size=ANSWER_TOKENS), axis=1)[:, ::-1] * rng.uniform(0.7, 0.99, size=(ANSWER_TOKENS, 1))
        ids = ((rng.integers(0, vocab, (ANSWER_TOKENS, 1)) + np.cumsum(rng.integers(1, vocab // K, (ANSWER_TOKENS, K)), axis=1)) % vocab).astype(np.int32)  # distinct: the offsets stay below vocab
        answer = ids[:, 0]
        outputs.append(
            TeacherRow.top_k(
                input_ids=np.concatenate([rng.integers(0, vocab, PROMPT_TOKENS), answer]).astype(np.int32),
                response_start=PROMPT_TOKENS,
                topk_ids=ids,
                topk_logprobs=np.log(probs).astype(np.float32),
                token_logprobs=np.log(probs[:, 0]).astype(np.float32),
            )
        )
    return outputs


def write_cache(out: Path, tokens: int, tokenizer_dir: Path, shard_rows: int) -> None:
    """A synthetic cache through fill_cache, as a lone teacher worker writes it (so its finalize reads no shard back)."""
    from transformers import AutoTokenizer

    from pipeline.cache.codec import CacheEncoding
    from pipeline.cache.format import CAUSAL_LM_TASK, LOGPROBS_MEANING, tokenizer_record
    from pipeline.cache.rows import to_shard_table
    from pipeline.cache.schema import TopK
    from pipeline.cache.topk import TOPK
    from pipeline.cache.writer import fill_cache, write_shard, zstd_level

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab = len(tokenizer)
    rows = max(10, tokens // ANSWER_TOKENS)
    validation = rows // 5
    block = CacheEncoding().block(vocab, TopK(K))
    plan = {
        "task": CAUSAL_LM_TASK,
        "teacher": {"name": "synthetic", "path": str(tokenizer_dir), "weights_sha256": "0" * 64, "backend": "synthetic", "dtype": "float32"},
        "tokenizer": tokenizer_record(tokenizer, vocab, True),
        "k": K,
        "logprobs": LOGPROBS_MEANING,
        "encoding": block.document(),
        "generation": {"max_new_tokens": ANSWER_TOKENS, "temperature": 0.7, "top_p": 0.9, "seed": 0, "batch_size": 16},
        "source": {"sha256": f"synthetic-{tokens}", "rows": {"train": rows - validation, "validation": validation}},
        "prompt_length": {"limit": 8192, "too_long": "refuse", "truncated": 0},
        "shard_rows": shard_rows,
    }

    def fill(shards):
        written = []
        for shard in shards:
            count = shard.stop - shard.start
            ids = [f"{shard.split}-{shard.start + i}" for i in range(count)]
            table = to_shard_table(ids, synthetic_outputs(count, vocab, shard.index + (0 if shard.split == "train" else 10**6)), block)
            written.append(write_shard(table, out, shard, TOPK, zstd_level(block)))
        return written

    from pipeline.cache.plan import planned_shards

    fill_cache(out, plan, planned_shards(plan), fill, tokenizer.save_pretrained)


def measure(cost: str, cache: Path, args: argparse.Namespace) -> float:
    """Seconds of one cost, in this process."""
    started = time.perf_counter()
    if cost == "write":
        write_cache(cache, args.size, args.tokenizer, args.shard_rows)
    elif cost == "finalize":
        from pipeline.cache import MANIFEST_FILE, finalize_from_plan

        (cache / MANIFEST_FILE).unlink()
        started = time.perf_counter()
        finalize_from_plan(cache)
    elif cost == "finalize_written":
        return finalize_written_seconds(cache, args)
    elif cost == "verify":
        from pipeline.cache.verify import verify_cache

        problems = verify_cache(cache)
        assert not problems, problems[:3]
    elif cost == "verify_manifest":
        from pipeline.cache.reader import Cache
        from pipeline.cache.verify import manifest_problems

        manifest = Cache.open(cache, check_checksum=False).manifest
        started = time.perf_counter()
        assert not manifest_problems(manifest)
    elif cost == "inspect":
        from pipeline.cache.summary import summarize_cache

        summarize_cache(cache)
    elif cost == "read":
        from pipeline.cache.reader import Cache
        from pipeline.lm.streaming import stream_batches

        sum(batch.num_tokens for batch in stream_batches(Cache.open(cache), "train", 8, seed=0))
    elif cost in ("student_start", "validation"):
        return student_cost(cost, cache, args)
    else:
        return dvc_cost(cost, cache, args)
    return time.perf_counter() - started


def finalize_written_seconds(cache: Path, args: argparse.Namespace) -> float:
    """Seconds of the finalize in the process that wrote the shards: a second copy of the cache beside `cache`, only fill_cache's finalize timed.

    The finalize must read no shard (the writer recorded every entry) and write the manifest that reading every shard gives.
    """
    import pipeline.cache.writer as writer
    from pipeline.cache import MANIFEST_FILE, finalize_from_plan

    finalize, read, spent, reads = writer.finalize_cache, writer.shard_entry, [], []

    def timed_finalize(*call_args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        manifest = finalize(*call_args, **kwargs)
        spent.append(time.perf_counter() - started)
        return manifest

    def counted_read(*call_args: Any) -> Any:
        reads.append(call_args[1])
        return read(*call_args)

    copy = cache.parent / "written"
    writer.finalize_cache, writer.shard_entry = timed_finalize, counted_read
    try:
        write_cache(copy, args.size, args.tokenizer, args.shard_rows)
    finally:
        writer.finalize_cache, writer.shard_entry = finalize, read
    assert not reads, f"finalize read {len(reads)} shard(s) the writer had recorded, first {reads[0].file}"
    recorded = (copy / MANIFEST_FILE).read_bytes()
    finalize_from_plan(copy, rehash=True)
    assert recorded == (copy / MANIFEST_FILE).read_bytes(), "the manifest from recorded entries differs from the one read from the shards"
    shutil.rmtree(copy)
    return spent[0]


def student_cost(cost: str, cache: Path, args: argparse.Namespace) -> float:
    import pipeline.lm.trainer as training
    from pipeline.cache.reader import Cache
    from pipeline.lm.batch import DistillationStep
    from pipeline.lm.parallel import training_processes
    from pipeline.lm.student import initial_student
    from pipeline.lm.student_settings import StudentSettings
    from pipeline.settings import read_section

    settings = read_section(args.params, "student", StudentSettings)
    if cost == "validation":
        opened = Cache.open(cache)
        with training_processes("cpu") as processes:
            model = DistillationStep(initial_student(settings.init, settings.model, opened.vocab_size, 0, prune=settings.prune, teacher=args.tokenizer), settings.training_objective())
            started = time.perf_counter()
            training.validation_kl(model, opened, settings, processes)
            return time.perf_counter() - started
    entered: list[float] = []

    def first_step(*_args, **_kwargs):
        entered.append(time.perf_counter())
        raise FirstStep

    training.train_loop = first_step
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        try:
            training.train_student(cache, settings, Path(folder) / "student", teacher=args.tokenizer)
        except FirstStep:
            pass
    return entered[0] - started


def dvc_cost(cost: str, cache: Path, args: argparse.Namespace) -> float:
    """dvc add / status / push of the cache in a scratch repository beside it (made on the first, `dvc_add`)."""
    repo = cache.parent / "repo"
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def run(*command: str) -> None:
        subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True)

    if cost == "dvc_add":
        repo.mkdir()
        run("git", "init", "-q")
        run(sys.executable, "-m", "dvc", "init", "-q")
        run(sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(cache.parent / "remote"))
        if args.dvc_cache_type:
            run(sys.executable, "-m", "dvc", "config", "cache.type", args.dvc_cache_type)
        shutil.copytree(cache, repo / "cache")
        started = time.perf_counter()
        run(sys.executable, "-m", "dvc", "add", "cache")
        EXTRA["repo_disk_mb"] = disk_mb(repo)  # workspace and DVC cache, hard links counted once
    else:
        started = time.perf_counter()
        run(sys.executable, "-m", "dvc", "status" if cost == "dvc_status" else "push")
    return time.perf_counter() - started


def manifest_step_seconds(tokens: int, shard_rows: int) -> tuple[int, float]:
    """(shards, seconds) of `kd verify`'s manifest check on the manifest a cache of `tokens` positions would have.

    The check reads no shard, so its manifest is built from the plan alone (entries as the writer
    records them, zero-filled hashes): measured at 1B tokens directly rather than extrapolated. The
    step is parsing the manifest into its typed form, then checking it against itself.
    """
    from pipeline.cache.manifest import Manifest
    from pipeline.cache.plan import planned_shards
    from pipeline.cache.verify import manifest_problems

    rows = max(10, tokens // ANSWER_TOKENS)
    manifest: dict[str, Any] = {
        "format": "kd-topk-cache",
        "format_version": 2,
        "teacher": {"name": "synthetic"},
        "tokenizer": {"sha256": "0" * 64, "vocab_size": 49152},
        "k": 20,
        "source": {"rows": {"train": rows - rows // 5, "validation": rows // 5}},
        "shard_rows": shard_rows,
        "splits": {},
    }
    for shard in planned_shards(manifest):
        count = shard.stop - shard.start
        entry = {"file": shard.file, "rows": count, "tokens": count * ANSWER_TOKENS, "longest_sequence": PROMPT_TOKENS + ANSWER_TOKENS, "bytes": 1, "sha256": "0" * 64}
        split = manifest["splits"].setdefault(shard.split, {"rows": 0, "tokens": 0, "bytes": 0, "shards": []})
        for key in ("rows", "tokens", "bytes"):
            split[key] += entry[key]
        split["shards"].append(entry)
    started = time.perf_counter()
    problems = manifest_problems(Manifest.parse(manifest, Path("synthetic")))
    assert not problems, problems[:3]
    return len(planned_shards(manifest)), time.perf_counter() - started


def disk_mb(folder: Path) -> float:
    """Disk the folder takes, hard links counted once (du)."""
    return int(subprocess.run(["du", "-sk", str(folder)], capture_output=True, text=True, check=True).stdout.split()[0]) / 1024


def one(args: argparse.Namespace) -> None:
    seconds = measure(args.measure, args.cache, args)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mb": max(own, children) / 1024, **EXTRA}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=Path("models/smollm2-135m-instruct"),
        help="the teacher folder: the tokenizer the synthetic caches record, and what a pruned student (student.init prune) is cut from",
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="the student of start-up and validation")
    parser.add_argument("--tokens", type=int, nargs="+", default=[250_000, 1_000_000, 4_000_000, 16_000_000], help="cache sizes in cached positions")
    parser.add_argument("--shard-rows", type=int, default=64)
    parser.add_argument("--costs", nargs="+", default=list(COSTS), choices=COSTS)
    parser.add_argument("--work", type=Path, default=None, help="where the caches go [default: a temporary folder]")
    parser.add_argument("--dvc-cache-type", default=None, help="DVC's cache.type for the dvc costs (reflink, hardlink, symlink, copy) [default: DVC's own]")
    parser.add_argument("--measure", choices=COSTS, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return one(args)
    work = args.work or Path(tempfile.mkdtemp(prefix="kd-scale-"))
    results: dict[int, dict[str, dict[str, float]]] = {}
    for tokens in args.tokens:
        folder = work / f"t{tokens}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        results[tokens] = {}
        for cost in ["write", *[c for c in args.costs if c != "write"]]:
            common = ["--tokenizer", str(args.tokenizer), "--params", str(args.params), "--shard-rows", str(args.shard_rows)] + (
                ["--dvc-cache-type", args.dvc_cache_type] if args.dvc_cache_type else []
            )
            command = [sys.executable, "-m", "bench.scale", "--measure", cost, "--cache", str(folder / "cache"), "--size", str(tokens), *common]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(f"{cost} at {tokens} tokens failed:\n{result.stderr[-2000:]}")
            results[tokens][cost] = json.loads(result.stdout.strip().splitlines()[-1])
            extra = "".join(f"  {key} {value:,.1f}" for key, value in results[tokens][cost].items() if key not in ("seconds", "peak_rss_mb"))
            print(f"{tokens:>12,} tokens  {cost:<14} {results[tokens][cost]['seconds']:10.2f} s  {results[tokens][cost]['peak_rss_mb']:8.0f} MB{extra}", flush=True)
        shutil.rmtree(folder)
    big, bigger = args.tokens[-2], args.tokens[-1]
    print(f"\n{provenance()}")
    print(f"cost            {'  '.join(f'{t:>14,}' for t in args.tokens)}   exponent ({big:,} -> {bigger:,})   at 1B tokens   peak RSS largest/smallest")
    for cost in ["write", *[c for c in args.costs if c != "write"]]:
        times = [results[t][cost]["seconds"] for t in args.tokens]
        rss = [results[t][cost]["peak_rss_mb"] for t in args.tokens]
        exponent = math.log(max(times[-1], 1e-6) / max(times[-2], 1e-6)) / math.log(bigger / big)
        at_billion = times[-1] * (1e9 / bigger) ** max(exponent, 1.0)
        print(f"{cost:<15} {'  '.join(f'{s:12.3f} s' for s in times)}   {exponent:6.2f}   {at_billion:10.0f} s   {rss[-1] / rss[0]:5.2f} ({rss[0]:.0f} -> {rss[-1]:.0f} MB)")
    shards, seconds = manifest_step_seconds(1_000_000_000, args.shard_rows)
    print(f"\nverify's manifest step on the manifest of a 1B-token cache ({shards:,} shards, built from the plan, no shard written): {seconds:.2f} s")


if __name__ == "__main__":
    main()
