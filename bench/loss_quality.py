"""How much quality a top-k cache costs against distilling from the teacher's full distribution.

The teacher rescores the sequences of an existing cache with one full forward each and keeps its
whole distribution at every answer position in memory. The same student (params.yaml, same seed,
same batches) is then trained once per variant: from the full distribution (the online reference),
from top-k caches cut from it with the tail bucket and renormalised, from sampled caches (N ids
drawn per position from the full distribution, once, as the teacher stage would store them), from
hybrid caches (the exact top-h plus N draws from the rest), from the peers' cache schemes
(bench/peers.py: DistillKit's, axolotl's renormalised top-k), and on CE alone. Each is scored
on held-out sequences against the FULL teacher distribution: KL(teacher || student) per token,
top-1 agreement, and recovery = (KL_ce - KL_variant) / (KL_ce - KL_full), the share of full-logit
distillation's improvement over CE that the variant keeps. Every cache variant is also sized: its
train split written as the compact encoding stores it (Parquet, zstd, shards of the cache's
`shard_rows`), bytes per answer position; a peer's size is its own format's, counted by bench/peers.py.

    python -m bench.loss_quality --cache data/cache --teacher models/smollm2-135m-instruct

`--seeds` trains every variant once per student seed and reports mean and spread; `--extra-train`
adds the train split of other caches of the same prompts (the teacher's answers under other
generation seeds) to see how the comparison moves with more training positions.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import get_args

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
import yaml

from bench.cache_size import write_bytes
from bench.peers import PEER_SCHEMES, encode_peer, peer_loss
from pipeline.backends.sampling import SampledIds, Sampling, draw_teacher_samples
from pipeline.cache import Cache, read_manifest
from pipeline.cache.codec import CacheEncoding, decode, encode, pad_entries, rows_to_dicts
from pipeline.cache.rows import TeacherRow, to_shard_table
from pipeline.cache.schema import FLOAT32_BLOCK, EncodingBlock, TopK, storage_for
from pipeline.errors import PipelineError, run_main
from pipeline.lm.batch import TopKBatch
from pipeline.lm.losses import DIVERGENCES, sparse_forward_kl
from pipeline.lm.streaming import to_topk_batch
from pipeline.lm.student import build_student, position_logits
from pipeline.lm.student_settings import StudentSettings
from pipeline.models import load_causal_lm
from pipeline.teacher_model import resolve_teacher
from pipeline.train_loop import learning_rate

K_MAX = 50


@dataclass
class Split:
    """Sequences of one split with the teacher's full log-probs [answer positions, V] per sequence."""

    table: pa.Table  # in the cache format, top-K_MAX from the rescoring
    full: list[torch.Tensor]
    samples: dict[tuple[int, int], list[SampledIds]]  # per (head, draws), per sequence
    compact: dict[int, tuple[pa.Table, EncodingBlock]]  # per k, the top-k in the default compact encoding and its block


@dataclass
class Variant:
    name: str
    k: int | None  # None: the teacher's full distribution
    settings: StudentSettings
    draws: int | None = None  # a sampled cache with this many draws per position instead of the top-k
    compact: bool = False  # the top-k as the default compact encoding stores it (decoded), not exact
    head: int = 0  # with draws: a hybrid cache, the exact top-`head` plus the draws from the rest
    peer: str | None = None  # a peer tool's cache scheme and loss (bench/peers.py)


def extra_train_sequences(cache: Path, extra: list[Path], validation_ids: set[str]) -> list[tuple[str, list[int], int, list[list[int]]]]:
    """Train sequences of caches made by the same teacher from the same split, with ids kept apart;
    a validation prompt among them is refused, since it would leak into training."""
    weights = read_manifest(cache)["teacher"]["weights_sha256"]
    rows = []
    for n, path in enumerate(extra, 1):
        if read_manifest(path)["teacher"]["weights_sha256"] != weights:
            raise PipelineError(f"{path} was made by another teacher than {cache}")
        sequences = read_sequences(path, "train", 10**9)
        leaked = validation_ids & {row[0] for row in sequences}
        if leaked:
            raise PipelineError(f"{path} trains on validation prompts of {cache} (first {sorted(leaked)[0]})")
        rows += [(f"{row[0]}@{n}", *row[1:]) for row in sequences]
    return rows


def read_sequences(cache: Path, split: str, limit: int) -> list[tuple[str, list[int], int, list[list[int]]]]:
    """(id, input_ids, response_start, cached ids per position) of the first `limit` rows of a split, any encoding."""
    opened = Cache.open(cache)
    rows = []
    for records in opened.batches(split, 64):
        for row in rows_to_dicts(decode(records, opened.encoding)):
            rows.append((row["id"], row["input_ids"], row["response_start"], row["topk_ids"]))
    return rows[:limit]


@torch.inference_mode()
def rescore(teacher: torch.nn.Module, sequences: list[tuple[str, list[int], int, list[list[int]]]], batch_size: int = 8) -> tuple[Split, float]:
    """Full teacher log-probs at every answer position, and the share of positions whose top-k ids match the cache's."""
    outputs, full, matches, positions = [], [], 0, 0
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        width = max(len(ids) for _, ids, _, _ in chunk)
        input_ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, (_, ids, _, _) in enumerate(chunk):
            input_ids[row, : len(ids)], mask[row, : len(ids)] = torch.tensor(ids), 1
        logits = teacher(input_ids=input_ids, attention_mask=mask).logits
        for row, (_, ids, start_at, cached_ids) in enumerate(chunk):
            logprobs = torch.log_softmax(logits[row, start_at - 1 : len(ids) - 1].float(), dim=-1)
            top = logprobs.topk(K_MAX, dim=-1)
            targets = torch.tensor(ids[start_at:])
            matches += sum(set(a[: len(b)]) == set(b) for a, b in zip(top.indices.tolist(), cached_ids))
            positions += len(targets)
            full.append(logprobs)
            outputs.append(
                TeacherRow.top_k(
                    input_ids=np.asarray(ids, dtype=np.int32),
                    response_start=start_at,
                    topk_ids=top.indices.to(torch.int32).numpy(),
                    topk_logprobs=top.values.numpy(),
                    token_logprobs=logprobs.gather(-1, targets[:, None])[:, 0].numpy(),
                )
            )
    return Split(to_shard_table([s[0] for s in sequences], outputs), full, {}, {}), matches / positions


def encode_compact(split: Split, ks: list[int], vocab_size: int) -> None:
    """The top-k of each k as a new cache would store it: default compact encoding, decoded by the reader."""
    rows = decode(split.table, FLOAT32_BLOCK)
    for k in ks:
        block = CacheEncoding().block(vocab_size, TopK(k))
        top = replace(
            rows,
            entries=np.full(len(rows.entries), k),
            entry_ids=top_k(rows.entry_ids, k),
            entry_logprobs=top_k(rows.entry_logprobs, k),
        )
        split.compact[k] = (encode(top, block), block)


def draw(split: Split, specs: list[tuple[int, int]], seed: int, method: Sampling = "iid") -> None:
    """The sampled (head 0) and hybrid caches: per (head, N), N draws per position (iid or systematic), fixed for all epochs."""
    for head, n in specs:
        generator = torch.Generator().manual_seed(seed)
        split.samples[head, n] = [draw_teacher_samples(full, n, generator, head, method) for full in split.full]


def bytes_per_token(split: Split, variant: Variant, vocab_size: int, shard_rows: int) -> float | None:
    """The variant's cache as the compact encoding stores it: Parquet bytes per answer position (None: no cache)."""
    if variant.peer is not None:
        return peer_bytes(split, variant.peer)
    if variant.k is None or variant.settings.alpha == 0:
        return None
    rows = decode(split.table, FLOAT32_BLOCK)
    if variant.draws is not None:
        drawn = concatenated(split.samples[variant.head, variant.draws])
        rows = replace(rows, entries=drawn.entries.astype(np.int64), entry_ids=drawn.ids.astype(np.int64), entry_logprobs=drawn.logprobs, entry_counts=drawn.counts.astype(np.int64))
        block = CacheEncoding().block(vocab_size, storage_for(variant.k, variant.draws, variant.head))
    else:
        rows = replace(rows, entries=np.full(len(rows.entries), variant.k), entry_ids=top_k(rows.entry_ids, variant.k), entry_logprobs=top_k(rows.entry_logprobs, variant.k))
        block = CacheEncoding().block(vocab_size, TopK(variant.k))
        if variant.settings.tail == "renormalize" and not variant.compact:
            return None  # the same cache as the bucket row
    table = encode(rows, block)
    size = sum(len(write_bytes(table.slice(start, shard_rows), block.zstd_level)) for start in range(0, table.num_rows, shard_rows))
    return size / len(rows.entries)


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    return values.reshape(-1, K_MAX)[:, :k].reshape(-1)


def concatenated(samples: list[SampledIds]) -> SampledIds:
    return SampledIds(*(np.concatenate([getattr(s, name) for s in samples]) for name in ("entries", "ids", "counts", "logprobs")))


def batches(split: Split, batch_size: int, seed: int | None, sample: tuple[int, int] | None = None, compact_k: int | None = None) -> Iterator[tuple[TopKBatch, torch.Tensor]]:
    """Batches in the streaming format (top-K_MAX, the sampled or hybrid cache of `sample` = (head, draws), or the
    compact top-`compact_k`) with the full teacher log-probs of the same positions."""
    order = np.arange(split.table.num_rows) if seed is None else np.random.default_rng(seed).permutation(split.table.num_rows)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        records = split.table.take(rows).combine_chunks().to_batches()[0]
        batch = to_topk_batch(records)
        if compact_k is not None:
            table, block = split.compact[compact_k]
            batch = to_topk_batch(table.take(rows).combine_chunks().to_batches()[0], block)
        if sample is not None:
            drawn = concatenated([split.samples[sample][i] for i in rows])
            ids, logprobs, counts = (torch.from_numpy(a) for a in pad_entries(drawn.entries, drawn.ids, drawn.logprobs, drawn.counts))
            batch = replace(batch, listed_ids=ids, listed_logprobs=logprobs, counts=counts)
        yield batch, torch.cat([split.full[i] for i in rows])


def truncated(batch: TopKBatch, k: int) -> TopKBatch:
    return replace(batch, listed_ids=batch.listed_ids[:, :k].contiguous(), listed_logprobs=batch.listed_logprobs[:, :k].contiguous())


def full_logit_loss(model: torch.nn.Module, batch: TopKBatch, teacher: torch.Tensor, settings: StudentSettings) -> torch.Tensor:
    """The online reference: the same objective with the teacher's whole distribution (dense forward KL)."""
    logits = position_logits(model, batch.input_ids, batch.attention_mask, batch.rows, batch.columns)
    t = settings.temperature
    teacher_t, student_t = F.log_softmax(teacher / t, dim=-1), F.log_softmax(logits / t, dim=-1)
    kl = (teacher_t.exp() * (teacher_t - student_t)).sum(-1).mean()
    return settings.alpha * t**2 * kl + (1 - settings.alpha) * F.cross_entropy(logits, batch.targets)


def train(variant: Variant, train_split: Split, model_config: dict, vocab_size: int) -> torch.nn.Module:
    settings = variant.settings
    model = build_student(model_config, vocab_size, settings.seed).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    total = -(-train_split.table.num_rows // settings.batch_size) * settings.epochs
    step = 0
    for epoch in range(settings.epochs):
        sample = None if variant.draws is None else (variant.head, variant.draws)
        for batch, teacher in batches(train_split, settings.batch_size, settings.seed + epoch, sample, variant.k if variant.compact else None):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total, settings.lr, settings.warmup_steps)
            if variant.k is None:
                loss = full_logit_loss(model, batch, teacher, settings)
            elif variant.peer is not None:
                loss = peer_training_loss(model, batch, teacher, variant.peer, settings)
            else:
                loss = (batch if variant.draws or variant.compact else truncated(batch, variant.k)).loss(model, settings.training_objective())["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
    return model.eval()


@torch.inference_mode()
def score(model: torch.nn.Module, split: Split, batch_size: int, seen_k: int) -> dict[str, float]:
    """Per-token KL(full teacher || student), top-1 agreement with the teacher's argmax, and the KL
    a top-`seen_k` cache with tail bucket sees (the part of the full KL outside the tail's shape)."""
    kl, seen, agree, tokens = 0.0, 0.0, 0, 0
    for batch, teacher in batches(split, batch_size, None):
        student = F.log_softmax(position_logits(model, batch.input_ids, batch.attention_mask, batch.rows, batch.columns), dim=-1)
        kl += (teacher.exp() * (teacher - student)).sum().item()
        top = teacher.topk(seen_k, dim=-1)
        seen += sparse_forward_kl(student, top.indices, top.values).sum().item()
        agree += (student.argmax(-1) == teacher.argmax(-1)).sum().item()
        tokens += batch.num_tokens
    return {"kl": kl / tokens, "seen_kl": seen / tokens, "top1": agree / tokens}


def variants(
    settings: StudentSettings, ks: list[int], divergences: list[str], draws: list[int], tails: list[str], compact: list[int], hybrid: list[tuple[int, int]], peers: list[str]
) -> list[Variant]:
    table = [Variant("full logits (online)", None, settings)]
    for tail in tails:
        table += [Variant(f"{settings.loss} {tail} k={k}", k, settings.updated("student", tail=tail)) for k in ks]
    table += [Variant(f"{settings.loss} bucket k={k} compact", k, settings, compact=True) for k in compact]
    table += [Variant(f"sampled N={n}", K_MAX, settings, draws=n) for n in draws]
    table += [Variant(f"hybrid h={h} N={n}", h + n, settings, draws=n, head=h) for h, n in hybrid]
    table += [Variant(f"peer {name}", K_MAX, settings, peer=name) for name in peers]
    table += [Variant(f"{name} bucket k={ks[len(ks) // 2]}", ks[len(ks) // 2], settings.updated("student", loss=name, tail="bucket")) for name in divergences]
    return table + [Variant("ce only", K_MAX, settings.updated("student", alpha=0.0))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=Path("data/cache"), help="its sequences are rescored; its top-k only checks the rescoring")
    parser.add_argument("--teacher", type=Path, default=Path("models/smollm2-135m-instruct"), help="teacher folder ('embedded' converts it here if missing)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--train-sequences", type=int, default=10**9)
    parser.add_argument("--validation-sequences", type=int, default=10**9)
    parser.add_argument("--epochs", type=int, default=None, help="default: params.yaml")
    parser.add_argument("--model", type=yaml.safe_load, default={}, help="student LlamaConfig fields over params.yaml's, as YAML: '{hidden_size: 64}'")
    parser.add_argument("--k", type=int, nargs="+", default=[5, 20, 50])
    parser.add_argument("--divergences", nargs="*", default=[], help=f"also train these at the middle k with the tail bucket: {', '.join(DIVERGENCES)}")
    parser.add_argument("--draws", type=int, nargs="*", default=[], help="sampled caches with these numbers of draws per position")
    parser.add_argument("--tails", nargs="*", default=["bucket", "renormalize"], help="top-k tail treatments to train")
    parser.add_argument("--compact", type=int, nargs="*", default=[], help="also train on the top-k of these k as the default compact encoding stores it")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="student seeds; each variant is trained once per seed (default: params.yaml's)")
    parser.add_argument("--extra-train", type=Path, nargs="*", default=[], help="caches of the same prompts whose train split joins the training set")
    parser.add_argument("--hybrid", type=head_and_draws, nargs="*", default=[], help="hybrid caches as HEADxDRAWS, e.g. 8x24: the exact top-HEAD plus DRAWS ids drawn from the rest")
    parser.add_argument("--peers", nargs="*", default=[], help=f"peer tools' cache schemes and losses (bench/peers.py): {', '.join(PEER_SCHEMES)}")
    parser.add_argument("--draw-method", choices=get_args(Sampling), default="iid", help="how the sampled and hybrid caches of this run draw (pipeline.backends.sampling)")
    args = parser.parse_args()
    if max(args.k) > K_MAX:
        parser.error(f"k above {K_MAX}")

    section = yaml.safe_load(args.params.read_text())["student"]
    section["model"] = {**section.get("model", {}), **args.model}
    settings = StudentSettings.from_section(section, "student")
    settings = settings.updated("student", loss="forward_kl", epochs=args.epochs or settings.epochs)
    seeds = args.seeds or [settings.seed]
    started = time.perf_counter()
    validation_sequences = read_sequences(args.cache, "validation", args.validation_sequences)
    train_sequences = read_sequences(args.cache, "train", args.train_sequences)
    train_sequences += extra_train_sequences(args.cache, args.extra_train, {row[0] for row in validation_sequences})
    teacher = load_causal_lm(Path(resolve_teacher("embedded", args.teacher)["path"]))
    train_split, train_match = rescore(teacher, train_sequences)
    validation, validation_match = rescore(teacher, validation_sequences)
    vocab_size = teacher.config.vocab_size
    del teacher
    draw(train_split, [(0, n) for n in args.draws] + args.hybrid, settings.seed, args.draw_method)
    if args.draw_method != "iid":
        print(f"sampled and hybrid caches drawn {args.draw_method}")
    encode_compact(train_split, args.compact, vocab_size)
    for (head, n), samples in train_split.samples.items():
        listed = sum(len(s.ids) for s in samples) / sum(len(s.entries) for s in samples)
        print(f"{f'hybrid h={head}' if head else 'sampled'} N={n}: {listed:.1f} listed ids per position on average")
    positions = (sum(len(f) for f in train_split.full), sum(len(f) for f in validation.full))
    print(
        f"teacher rescored {train_split.table.num_rows} train / {validation.table.num_rows} validation sequences "
        f"({positions[0]} / {positions[1]} answer positions) in {time.perf_counter() - started:.0f} s; "
        f"top-{read_manifest(args.cache)['k']} id sets equal to the cache's at {100 * train_match:.1f}% / {100 * validation_match:.1f}% of positions"
    )
    print(f"student: {settings.model}, {settings.epochs} epochs, batch {settings.batch_size}, alpha {settings.alpha}, T {settings.temperature}, seeds {seeds}")
    seen_k = args.k[len(args.k) // 2]
    results: dict[str, list[dict[str, float]]] = {}
    shard_rows = read_manifest(args.cache)["shard_rows"]
    sizes = {v.name: bytes_per_token(train_split, v, vocab_size, shard_rows) for v in variants(settings, args.k, args.divergences, args.draws, args.tails, args.compact, args.hybrid, args.peers)}
    for seed in seeds:
        for variant in variants(settings.updated("student", seed=seed), args.k, args.divergences, args.draws, args.tails, args.compact, args.hybrid, args.peers):
            begun = time.perf_counter()
            model = train(variant, train_split, settings.model, vocab_size)
            results.setdefault(variant.name, []).append(score(model, validation, settings.batch_size, seen_k))
            print(f"  {variant.name} seed {seed}: {results[variant.name][-1]}, trained in {time.perf_counter() - begun:.0f} s", flush=True)
    print_table(results, seen_k, sizes)
    print(f"total {time.perf_counter() - started:.0f} s")


def head_and_draws(text: str) -> tuple[int, int]:
    head, _, draws = text.partition("x")
    if not (head.isdigit() and draws.isdigit() and int(head) > 0 and int(draws) > 0):
        raise argparse.ArgumentTypeError(f"'{text}' is not HEADxDRAWS with two positive numbers, e.g. 8x24")
    return int(head), int(draws)


def peer_bytes(split: Split, name: str) -> float:
    """Bytes per position of a peer's own storage format over the train split (bench/peers.py counts them)."""
    caches = [encode_peer(PEER_SCHEMES[name], full, full.shape[-1]) for full in split.full]
    return sum(c.bytes_per_position * len(full) for c, full in zip(caches, split.full)) / sum(len(full) for full in split.full)


def peer_training_loss(model: torch.nn.Module, batch: TopKBatch, teacher: torch.Tensor, name: str, settings: StudentSettings) -> torch.Tensor:
    """A peer tool's loss on what its cache would give the student: encoded from the full teacher log-probs, decoded as it decodes."""
    logits = position_logits(model, batch.input_ids, batch.attention_mask, batch.rows, batch.columns)
    scheme = PEER_SCHEMES[name]
    kd = peer_loss(scheme, logits, encode_peer(scheme, teacher, teacher.shape[-1]), settings.temperature).mean()
    return settings.alpha * settings.temperature**2 * kd + (1 - settings.alpha) * F.cross_entropy(logits, batch.targets)


def print_table(results: dict[str, list[dict[str, float]]], seen_k: int, sizes: dict[str, float | None]) -> None:
    """One row per variant; with several seeds, means and (after ±) the standard deviation over seeds; its cache's bytes per token.

    Recovery is computed per seed against that seed's full-logit and CE students, then averaged.
    """
    ce, full = results["ce only"], results["full logits (online)"]
    for runs in results.values():
        for run, run_ce, run_full in zip(runs, ce, full):
            run["recovery"] = 100 * (run_ce["kl"] - run["kl"]) / (run_ce["kl"] - run_full["kl"])
    spread = len(ce) > 1
    width = 16 if spread else 10
    columns = [("kl", "KL to teacher", 3), ("top1", "top-1 agree", 3), ("recovery", "recovery %", 1), ("seen_kl", f"KL top-{seen_k}+tail", 3)]
    header = f"{'student trained on':<32}" + "".join(f"{title:>{width + 4}}" for _, title, _ in columns) + f"{'bytes/token':>14}"
    print(header + "\n" + "-" * len(header))
    for name, runs in results.items():
        cells = []
        for key, _, digits in columns:
            values = np.array([run[key] for run in runs])
            cell = f"{values.mean():.{digits}f}" + (f" ± {values.std(ddof=1):.{digits}f}" if spread else "")
            cells.append(f"{cell:>{width + 4}}")
        size = sizes.get(name)
        print(f"{name:<32}" + "".join(cells) + (f"{size:>14.1f}" if size is not None else f"{'-':>14}"))
    if spread:
        mean = {name: np.mean([run["kl"] for run in runs]) for name, runs in results.items()}
        kl_ce, kl_full = mean["ce only"], mean["full logits (online)"]
        print(
            "recovery of the seed-mean KLs (less sensitive to one badly trained student): "
            + ", ".join(f"{name} {100 * (kl_ce - kl) / (kl_ce - kl_full):.1f}%" for name, kl in mean.items() if name not in ("ce only", "full logits (online)"))
        )


if __name__ == "__main__":
    run_main(main)
