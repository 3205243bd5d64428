"""Distillation from a cache made with another tokenizer: alignment by character spans, and its losses.

A cached sequence is the teacher's token ids. With a student tokenizer that differs from the
teacher's, each sequence is decoded to text with the teacher tokenizer shipped in the cache and
re-tokenized with the student's; the student trains on its own tokens of that same text.

**Alignment.** The character boundary before token i is the length of the decoded prefix `ids[:i]`,
valid when that prefix is a prefix of the whole text (it is not inside a multi-byte character).
Computing it by decoding, for teacher and student alike, needs no per-position column in the cache:
it is exact for any tokenizer whose decoder concatenates (byte-level BPE, SentencePiece/Metaspace
with its leading-space strip), and it holds for the teacher's sampled, non-canonical token
sequences, which re-encoding the text would not reproduce. A student position (the logits that
predict student token m) and a teacher position (predicting teacher token j) are **aligned** when
both predict the next token from the same text prefix: boundary(m) == boundary(j). Only answer
positions the cache holds are aligned; every other student answer position gets CE only.

**Vocabulary map.** Teacher id v maps to student id u when both add the same text in the middle of
a sequence: the text a token contributes is `decode([anchor, v])` minus `decode([anchor])`, which
handles leading-space conventions (`Ġ`, `▁`) the same way for both. When the two tokenizers have
the same decoder, ids whose raw token strings are equal map first (that also covers partial-UTF-8
byte tokens and special tokens, whose decoded text alone is ambiguous); identical tokenizers map
every id onto itself. Several teacher ids mapping onto one student id have their mass summed.

**Losses** (`student.cross_tokenizer.loss`), on aligned positions only, plus (1 - alpha) CE on all:

- `exact_map`: the teacher's listed ids mapped onto student ids; the mass of ids that do not map
  joins the tail bucket, then the same-tokenizer divergences of `pipeline.lm.losses` apply as they
  are (same `student.loss`, `tail`, `temperature`), through the chunked loss. Assumes that the same
  string is the same event for both models (a teacher " hel" and a student " hel" both mean "the
  next token is exactly that text"), as TRL's GOLD and NeMo RL's aligner assume.
- `uld`: Universal Logit Distillation (Boizard et al. 2024): the L1 distance between the teacher's and
  the student's probabilities sorted in decreasing order, padded; needs no map. With a top-k cache the
  teacher's sorted vector is known to rank n (its listed ids) plus the remaining mass: the distance is
  sum_{i<=n} |p_(i) - q_(i)| + |(1 - sum p_(i)) - (1 - sum q_(i))|, a lower bound of the full ULD
  that equals it when the listed ids hold all the teacher's mass.
- `gold`: TRL GOLD's hybrid: the `exact_map` divergence on the mapped ids, weighted `matched_weight`,
  plus ULD between the teacher's unmapped listed probabilities (and its tail) and the student's
  probabilities outside the mapped ids, weighted `unmatched_weight`.

`uld` and `gold` compute the student's log-softmax over its whole vocabulary at the scored positions
at once (plain autograd): their memory grows with positions x student vocabulary, unlike `exact_map`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from pipeline.cache.format import DEFINITION_PARTS
from pipeline.cache.schema import check_cross_tokenizer
from pipeline.errors import PipelineError
from pipeline.hashing import tokenizer_sha256
from pipeline.lm.batch import PAD_ID, Objective, TopKBatch, Totals, check_positions, on_device
from pipeline.lm.chunked_loss import chunked_distillation_loss
from pipeline.lm.losses import LossSpec, combine_terms, sparse_terms
from pipeline.lm.student import position_hidden
from pipeline.settings import Settings

log = logging.getLogger(__name__)

CrossLoss = Literal["exact_map", "uld", "gold"]
CE_ONLY = LossSpec(alpha=0.0)  # the extra CE term of unaligned answer positions
REPLACEMENT = "\ufffd"  # what a decoder yields for a partial UTF-8 sequence


class CrossTokenizerSettings(Settings):
    """`student.cross_tokenizer`: present (even empty) to allow a student tokenizer other than the cache's."""

    loss: CrossLoss = "exact_map"  # exact_map (mapped ids + tail bucket, the student.loss divergence), uld (sorted probabilities) or gold (both)
    matched_weight: float = Field(1.0, ge=0)  # gold only: weight of the exact-map divergence
    unmatched_weight: float = Field(1.0, ge=0)  # gold only: weight of ULD over the ids that do not map
    teacher_tokenizer: str | None = None  # the teacher's tokenizer folder, for a cache that ships none (checked against the manifest's hash)


# ---------------------------------------------------------------------------------------------
# Tokens as text


def _backend(tokenizer: Any) -> Any:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise PipelineError(f"cross-tokenizer distillation needs fast (Rust) tokenizers; {type(tokenizer).__name__} is not one")
    return backend


def decode(tokenizer: Any, ids: list[int] | np.ndarray) -> str:
    """The text of a token sequence, special tokens included and no clean-up: what the model saw."""
    return _backend(tokenizer).decode([int(i) for i in ids], skip_special_tokens=False)


def _anchor(tokenizer: Any) -> int:
    """A plain-text token to decode others after, so that a decoder's start-of-text rules do not apply to them."""
    ids = _backend(tokenizer).encode("a", add_special_tokens=False).ids
    if not ids:
        raise PipelineError("cross-tokenizer: the tokenizer cannot encode the text 'a'")
    return ids[-1]


def token_pieces(tokenizer: Any) -> list[str | None]:
    """Per id, the text it adds in the middle of a sequence; None where that is not whole characters."""
    backend, anchor = _backend(tokenizer), _anchor(tokenizer)
    size = len(tokenizer)
    head = backend.decode([anchor], skip_special_tokens=False)
    texts = backend.decode_batch([[anchor, i] for i in range(size)], skip_special_tokens=False)
    pieces: list[str | None] = []
    for text in texts:
        piece = text[len(head) :] if text.startswith(head) else None
        pieces.append(piece if piece and REPLACEMENT not in piece else None)
    return pieces


def _decoder_json(tokenizer: Any) -> str:
    return json.dumps(json.loads(_backend(tokenizer).to_str()).get("decoder"), sort_keys=True)


def vocabulary_map(teacher: Any, student: Any, teacher_rows: int) -> np.ndarray:
    """[teacher_rows] student id of each teacher id, -1 where none adds the same text (see the module doc)."""
    mapping = np.full(teacher_rows, -1, dtype=np.int64)
    if tokenizer_sha256(teacher) == tokenizer_sha256(student):
        size = min(teacher_rows, len(student))
        mapping[:size] = np.arange(size)
        return mapping
    if _decoder_json(teacher) == _decoder_json(student):
        student_vocab = student.get_vocab()
        for token, tid in teacher.get_vocab().items():
            if tid < teacher_rows and token in student_vocab:
                mapping[tid] = student_vocab[token]
    special = set(student.all_special_ids)
    by_piece: dict[str, int] = {}
    for sid, piece in enumerate(token_pieces(student)):
        if piece is not None and sid not in special and piece not in by_piece:
            by_piece[piece] = sid
    for tid, piece in enumerate(token_pieces(teacher)[:teacher_rows]):
        if mapping[tid] < 0 and piece is not None and piece in by_piece:
            mapping[tid] = by_piece[piece]
    return mapping


def char_starts(tokenizer: Any, ids: np.ndarray, text: str) -> np.ndarray:
    """[n + 1] character offset where each token starts (and len(text) at n); -1 where the decoded prefix is not a prefix of the text."""
    n = len(ids)
    listed = [int(i) for i in ids]
    prefixes = _backend(tokenizer).decode_batch([listed[:i] for i in range(1, n)], skip_special_tokens=False) if n > 1 else []
    starts = np.empty(n + 1, dtype=np.int64)
    starts[0], starts[n] = 0, len(text)
    for i, prefix in enumerate(prefixes, start=1):
        starts[i] = len(prefix) if text.startswith(prefix) else -1
    return starts


# ---------------------------------------------------------------------------------------------
# Alignment of one sequence


@dataclass
class SequenceAlignment:
    """One cached sequence seen by the student."""

    student_ids: np.ndarray  # the student's tokens of the decoded text
    response_start: int  # first student token that holds answer text (>= 1)
    student_positions: np.ndarray  # aligned pairs: student token m ...
    teacher_positions: np.ndarray  # ... and teacher token j, predicted from the same text prefix


def align_starts(teacher_starts: np.ndarray, student_starts: np.ndarray, teacher_response_start: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(student response start, aligned student tokens, aligned teacher tokens) from the two boundary arrays.

    Token i's boundary is `starts[i]` (-1: not a character boundary). Teacher tokens from
    `teacher_response_start` on are cached; a student token belongs to the answer when it holds any
    answer character. A boundary that two tokens of one side share (an empty token) is not aligned.
    """
    answer_char = teacher_starts[teacher_response_start]
    if answer_char < 0:  # the answer starts inside a character: its first whole one
        later = teacher_starts[teacher_response_start:]
        answer_char = int(later[later >= 0].min())
    ns = len(student_starts) - 1
    candidates = np.nonzero((student_starts[:ns] >= 0) & (student_starts[:ns] <= answer_char))[0]
    response_start = max(1, int(candidates.max()) if len(candidates) else 1)
    nt = len(teacher_starts) - 1
    teacher_ok, student_ok = _alignable(teacher_starts[:nt]), _alignable(student_starts[:ns])
    teacher_tokens = np.arange(teacher_response_start, nt)
    teacher_tokens = teacher_tokens[teacher_ok[teacher_tokens]]
    student_tokens = np.arange(response_start, ns)
    student_tokens = student_tokens[student_ok[student_tokens]]
    _, t_index, s_index = np.intersect1d(teacher_starts[teacher_tokens], student_starts[student_tokens], assume_unique=True, return_indices=True)
    return response_start, student_tokens[s_index], teacher_tokens[t_index]


def _alignable(starts: np.ndarray) -> np.ndarray:
    """Tokens whose start is a character boundary no other token of the sequence shares; token 0 never (nothing predicts it)."""
    values, counts = np.unique(starts, return_counts=True)
    ok = (starts >= 0) & np.isin(starts, values[counts == 1])
    ok[:1] = False
    return ok


def align_sequence(teacher_ids: np.ndarray, teacher_response_start: int, teacher: Any, student: Any, row: str = "") -> SequenceAlignment:
    """Decode a cached sequence, tokenize its text for the student, align the two by character boundaries."""
    text = decode(teacher, teacher_ids)
    student_ids = np.asarray(_backend(student).encode(text, add_special_tokens=False).ids, dtype=np.int64)
    back = decode(student, student_ids)
    if back != text:
        at = next((i for i, (a, b) in enumerate(zip(back, text)) if a != b), min(len(back), len(text)))
        raise PipelineError(
            f"the student tokenizer cannot reproduce the cached text{f' of row {row}' if row else ''}: "
            f"decoding its tokens gives {back[max(0, at - 10) : at + 10]!r} where the text has {text[max(0, at - 10) : at + 10]!r} (character {at})"
        )
    response_start, s_pos, t_pos = align_starts(char_starts(teacher, teacher_ids, text), char_starts(student, student_ids, text), teacher_response_start)
    return SequenceAlignment(student_ids, response_start, s_pos, t_pos)


# ---------------------------------------------------------------------------------------------
# Batches


@dataclass
class CrossBatch:
    """A cache batch on the student's tokens. The scored positions are the aligned ones first
    (divergence and CE), then the other answer positions (CE only); prompt positions separately."""

    input_ids: torch.Tensor  # [B, L] student tokens, right-padded
    attention_mask: torch.Tensor  # [B, L]
    rows: torch.Tensor  # [S] aligned, then unaligned answer positions
    columns: torch.Tensor  # [S] index of the logits that predict each
    targets: torch.Tensor  # [S]
    listed_ids: torch.Tensor  # [A, w] teacher's listed ids mapped onto student ids (padding PAD_ID)
    listed_logprobs: torch.Tensor  # [A, w] their log-probs (padding and unmapped ids: -inf)
    teacher_logprobs: torch.Tensor  # [A, k] the teacher's listed log-probs as cached, descending (padding -inf): ULD's input
    teacher_mapped: torch.Tensor  # [A, k] bool: the listed id maps onto a student id
    prompt_rows: torch.Tensor  # positions predicting prompt tokens (student.positions all)
    prompt_columns: torch.Tensor
    prompt_targets: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)  # counts behind the alignment report
    settings: CrossTokenizerSettings = field(default_factory=CrossTokenizerSettings)  # the loss its converter was set up with

    @property
    def num_tokens(self) -> int:
        """Divergence positions: the aligned ones."""
        return len(self.listed_ids)

    def to(self, device: torch.device) -> CrossBatch:
        return on_device(self, device)

    def scored(self, positions: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, columns, targets): aligned, then unaligned answer positions, then with positions='all' the prompt ones."""
        check_positions(positions)
        if positions == "response":
            return self.rows, self.columns, self.targets
        return (torch.cat([self.rows, self.prompt_rows]), torch.cat([self.columns, self.prompt_columns]), torch.cat([self.targets, self.prompt_targets]))

    def loss(self, student: torch.nn.Module, objective: Objective, totals: Totals | None = None) -> dict[str, torch.Tensor]:
        """`cross_loss` with the converter's settings; validation scores the exact-map KL."""
        return cross_loss(student, self, objective.spec, self.settings, objective.positions, objective.chunk_positions, totals, exact_map=objective.validation)


def _merge_duplicates(position: np.ndarray, ids: np.ndarray, logprobs: np.ndarray) -> np.ndarray:
    """Log-probs with several entries of one (position, id) summed into the first, the others -inf."""
    key = position * (int(ids.max()) + 1 if len(ids) else 1) + ids
    _, first, inverse, counts = np.unique(key, return_index=True, return_inverse=True, return_counts=True)
    if (counts == 1).all():
        return logprobs
    merged = np.full(len(first), -np.inf, dtype=np.float64)
    np.logaddexp.at(merged, inverse, logprobs.astype(np.float64))
    out = np.full_like(logprobs, -np.inf)
    out[first] = merged.astype(logprobs.dtype)
    return out


def map_entries(listed_ids: np.ndarray, listed_logprobs: np.ndarray, mapping: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[A, k] listed teacher entries onto student ids: (student ids, log-probs, mapped mask).

    An entry that does not map (or is padding) becomes padding: its mass joins the tail bucket.
    """
    listed = np.isfinite(listed_logprobs)
    student = mapping[listed_ids]
    mapped = listed & (student >= 0)
    ids = np.where(mapped, student, PAD_ID)
    logprobs = np.where(mapped, listed_logprobs, -np.inf).astype(listed_logprobs.dtype)
    rows, cols = np.nonzero(mapped)
    logprobs[rows, cols] = _merge_duplicates(rows, ids[rows, cols], logprobs[rows, cols])
    return ids, logprobs, mapped


class CrossTokenizer:
    """Turns cache batches into `CrossBatch`es for one student tokenizer, and counts what aligns."""

    def __init__(self, teacher: Any, student: Any, teacher_rows: int, settings: CrossTokenizerSettings | None = None) -> None:
        self.teacher, self.student = teacher, student
        self.settings = settings or CrossTokenizerSettings()
        self.mapping = vocabulary_map(teacher, student, teacher_rows)
        self.totals = {"student_positions": 0.0, "aligned": 0.0, "teacher_positions": 0.0, "mapped_mass": 0.0}

    def __call__(self, batch: TopKBatch) -> CrossBatch:
        return self.convert(batch)

    def convert(self, batch: TopKBatch) -> CrossBatch:
        """Align every row of a cache batch and gather the teacher's entries at the aligned positions (top-k caches only: `cross_tokenizer` checks)."""
        input_ids, mask = batch.input_ids.numpy(), batch.attention_mask.numpy().astype(bool)
        teacher_starts = batch.response_start.numpy()
        offsets = np.concatenate([[0], np.cumsum(mask.sum(1) - teacher_starts)])
        sequences, aligned, unaligned, prompt, teacher_index = [], [], [], [], []
        for r in range(len(input_ids)):
            seq = align_sequence(input_ids[r][mask[r]], int(teacher_starts[r]), self.teacher, self.student)
            sequences.append(seq.student_ids)
            answer = np.arange(seq.response_start, len(seq.student_ids))
            aligned.append(np.stack([np.full(len(seq.student_positions), r), seq.student_positions], 1))
            rest = answer[~np.isin(answer, seq.student_positions)]
            unaligned.append(np.stack([np.full(len(rest), r), rest], 1))
            before = np.arange(1, seq.response_start)
            prompt.append(np.stack([np.full(len(before), r), before], 1))
            teacher_index.append(offsets[r] + seq.teacher_positions - teacher_starts[r])
        width = max(len(s) for s in sequences)
        ids = np.full((len(sequences), width), PAD_ID, dtype=np.int64)
        attention = np.zeros_like(ids)
        for r, seq_ids in enumerate(sequences):
            ids[r, : len(seq_ids)], attention[r, : len(seq_ids)] = seq_ids, 1
        scored = np.concatenate(aligned + unaligned).astype(np.int64).reshape(-1, 2)
        before = np.concatenate(prompt).astype(np.int64).reshape(-1, 2)
        index = np.concatenate(teacher_index).astype(np.int64)
        listed_ids, listed_logprobs = batch.listed_ids.numpy()[index], batch.listed_logprobs.numpy()[index]
        mapped_ids, mapped_logprobs, mapped = map_entries(listed_ids, listed_logprobs, self.mapping)
        stats = {
            "student_positions": float(len(scored)),
            "aligned": float(len(index)),
            "teacher_positions": float(batch.num_tokens),
            "mapped_mass": float(np.exp(mapped_logprobs.astype(np.float64)).sum()),
        }
        for name, value in stats.items():
            self.totals[name] += value
        tensor = torch.from_numpy
        return CrossBatch(
            input_ids=tensor(ids),
            attention_mask=tensor(attention),
            rows=tensor(scored[:, 0].copy()),
            columns=tensor(scored[:, 1] - 1),
            targets=tensor(ids[scored[:, 0], scored[:, 1]]),
            listed_ids=tensor(mapped_ids),
            listed_logprobs=tensor(mapped_logprobs),
            teacher_logprobs=tensor(listed_logprobs),
            teacher_mapped=tensor(mapped),
            prompt_rows=tensor(before[:, 0].copy()),
            prompt_columns=tensor(before[:, 1] - 1),
            prompt_targets=tensor(ids[before[:, 0], before[:, 1]]),
            stats=stats,
            settings=self.settings,
        )

    def batches(self, batches: Iterator[TopKBatch]) -> Iterator[CrossBatch]:
        return (self.convert(batch) for batch in batches)

    def report(self, totals: dict[str, float] | None = None) -> dict[str, float]:
        """Share of student answer positions aligned, of cached teacher positions aligned, and of the teacher's mass (at aligned positions) that maps exactly."""
        t = totals or self.totals
        return {
            "aligned_student_share": t["aligned"] / max(t["student_positions"], 1),
            "aligned_teacher_share": t["aligned"] / max(t["teacher_positions"], 1),
            "mapped_mass_share": t["mapped_mass"] / max(t["aligned"], 1),
            "aligned_positions": t["aligned"],
        }


def describe_report(report: dict[str, float]) -> str:
    return (
        f"{report['aligned_student_share']:.1%} of student answer positions align ({int(report['aligned_positions']):,}; "
        f"{report['aligned_teacher_share']:.1%} of the cached teacher positions), {report['mapped_mass_share']:.1%} of the teacher's mass there maps exactly"
    )


def cross_tokenizer(cache: Any, student_tokenizer: Any, settings: CrossTokenizerSettings) -> CrossTokenizer:
    """The converter for a cache and a student tokenizer: the teacher tokenizer shipped in the cache (or given), checked by hash."""
    from transformers import AutoTokenizer

    folder = Path(settings.teacher_tokenizer) if settings.teacher_tokenizer else cache.tokenizer_dir
    if not (folder / "tokenizer_config.json").exists() and not (folder / "tokenizer.json").exists():
        raise PipelineError(
            f"{cache.path} ships no teacher tokenizer ({folder} is missing): cross-tokenizer training decodes the cached ids with it; "
            "set student.cross_tokenizer.teacher_tokenizer to the teacher's tokenizer folder"
        )
    teacher = AutoTokenizer.from_pretrained(folder)
    difference = cache.manifest.tokenizer.difference(teacher)
    if difference is not None:
        actual = tokenizer_sha256(teacher)[:12] if difference == "vocabulary" else f"the same vocabulary with other {DEFINITION_PARTS}"
        raise PipelineError(f"the teacher tokenizer at {folder} is {actual}, but the cache was made with {cache.manifest.tokenizer.sha256[:12]}")
    check_cross_tokenizer(cache.storage, cache.path)
    return CrossTokenizer(teacher, student_tokenizer, cache.vocab_size, settings)


def own_tokenizer_converter(cache: Any, folder: Path) -> CrossTokenizer | None:
    """For a student folder whose tokenizer differs from the cache's (one distilled across tokenizers), its converter; else None."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not (folder / "tokenizer_config.json").exists():
        return None
    tokenizer = AutoTokenizer.from_pretrained(folder)
    difference = cache.manifest.tokenizer.difference(tokenizer)
    if difference is None:
        return None
    if difference == "definition":
        raise PipelineError(
            f"the tokenizer in {folder} has the cache's vocabulary but other {DEFINITION_PARTS}: the student would read other ids than it learned from; give it the tokenizer the cache was made with"
        )
    return cross_tokenizer(cache, tokenizer, CrossTokenizerSettings())


# ---------------------------------------------------------------------------------------------
# Losses


def uld_distance(teacher_logprobs: torch.Tensor, student_logprobs: torch.Tensor, teacher_mass: torch.Tensor | None = None, student_mass: torch.Tensor | None = None) -> torch.Tensor:
    """[A] ULD between the teacher's listed probabilities (padding -inf) and the student's full-vocabulary ones (see the module doc).

    The i-th largest listed teacher probability is compared with the student's i-th largest, for as
    many as the teacher lists; what is left of each side's `mass` (default 1) is compared as one value.
    """
    listed_p = torch.where(torch.isneginf(teacher_logprobs), 0.0, teacher_logprobs.to(student_logprobs.dtype).exp())
    p = listed_p.sort(dim=-1, descending=True).values
    listed = p > 0
    width = min(p.shape[1], student_logprobs.shape[1])
    q = student_logprobs.topk(width, dim=-1).values.exp()
    if width < p.shape[1]:
        q = F.pad(q, (0, p.shape[1] - width))
    q = q * listed
    teacher_mass = 1.0 if teacher_mass is None else teacher_mass
    student_mass = 1.0 if student_mass is None else student_mass
    rest = ((teacher_mass - p.sum(-1)).clamp(min=0) - (student_mass - q.sum(-1)).clamp(min=0)).abs()
    return (p - q).abs().sum(-1) + rest


def gold_terms(batch: CrossBatch, logprobs: torch.Tensor, spec: LossSpec, cross: CrossTokenizerSettings) -> torch.Tensor:
    """Summed GOLD divergence over the aligned positions: exact-map divergence + ULD over what does not map."""
    aligned = logprobs[: batch.num_tokens]
    matched, _ = sparse_terms(aligned[:, 0], aligned.gather(-1, batch.listed_ids), None, batch.listed_logprobs, spec)
    listed = torch.isfinite(batch.listed_logprobs)
    mapped_teacher = torch.where(listed, batch.listed_logprobs.to(aligned.dtype).exp(), 0.0).sum(-1)
    student_on_mapped = aligned.gather(-1, batch.listed_ids)
    mapped_student = torch.where(listed, student_on_mapped.exp(), 0.0).sum(-1)
    on_mapped = torch.zeros_like(aligned).scatter_add(-1, batch.listed_ids, listed.to(aligned.dtype)) > 0  # padding's id never marks
    outside = aligned.masked_fill(on_mapped, -torch.inf)
    unmatched_teacher = torch.where(batch.teacher_mapped, -torch.inf, batch.teacher_logprobs)
    unmatched = uld_distance(unmatched_teacher, outside, 1 - mapped_teacher, 1 - mapped_student)
    return cross.matched_weight * matched + cross.unmatched_weight * unmatched.sum()


def cross_loss(
    model: torch.nn.Module,
    batch: CrossBatch,
    spec: LossSpec,
    cross: CrossTokenizerSettings,
    positions: str,
    chunk_positions: int | None = None,
    totals: tuple[int, int] | None = None,
    exact_map: bool = False,
) -> dict[str, torch.Tensor]:
    """The training loss of one CrossBatch: `cross.loss` on aligned positions, CE on every scored one.

    An aligned position weighs alpha x divergence + (1 - alpha) x CE, as with one tokenizer; an
    unaligned answer position, which has no teacher signal, weighs its whole share in CE (the extra
    alpha x CE term), so a student is not taught less of the text where the tokenizers disagree.
    `exact_map` forces the exact-map divergence whatever `cross.loss` and leaves that term out (validation's KL).
    """
    rows, columns, targets = batch.scored(positions)
    hidden = position_hidden(model, batch.input_ids, batch.attention_mask, rows, columns)
    head = model.get_output_embeddings()
    totals = totals or (batch.num_tokens, len(targets))
    unaligned = slice(batch.num_tokens, len(batch.rows))
    extra = not exact_map and spec.alpha > 0 and len(batch.rows) > batch.num_tokens
    if exact_map or cross.loss == "exact_map":
        terms = chunked_distillation_loss(hidden, head.weight, head.bias, targets, batch.listed_ids, batch.listed_logprobs, spec, chunk_positions, None, totals)
        if extra:
            none = batch.listed_ids[:0]
            ce = chunked_distillation_loss(hidden[unaligned], head.weight, head.bias, targets[unaligned], none, batch.listed_logprobs[:0], CE_ONLY, chunk_positions, None, (1, totals[1]))
            terms["loss"] = terms["loss"] + spec.alpha * ce["loss"]
        return terms
    logits = head(hidden)
    logprobs = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)  # float32 at least, as the chunked loss
    target_logprobs = logprobs.gather(-1, targets[:, None])[:, 0]
    if cross.loss == "uld":
        kd_sum = uld_distance(batch.teacher_logprobs, logprobs[: batch.num_tokens]).sum()
    else:
        kd_sum = gold_terms(batch, logprobs, spec, cross)
    terms = combine_terms(kd_sum, -target_logprobs.sum(), *totals, spec)
    if extra:
        terms["loss"] = terms["loss"] - spec.alpha * target_logprobs[unaligned].sum() / max(totals[1], 1)
    return terms


@torch.inference_mode()
def cross_agreement(model: torch.nn.Module, batches: Iterator[CrossBatch]) -> dict[str, float]:
    """On aligned positions: exact-map KL(teacher || student) (top-k + tail bucket) and top-1 agreement
    (the teacher's most likely id, mapped; an unmapped top-1 counts as disagreement); CE per student
    answer token over all of them."""
    from pipeline.lm.losses import sparse_forward_kl

    sums = {"kl_to_teacher": 0.0, "top1_agreement": 0.0, "ce": 0.0}
    aligned = scored_positions = 0
    for batch in batches:
        hidden = position_hidden(model, batch.input_ids, batch.attention_mask, batch.rows, batch.columns)
        logits = model.get_output_embeddings()(hidden).float()
        sums["ce"] += F.cross_entropy(logits, batch.targets, reduction="sum").item()
        a = batch.num_tokens
        sums["kl_to_teacher"] += sparse_forward_kl(logits[:a], batch.listed_ids, batch.listed_logprobs).sum().item()
        top = batch.teacher_logprobs.argmax(-1, keepdim=True)
        teacher_top = torch.where(batch.teacher_mapped.gather(-1, top)[:, 0], _mapped_top(batch, top), -1)
        sums["top1_agreement"] += (logits[:a].argmax(-1) == teacher_top).sum().item()
        aligned, scored_positions = aligned + a, scored_positions + len(batch.targets)
    return {
        "kl_to_teacher": sums["kl_to_teacher"] / max(aligned, 1),
        "top1_agreement": sums["top1_agreement"] / max(aligned, 1),
        "ce": sums["ce"] / max(scored_positions, 1),
        "aligned": aligned,
        "positions": scored_positions,
    }


def _mapped_top(batch: CrossBatch, top: torch.Tensor) -> torch.Tensor:
    """The student id the teacher's top-1 maps to (its entry keeps its slot in `listed_ids` when mapped)."""
    return batch.listed_ids.gather(-1, top)[:, 0]
