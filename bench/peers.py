"""What the caches of other tools give a student: DistillKit's compressed top-k and axolotl's renormalised top-k.

Reimplemented (torch only, nothing imported from either tool) so bench/loss_quality can train a student on
exactly the teacher signal each tool's offline cache would hand it, scored with exactly that tool's loss, and
report the tool's bytes per position next to ours.

Sources (read for this file; public code, paths as in the tools' repositories):

DistillKit (github.com/arcee-ai/DistillKit)
  - README.md (commit 43f6e1b): the two shipped `logprob_compressor` settings. "Recommended configuration (used at
    Arcee for new captures)": k 128, exact_k 16 in bfloat16, polynomial_terms [0, 1, 2, 3, 4, "sqrt"] in float32,
    no residual bins, no delta encoding, no error diffusion, "~300 bytes/token". "Budget pick": k 50, exact_k 1 in
    bfloat16, polynomial_terms [0, 1, "sqrt"] in float32, same otherwise, "around 114 bytes per token".
  - distillkit/compression/config.py (897bd13): DistributionQuantizationConfig, QuantizationBin, TermDtype,
    SpecialTerm; `logprob_bits` / `total_bits` (the per-position byte count reproduced by `distillkit_layout`).
  - distillkit/compression/compressor.py, monotonic_logprobs.py, bitpack.py: not in the stored copy of arcee-ai's
    repository; read from vendored copies: vpareek2/vpMoE src/DistillKit/distillkit/compression/ (97d924d), all
    three, and AliasJeff/alias-distill-kit distillkit/compression/monotonic_logprobs.py (bf806f0), which matches
    vpMoE's line for line. LogprobCompressor.compress_from_sparse sorts each position's top-k by
    log-prob, descending; compress_monotonic_logprobs stores the first exact_k values cast to exact_dtype, fits the
    rest by least squares (an SVD pseudo-inverse in float32, singular values under 1e-5 dropped) on the terms
    t**i / sqrt(t) / exp(t) at t = 0, 1, ..., k - exact_k - 1, stores the coefficients in term_dtype, then
    quantises the fit's residuals into the optional bins (per-bin scale = max |residual| / 2**(bits-1)); ids are
    bit-packed MSB first at ceil(log2 d) bits (pack_to_bytes). decompress_monotonic_logprobs rebuilds the tail as
    the fit evaluated in term_dtype plus the dequantised residuals cast to exact_dtype; head and tail are
    concatenated with type promotion (bfloat16 head + float32 tail -> float32), so the student sees the head
    rounded to bfloat16 and the polynomial's values, not the teacher's.
  - distillkit/sample_logits_vllm.py (03b326e): the capture path feeds vLLM's float32 raw top-k log-probs
    (rank order) to compress_from_sparse, one row per position, Parquet schema in sample_common.py
    (compressed_logprobs and bytepacked_indices as list<list<uint8>>, input_ids as list<uint64>).
  - distillkit/lossfuncs/kl.py (361c7ac), lossfuncs/common.py (a61c2e7), missing_probability.py,
    configuration.py (83a812b), trainer.py (b8ed189): MissingProbabilityHandling has two options, ZERO and
    SYMMETRIC_UNIFORM; KLDLoss defaults to ZERO (and the run config's default KL entry sets ZERO explicitly).
    ZERO: the teacher's sparse log-probs are tempered (alpha = generation T / distillation T) and renormalised
    over the k listed ids (even at T = 1); the student's log-probs are the full-vocabulary log-softmax of
    logits / T gathered at the k ids, NOT renormalised; KL = sum_k p_t (log p_t - log p_s), no term for the
    missing mass. SYMMETRIC_UNIFORM: the teacher keeps its mass (tempered with the leftover mass as one more
    outcome) and one extra term p_t_missing * (log p_t_missing - log p_s_missing) covers the unlisted ids.
    The batch loss is sum * T**2 / number of tokens.

axolotl (github.com/axolotl-ai-cloud/axolotl), src/axolotl/integrations/kd/
  - README.md, args.py: kd_normalize_topk defaults to true (the validator sets None -> True; older args.py left
    it None, which the loss treated as false), kd_beta 0.0 = forward KL, kd_temperature 1.0, soft loss scaled
    by T**2. There is no default k: offline, k is whatever the dataset stores (chat_template.py takes the most
    common row length); online, kd_online_topk is required and the README's example uses 64 (vLLM caps prompt
    logprobs at 20 unless --max-logprobs is raised). `axolotl-topk` therefore uses 64, `axolotl-top20` vLLM's cap.
  - chat_template.py (08a734b) transform_logprobs: teacher top-k probabilities are renormalised to sum to 1,
    raised to T_gen / T_kd when the temperatures differ, renormalised again, and stored as log-probs.
  - kernels/liger.py (00bfeb4) LigerFusedLinearKLTopKLogprobFunction.distillation_loss_fn (the live loss),
    utils.py normalize_logprobs, topk_logprob/forward_kl.py (reference): student logits / T, full-vocabulary
    log-softmax gathered at the k ids, renormalised over the k ids (normalize_topk), forward KL over the k ids.

Storage counted here (`bytes_per_position`): DistillKit, the payload of one position exactly as its compressor lays
it out (the two uint8 lists per position: compressed log-probs, then bit-packed ids); left out are Parquet's own
per-position list overhead, page headers and compression, and the list<uint64> input_ids column (8 B per token),
and DistillKit writes a row for every position of a sequence, prompt included, where our caches keep answer
positions only. axolotl has no compact cache: offline it reads top-k lists of {"logprob": float, "token":
"token_id:<id>"} structs, and its prepared dataset keeps target_token_ids / target_logprobs / target_mask per
position (Arrow infers int64 / float64 / int64 from the Python lists: 24 B per entry); `bytes_per_position` for
axolotl is the smallest plain form of what it consumes, an int32 id and a float32 log-prob per entry (8 B).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

FIT_NOTE = """DistillKit fits the tail with torch.linalg.svd in float32 on the CPU. For the recommended terms
[0, 1, 2, 3, 4, sqrt] at t = 0..111 the design matrix has condition number ~6.5e8; torch 2.13's CPU (MKL 2024.2)
float32 SVD gets its small singular values wrong (0.41 for 0.84, 12.1 for 3.0, 19.7 for 36.1), and the tail
rebuilt from those coefficients is off by ~1.3 nats on average (measured on synthetic teacher distributions,
V = 49,152), where a float64 solve, or numpy's float32 SVD (OpenBLAS), leaves ~0.017. So what DistillKit's
recommended cache holds depends on the LAPACK of the machine that captured it; distillkit-128 repeats its
arithmetic on this machine's torch, distillkit-128-f64fit is the accurate-solver variant. The budget terms
[0, 1, sqrt] (condition number ~155) are unaffected."""

Missing = Literal["zero", "symmetric_uniform"]
Term = int | Literal["sqrt", "exp"]
ROWS = 2048  # positions per chunk in encode_peer and peer_loss


@dataclass(frozen=True)
class ResidualBin:
    """DistillKit's QuantizationBin: `num_elements` residuals of the fitted tail at `element_bits` bits and one scale."""

    scale_dtype: torch.dtype
    element_bits: int
    num_elements: int


@dataclass(frozen=True)
class PeerScheme:
    """One tool's cache and loss. For DistillKit the fields are its DistributionQuantizationConfig (d is the vocabulary
    passed to encode_peer) and its KL loss's missing-mass handling; for axolotl, k exact float32 log-probs."""

    name: str
    tool: Literal["distillkit", "axolotl"]
    k: int
    exact_k: int = 0
    exact_dtype: torch.dtype = torch.float32
    polynomial_terms: tuple[Term, ...] = ()
    term_dtype: torch.dtype = torch.float32
    residual_bins: tuple[ResidualBin, ...] = ()
    delta_encoding: bool = False
    error_diffusion: bool = False
    normalize_t: bool = False
    solve_dtype: torch.dtype | None = None  # None: as DistillKit, the least squares in the values' dtype (float32)
    missing: Missing = "zero"
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.tool == "axolotl":
            if self.exact_k not in (0, self.k) or self.polynomial_terms or self.residual_bins:
                raise ValueError(f"{self.name}: axolotl stores its top-k as given, nothing compressed")
            return
        # DistributionQuantizationConfig.check_valid
        if not 0 <= self.exact_k <= self.k:
            raise ValueError(f"{self.name}: need 0 <= exact_k <= k")
        if self.exact_k < self.k and not self.polynomial_terms and not self.residual_bins:
            raise ValueError(f"{self.name}: exact_k < k needs polynomial_terms or residual_bins")
        if sum(b.num_elements for b in self.residual_bins) > self.k - self.exact_k:
            raise ValueError(f"{self.name}: residual bins hold more than k - exact_k values")
        if any(not 1 <= b.element_bits <= 64 for b in self.residual_bins):
            raise ValueError(f"{self.name}: element_bits must be within 1..64")


PEER_SCHEMES: dict[str, PeerScheme] = {
    scheme.name: scheme
    for scheme in [
        PeerScheme(
            "distillkit-128",
            "distillkit",
            k=128,
            exact_k=16,
            exact_dtype=torch.bfloat16,
            polynomial_terms=(0, 1, 2, 3, 4, "sqrt"),
            source="DistillKit README.md, 'Recommended configuration (used at Arcee for new captures)', ~300 B/token",
        ),
        PeerScheme(
            "distillkit-128-f64fit",
            "distillkit",
            k=128,
            exact_k=16,
            exact_dtype=torch.bfloat16,
            polynomial_terms=(0, 1, 2, 3, 4, "sqrt"),
            solve_dtype=torch.float64,
            source="NOT a DistillKit setting: distillkit-128 with its least-squares solve in float64, i.e. the fit an accurate float32 SVD gives (see FIT_NOTE)",
        ),
        PeerScheme(
            "distillkit-budget",
            "distillkit",
            k=50,
            exact_k=1,
            exact_dtype=torch.bfloat16,
            polynomial_terms=(0, 1, "sqrt"),
            source="DistillKit README.md, 'budget pick', ~114 B/token",
        ),
        PeerScheme("axolotl-topk", "axolotl", k=64, source="axolotl integrations/kd README.md example kd_online_topk: 64 (no default k exists)"),
        PeerScheme("axolotl-top20", "axolotl", k=20, source="axolotl KD with vLLM's default prompt-logprobs cap of 20"),
    ]
}


@dataclass
class PeerCache:
    """What the student reads back: ids [P, k] and log-probs [P, k] (float32, after the tool's decompression),
    rank order of the teacher's values; `bytes_per_position` of the tool's storage format (see module docstring)."""

    ids: torch.Tensor
    logprobs: torch.Tensor
    bytes_per_position: int


def _bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def index_bits(vocab_size: int) -> int:
    """DistillKit's id width: ceil(log2 d) bits."""
    return max(1, math.ceil(math.log2(vocab_size)))


def distillkit_layout(scheme: PeerScheme, vocab_size: int) -> dict[str, int]:
    """Bytes of each part of one position's DistillKit row, in the order compress_monotonic_logprobs writes them,
    then the bit-packed ids (pack_to_bytes pads each position's bit stream to whole bytes)."""
    parts = {"exact": scheme.exact_k * _bytes(scheme.exact_dtype), "coefficients": len(scheme.polynomial_terms) * _bytes(scheme.term_dtype)}
    for n, b in enumerate(scheme.residual_bins):
        parts[f"bin{n}"] = _bytes(b.scale_dtype) + -(-b.num_elements * b.element_bits // 8)
    parts["ids"] = -(-scheme.k * index_bits(vocab_size) // 8)
    return parts


def bytes_per_position(scheme: PeerScheme, vocab_size: int) -> int:
    if scheme.tool == "axolotl":
        return scheme.k * (4 + 4)
    return sum(distillkit_layout(scheme, vocab_size).values())


# ---- DistillKit's compressor and decompressor, dtype for dtype ----------------------------------------------


def _work_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _terms(terms: tuple[Term, ...], t: int, dtype: torch.dtype, normalize_t: bool) -> torch.Tensor:
    """polynomial_terms(): [t, len(terms)] design matrix at t = 0..t-1 (or linspace(0, 1) with normalize_t)."""
    pts = torch.linspace(0, 1, steps=t, dtype=dtype) if normalize_t else torch.arange(t, dtype=dtype)
    return torch.stack([pts**term if isinstance(term, int) else getattr(torch, term)(pts) for term in terms], dim=-1)


def _fit(values: torch.Tensor, scheme: PeerScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """fit_polynomial(): coefficients [P, n] in term_dtype and the residual [P, t] left by them."""
    work = _work_dtype(values)
    solve = scheme.solve_dtype or work
    x = _terms(scheme.polynomial_terms, values.shape[-1], work, scheme.normalize_t)
    u, s, vh = torch.linalg.svd(x.to(solve), full_matrices=False)  # _solve_least_squares: a pseudo-inverse, s <= 1e-5 dropped
    s_inv = torch.where(s > 1e-5, 1 / s, torch.zeros_like(s))
    coeffs = ((values.to(solve) @ u) * s_inv) @ vh  # = (Vh^T diag(s_inv) U^T y)^T per row
    coeffs = coeffs.to(scheme.term_dtype)
    approx = (x.to(scheme.term_dtype) * coeffs.unsqueeze(-2)).sum(-1).to(work)
    return coeffs, values - approx


def _quant_range(bits: int) -> tuple[int, float]:
    return (0, 1.0) if bits == 1 else (-(2 ** (bits - 1)), 2.0 ** (bits - 1) - 1)


def _quantize(values: torch.Tensor, b: ResidualBin, diffuse: bool, error: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """quantize_naive() / error_diffuse_and_quantize(): (stored scale, unsigned codes, carried error)."""
    if not diffuse:
        values = values.to(_work_dtype(values, error))
    max_abs = values.abs().amax(-1, keepdim=True)
    scale = torch.where(max_abs == 0, torch.ones_like(max_abs), max_abs / (1.0 if b.element_bits == 1 else 2.0 ** (b.element_bits - 1)))
    scale = scale.to(b.scale_dtype).to(values.dtype)
    scaled = values / scale
    low, high = _quant_range(b.element_bits)
    if not diffuse:
        return scale.to(b.scale_dtype), (scaled.round().clamp(low, high) - low).long(), None
    error = torch.zeros_like(scaled[..., 0]) if error is None else error
    codes = torch.zeros_like(scaled, dtype=torch.long)
    for i in range(scaled.shape[-1]):
        current = scaled[..., i] + error
        q = current.round().clamp(low, high)
        error = current - q
        codes[..., i] = (q - low).long()
    return scale.to(b.scale_dtype), codes, error


def _dequantize(codes: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 1:
        return (codes.float() * 2.0 - 1.0) * scale
    return (codes + _quant_range(bits)[0]).float() * scale


def _diffuse_float(values: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """error_diffuse_float(): round to out_dtype one element at a time, carrying the rounding error forward."""
    work = _work_dtype(values)
    values = values.to(work)
    error = torch.zeros_like(values[..., 0])
    out = torch.zeros_like(values, dtype=out_dtype)
    for i in range(values.shape[-1]):
        current = values[..., i] + error
        out[..., i] = current.to(out_dtype)
        error = current - out[..., i].to(work)
    return out


def distillkit_roundtrip(sorted_logprobs: torch.Tensor, scheme: PeerScheme) -> torch.Tensor:
    """decompress_monotonic_logprobs(compress_monotonic_logprobs(x)) for x [P, k] float32 sorted descending, as float32.

    Keeps every cast the byte format implies: values and coefficients pass through their storage dtypes exactly
    (a bit-for-bit view of the bytes would give the same numbers), so only the arithmetic below is repeated."""
    x = sorted_logprobs
    if scheme.delta_encoding:
        work = torch.float64 if scheme.error_diffusion else _work_dtype(x)
        xw = x.to(work)
        deltas = torch.cat([x[..., :1], xw[..., 1:] - xw[..., :-1]], dim=-1)
        x = _diffuse_float(deltas, x.dtype) if scheme.error_diffusion else deltas.to(x.dtype)
    out_dtype = scheme.exact_dtype  # decompress_to_sparse passes no out_dtype
    tail = scheme.k - scheme.exact_k
    exact = x[..., : scheme.exact_k].to(scheme.exact_dtype)
    coeffs = None
    if scheme.polynomial_terms and tail:
        coeffs, residual = _fit(x[..., scheme.exact_k : scheme.k], scheme)
    else:
        residual = x[..., scheme.exact_k : scheme.k]
    pieces, start, error = [], 0, None
    for b in scheme.residual_bins:
        scale, codes, error = _quantize(residual[..., start : start + b.num_elements], b, scheme.error_diffusion, error)
        pieces.append(_dequantize(codes, scale, b.element_bits))
        start += b.num_elements
    if pieces:
        rebuilt = torch.cat(pieces, dim=-1)
        rebuilt = torch.nn.functional.pad(rebuilt, (0, tail - rebuilt.shape[-1]))
    else:
        rebuilt = torch.zeros((*x.shape[:-1], tail), dtype=out_dtype)
    if coeffs is not None:
        fit = (_terms(scheme.polynomial_terms, tail, scheme.term_dtype, scheme.normalize_t) * coeffs.unsqueeze(-2)).sum(-1)
        approx = fit + rebuilt.to(out_dtype)
    else:
        approx = rebuilt.to(out_dtype)
    values = torch.cat([exact.to(out_dtype), approx], dim=-1)
    if scheme.delta_encoding:
        values = torch.cumsum(values.float(), dim=-1).to(out_dtype)
    return values.float()


# ---- public API ---------------------------------------------------------------------------------------------


def encode_peer(scheme: PeerScheme, full_logprobs: torch.Tensor, vocab_size: int) -> PeerCache:
    """The cache `scheme`'s tool would store for these positions, as its reader hands it to the student.

    full_logprobs: [P, V] float32 raw log-softmax of the teacher (what vLLM's raw_logprobs top-k returns)."""
    if full_logprobs.shape[-1] != vocab_size:
        raise ValueError(f"full_logprobs has {full_logprobs.shape[-1]} columns, vocab_size is {vocab_size}")
    if scheme.k > vocab_size:
        raise ValueError(f"{scheme.name}: k = {scheme.k} above the vocabulary ({vocab_size})")
    ids, values = [], []
    for start in range(0, full_logprobs.shape[0], ROWS):
        top = full_logprobs[start : start + ROWS].float().topk(scheme.k, dim=-1)  # sorted, descending
        ids.append(top.indices)
        # DistillKit compresses on the CPU (sample_logits_vllm builds CPU tensors from vLLM's output): the
        # float32 SVD fit is repeated there too, since another device's solver rounds differently
        values.append(top.values if scheme.tool == "axolotl" else distillkit_roundtrip(top.values.cpu(), scheme).to(top.values.device))
    return PeerCache(
        ids=torch.cat(ids) if ids else torch.zeros((0, scheme.k), dtype=torch.long),
        logprobs=torch.cat(values) if values else torch.zeros((0, scheme.k)),
        bytes_per_position=bytes_per_position(scheme, vocab_size),
    )


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, DistillKit's split at -1."""
    return torch.where(x > -1, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _distillkit_teacher(values: torch.Tensor, temperature: float, missing: Missing) -> torch.Tensor:
    """get_target_logprobs() with log_target, generation temperature 1 (OfflineSignalSource's default)."""
    if missing == "symmetric_uniform" and math.isclose(temperature, 1.0):
        return values
    alpha = 1.0 / temperature
    scaled = alpha * values
    lse = torch.logsumexp(scaled, dim=-1, keepdim=True)
    if missing == "zero":
        return scaled - lse
    leftover = (1.0 - torch.logsumexp(values, dim=-1, keepdim=True).exp()).clamp(0, 1)
    return scaled - (lse.exp() + leftover.pow(alpha)).log()


def _renormalized(logprobs: torch.Tensor) -> torch.Tensor:
    """axolotl's normalize_logprobs(): exp(x - logsumexp x), divided by its sum, log."""
    probs = torch.exp(logprobs - torch.logsumexp(logprobs, dim=-1, keepdim=True))
    return torch.log(probs / probs.sum(-1, keepdim=True))


def _axolotl_teacher(values: torch.Tensor, temperature: float) -> torch.Tensor:
    """chat_template transform_logprobs(): renormalise, temper (generation T = 1), renormalise, log."""
    probs = values.exp()
    total = probs.sum(-1, keepdim=True)
    probs = torch.where(total > 1e-9, probs / total, probs)
    if temperature != 1.0:
        probs = probs ** (1.0 / temperature)
    return torch.log(probs / probs.sum(-1, keepdim=True))


def peer_loss(scheme: PeerScheme, student_logits: torch.Tensor, cache: PeerCache, temperature: float = 1.0) -> torch.Tensor:
    """Per-position forward KL [P] as the tool computes it, before its T**2 factor and its mean over tokens
    (multiply by T**2 as both tools do, and as bench.loss_quality.full_logit_loss does).

    DistillKit: sparse_kl_div_inner with the scheme's missing-mass handling (default ZERO: teacher renormalised over
    its k ids, student not). axolotl: teacher and student both renormalised over the k ids (kd_normalize_topk)."""
    if student_logits.shape[0] != cache.ids.shape[0]:
        raise ValueError(f"{student_logits.shape[0]} student rows for {cache.ids.shape[0]} cached positions")
    out = []
    for start, logits in zip(range(0, student_logits.shape[0], ROWS), student_logits.split(ROWS)):  # split: one cat in backward
        logits = logits.float()
        # DistillKit rescales by the ratio of temperatures (get_logprobs), axolotl divides (liger kernel)
        logits = logits / temperature if scheme.tool == "axolotl" else (logits if math.isclose(temperature, 1.0) else logits * (1.0 / temperature))
        ids = cache.ids[start : start + ROWS].to(logits.device)
        values = cache.logprobs[start : start + ROWS].to(logits.device).float()
        student = logits.gather(-1, ids) - torch.logsumexp(logits, dim=-1, keepdim=True)
        with torch.no_grad():
            teacher = _axolotl_teacher(values, temperature) if scheme.tool == "axolotl" else _distillkit_teacher(values, temperature, scheme.missing)
        if scheme.tool == "axolotl":
            student = _renormalized(student)
        kl = (teacher.exp() * (teacher - student)).sum(-1)
        if scheme.tool == "distillkit" and scheme.missing == "symmetric_uniform":
            eps = 1e-6
            log_t_missing = _log1mexp(torch.logsumexp(teacher, dim=-1).clamp(max=-eps))
            log_s_missing = _log1mexp(torch.logsumexp(student, dim=-1).clamp(max=-eps))
            t_missing = log_t_missing.exp()
            kl = kl + torch.where(t_missing > eps, t_missing * (log_t_missing - log_s_missing), torch.zeros_like(t_missing))
        out.append(kl)
    return torch.cat(out) if out else student_logits.new_zeros(0)
