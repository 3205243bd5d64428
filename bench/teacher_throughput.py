"""Teacher throughput: bare prefill against the teacher's top-k capture written to Parquet, per backend.

The same token sequences (the input_ids of an existing cache) go through each backend twice:
- bare prefill: the forward pass over every token, logits of the last position only
  (vLLM: `max_tokens=1` without log-probs; transformers: `logits_to_keep=1`);
- capture: `backend.score` (top-k log-probs of every response position), then the cache's
  Parquet shard writer, as the teacher stage does.
Prints tokens/s of both, their ratio, and how far the two backends' caches are apart.

With `--hybrid HxN` each backend also captures a hybrid cache (the exact top-H plus N draws from the
rest; `--hybrid 0xN` a sampled cache) of the same inputs, and the ratio of its tokens/s to the
top-k capture's is printed. vLLM makes it through its pooling engine (final hidden states, the
output layer applied here: pipeline.backends.vllm_backend); the route it replaced, vLLM returning
the full-vocabulary log-probs (`prompt_logprobs=-1`) and the draws made from them, is timed too on
`--full-vocab-rows` of the inputs, so the choice stays a measurement.

    python bench/teacher_throughput.py --model models/smollm2-135m-instruct --cache data/cache --rows 120 --hybrid 4x8

Needs the vLLM extra (see README, "Teacher backends"). Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline.backends import EngineSettings, load_backend
from pipeline.backends.sampling import draw_row, sequence_generator
from pipeline.cache import read_manifest, write_shard
from pipeline.cache.codec import CacheEncoding
from pipeline.cache.plan import ShardSpec
from pipeline.cache.rows import TeacherRow, to_shard_table
from pipeline.cache.schema import storage_for
from pipeline.cache.topk import TOPK
from pipeline.cache.writer import zstd_level
from pipeline.errors import run_main

SHARD_ROWS = 64


def read_inputs(cache_dir: Path, rows: int) -> tuple[list[list[int]], list[int]]:
    manifest = read_manifest(cache_dir)
    files = [cache_dir / entry["file"] for split in manifest["splits"].values() for entry in split["shards"]]
    records = [r for f in files for r in pq.read_table(f, columns=["input_ids", "response_start"]).to_pylist()][:rows]
    return [r["input_ids"] for r in records], [r["response_start"] for r in records]


def capture(backend: Any, sequences: list[list[int]], starts: list[int], k: int, out_dir: Path, draws: int | None = None, head: int = 0, score: Callable | None = None) -> list[Any]:
    """What the teacher stage does per shard: score (top-k, or with `draws` sampled/hybrid), encode in the default (compact) encoding, write zstd Parquet."""
    block = CacheEncoding().block(backend.vocab_size, storage_for(k, draws, head))
    score = score or (lambda seqs, firsts: backend.score(seqs, firsts, k, draws, 0, head))
    outputs = []
    for index, start in enumerate(range(0, len(sequences), SHARD_ROWS)):
        chunk = score(sequences[start : start + SHARD_ROWS], starts[start : start + SHARD_ROWS])
        ids = [str(start + i) for i in range(len(chunk))]
        write_shard(to_shard_table(ids, chunk, block), out_dir, ShardSpec("train", index, start, start + len(chunk)), TOPK, zstd_level(block))
        outputs += chunk
    return outputs


def vllm_bare(backend: Any, sequences: list[list[int]]) -> None:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, detokenize=False, skip_reading_prefix_cache=True)
    for start in range(0, len(sequences), backend.batch_size):
        backend.llm.generate([{"prompt_token_ids": s} for s in sequences[start : start + backend.batch_size]], params, use_tqdm=False)


@torch.inference_mode()
def transformers_bare(backend: Any, sequences: list[list[int]]) -> None:
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # the batches score() makes
    for start in range(0, len(order), backend.batch_size):
        rows = [sequences[i] for i in order[start : start + backend.batch_size]]
        width = max(len(s) for s in rows)
        input_ids = torch.full((len(rows), width), backend.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, seq in enumerate(rows):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        backend.model(input_ids=input_ids, attention_mask=mask, logits_to_keep=1)


def full_vocab_scorer(llm: Any, vocab_size: int, draws: int, head: int, batch_size: int) -> Callable:
    """The rejected route: vLLM returns every id's log-prob (`prompt_logprobs=-1`), the draws are made from them here."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, prompt_logprobs=-1, detokenize=False, flat_logprobs=True, skip_reading_prefix_cache=True)

    def score(sequences: list[list[int]], starts: list[int]) -> list[TeacherRow]:
        outputs = []
        for begin in range(0, len(sequences), batch_size):
            results = llm.generate([{"prompt_token_ids": s} for s in sequences[begin : begin + batch_size]], params, use_tqdm=False)
            for index, (sequence, first, result) in enumerate(zip(sequences[begin:], starts[begin:], results), begin):
                flat = result.prompt_logprobs
                lo, hi = flat.start_indices[first], flat.end_indices[len(sequence) - 1]
                ids = torch.as_tensor(np.asarray(flat.token_ids[lo:hi], dtype=np.int64)).reshape(len(sequence) - first, vocab_size + 1)[:, 1:]
                values = torch.as_tensor(np.asarray(flat.logprobs[lo:hi], dtype=np.float32)).reshape(len(sequence) - first, vocab_size + 1)[:, 1:]
                dense = torch.empty_like(values).scatter_(-1, ids, values)
                outputs.append(draw_row(sequence, first, dense, draws, sequence_generator(0, index), head))
        return outputs

    return score


def measure_capture(name: str, backend: Any, sequences: list[list[int]], starts: list[int], k: int, draws: int | None, head: int, work: Path, repeats: int, score: Callable | None = None) -> float:
    """Tokens/s of capturing a cache (best of `repeats`, after a warm-up batch)."""
    warm = sequences[: backend.batch_size]
    capture(backend, warm, starts[: len(warm)], k, work / f"{name}-warm", draws, head, score)
    best = min(timed(lambda: capture(backend, sequences, starts, k, work / name, draws, head, score))[0] for _ in range(repeats))
    tokens = sum(len(s) for s in sequences) / best
    print(f"{name:<34} capture {tokens:8.1f} tok/s", flush=True)
    return tokens


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def measure(name: str, backend: Any, bare: Callable, sequences: list[list[int]], starts: list[int], k: int, work: Path, repeats: int) -> dict[str, Any]:
    """Alternate bare and capture passes and keep the best of each: the machine may be shared."""
    tokens = sum(len(s) for s in sequences)
    warm = sequences[: backend.batch_size]
    bare(backend, warm)
    backend.score(warm, starts[: len(warm)], k)
    bare_s, capture_s = float("inf"), float("inf")
    for _ in range(repeats):
        bare_s = min(bare_s, timed(lambda: bare(backend, sequences))[0])
        seconds, outputs = timed(lambda: capture(backend, sequences, starts, k, work / name))
        capture_s = min(capture_s, seconds)
    result = {"tokens": tokens, "bare_tok_s": tokens / bare_s, "capture_tok_s": tokens / capture_s}
    result["ratio"] = result["capture_tok_s"] / result["bare_tok_s"]
    print(f"{name:<13} bare {result['bare_tok_s']:8.1f} tok/s   capture {result['capture_tok_s']:8.1f} tok/s   capture/bare {result['ratio']:.3f}", flush=True)
    return {"result": result, "outputs": outputs}


def compute_bound_ratio(model_dir: Path) -> float:
    """Capture needs the output layer on every position, bare prefill on one: the best ratio matmul FLOPs allow."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir).get_text_config()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    body = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    return body / (body + config.vocab_size * config.hidden_size)


def parity(a: list[TeacherRow], b: list[TeacherRow], k: int) -> dict[str, float]:
    """How close two backends' top-k rows of the same sequences are."""
    top = np.concatenate([x.logprobs for x in a]) - np.concatenate([x.logprobs for x in b])
    actual = np.concatenate([x.token_logprobs for x in a]) - np.concatenate([x.token_logprobs for x in b])
    same_ids = (np.concatenate([x.ids for x in a]) == np.concatenate([x.ids for x in b])).reshape(-1, k)
    return {
        "max_abs_topk_logprob_diff": float(np.abs(top).max()),
        "max_abs_token_logprob_diff": float(np.abs(actual).max()),
        "top1_id_agreement": float(same_ids[:, 0].mean()),
        "topk_id_agreement": float(same_ids.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/smollm2-135m-instruct"))
    parser.add_argument("--cache", type=Path, default=Path("data/cache"), help="a cache whose input_ids are the inputs")
    parser.add_argument("--rows", type=int, default=120)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per call, both backends")
    parser.add_argument("--repeats", type=int, default=2, help="passes of each kind; the best counts")
    parser.add_argument("--kv-cache-gib", type=float, default=2.0)
    parser.add_argument("--enforce-eager", action="store_true", help="vLLM without torch.compile (faster start)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--hybrid", default=None, help="also capture a hybrid cache HEADxDRAWS (0xDRAWS: sampled) per backend, e.g. 4x8")
    parser.add_argument("--full-vocab-rows", type=int, default=16, help="inputs timed through vLLM's full-vocabulary log-probs (the slow route)")
    args = parser.parse_args()
    head, draws = (int(part) for part in args.hybrid.split("x")) if args.hybrid else (0, None)

    sequences, starts = read_inputs(args.cache, args.rows)
    print(f"{len(sequences)} sequences, {sum(map(len, sequences))} tokens, {sum(len(s) - r for s, r in zip(sequences, starts))} cached positions, k={args.k}, batch {args.batch_size}", flush=True)
    figures: dict[str, Any] = {"rows": len(sequences), "k": args.k, "batch_size": args.batch_size, "torch_threads": torch.get_num_threads()}
    figures["compute_bound_ratio"] = compute_bound_ratio(args.model)
    print(f"compute-bound capture/bare (lm_head on every position instead of the last): {figures['compute_bound_ratio']:.3f}", flush=True)
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        engine = EngineSettings(kv_cache_gib=args.kv_cache_gib, enforce_eager=args.enforce_eager)
        vllm = load_backend("vllm", args.model, "float32", args.batch_size, k=args.k, engine=engine)
        figures["vllm_engine_start_s"] = time.perf_counter() - started
        runs = {"vllm": measure("vllm", vllm, vllm_bare, sequences, starts, args.k, Path(work), args.repeats)}
        vllm.close()  # its worker would otherwise compete for the cores
        if draws is not None:
            sampling = load_backend("vllm", args.model, "float32", args.batch_size, k=args.k, engine=engine, sampling=True)
            runs["vllm"]["result"]["hybrid_capture_tok_s"] = measure_capture(f"vllm {args.hybrid} (hidden states)", sampling, sequences, starts, args.k, draws, head, Path(work), args.repeats)
            sampling.close()
            full = sequences[: args.full_vocab_rows], starts[: args.full_vocab_rows]
            wide = load_backend("vllm", args.model, "float32", args.batch_size, k=-1, engine=engine)
            route = full_vocab_scorer(wide.llm, wide.vocab_size, draws, head, args.batch_size)
            runs["vllm"]["result"]["hybrid_full_vocab_logprobs_tok_s"] = measure_capture(f"vllm {args.hybrid} (full-vocab log-probs)", wide, *full, args.k, draws, head, Path(work), 1, route)
            wide.close()
        torch.set_num_threads(figures["torch_threads"])  # vLLM drops this process to 1 thread for serving
        transformers = load_backend("transformers", args.model, "float32", args.batch_size)
        runs["transformers"] = measure("transformers", transformers, transformers_bare, sequences, starts, args.k, Path(work), args.repeats)
        if draws is not None:
            runs["transformers"]["result"]["hybrid_capture_tok_s"] = measure_capture(f"transformers {args.hybrid}", transformers, sequences, starts, args.k, draws, head, Path(work), args.repeats)
    figures.update({name: run["result"] for name, run in runs.items()})
    if draws is not None:
        for name, run in runs.items():
            print(f"{name}: hybrid {args.hybrid} capture / top-{args.k} capture = {run['result']['hybrid_capture_tok_s'] / run['result']['capture_tok_s']:.3f}")
        vllm_run = runs["vllm"]["result"]
        print(f"vllm hybrid: hidden-state route / full-vocab log-prob route = {vllm_run['hybrid_capture_tok_s'] / vllm_run['hybrid_full_vocab_logprobs_tok_s']:.1f}x")
    figures["parity_vllm_vs_transformers"] = parity(runs["vllm"]["outputs"], runs["transformers"]["outputs"], args.k)
    print(json.dumps(figures["parity_vllm_vs_transformers"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    run_main(main)
