"""Judge models by what they write: the teacher and each student answer held-out prompts, the teacher scores the answers.

Teacher-forced figures (KL, top-1 agreement, CE on the teacher's own tokens) say how well a student
predicts the next token of the teacher's text. A student that conditions on its own words drifts
(exposure bias), so those figures do not say whether its answers are any good. Here every model
answers the same prompts with the same decoding (greedy, and sampled at the teacher stage's
temperature and top-p with a fixed seed) through the teacher backends, and each answer is scored:

- teacher-judged NLL: the teacher's mean negative log-likelihood per token of the answer given the
  prompt (the chat template of the teacher stage); the teacher's own answers give the floor;
- ROUGE-L F1 (the `rouge-score` package, stemmed, as distillation papers report it) against the
  teacher's answer under the same decoding, and against the prompt file's reference answers;
- degeneration: distinct-2, the share of answers caught in a loop, mean length, the share that end
  with the stop token;
- generated tokens/s and parameters.

Every figure but speed and size comes with a 95% percentile bootstrap interval over prompts, and
the paired differences of the compared pairs (the same resamples for every model) say whether two
students really differ.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from tqdm import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from pipeline.atomic import atomic_path, write_json
from pipeline.backends.base import BackendName, EngineSettings, GenerationSettings
from pipeline.backends.registry import load_backend
from pipeline.backends.vllm_backend import stop_token_ids
from pipeline.cache.format import DEFINITION_PARTS
from pipeline.data import read_prompts, sample_rows
from pipeline.errors import PipelineError
from pipeline.hashing import sha256_file, tokenizer_definition_sha256, tokenizer_sha256
from pipeline.lm.sequences import encode_prompt, length_limit, refuse_too_long
from pipeline.models import count_parameters
from pipeline.outputs import FileKind, claim_file
from pipeline.reporting import ReportKind, model_table
from pipeline.settings import Positive, Settings

log = logging.getLogger(__name__)

Decoding = Literal["greedy", "sampled"]
TEACHER = "teacher"
LOOP_REPEATS = 3  # an answer loops when one n-gram comes back to back at least this many times ...
LOOP_MIN_WORDS = 6  # ... over at least this many words (six copies of one word, three of a two-word phrase)
LOOP_MAX_NGRAM = 10  # longest repeated phrase looked for, in words
CONFIDENCE = 0.95


class JudgeSettings(Settings):
    """The `judge` section: which held-out prompts, how many, and how every model decodes them."""

    prompts: Path = Path("data/heldout/alpaca_eval.jsonl")  # JSONL, CSV or Parquet with a prompt column, optionally a reference column
    text_column: str = "prompt"
    reference_column: str | None = "reference"  # reference answers (ROUGE-L against them) when the file has this column
    sample: Positive | None = None  # a seeded sample of this many prompts (null: every prompt)
    seed: int = 0  # of the sample, the sampled decoding and the bootstrap
    decoding: list[Decoding] = Field(["greedy", "sampled"], min_length=1)  # sampled: at teacher.generation's temperature and top_p
    max_new_tokens: Positive = 64
    backend: BackendName = "transformers"  # every model generates through it (a student folder is a model vLLM serves)
    dtype: str = "float32"
    device: str = "cpu"
    batch_size: Positive = 8
    bootstrap: Positive = 1000  # resamples of the prompts for the 95% intervals
    engine: EngineSettings = EngineSettings()  # vLLM only

    @field_validator("decoding")
    @classmethod
    def _distinct(cls, decoding: list[str]) -> list[str]:
        if len(set(decoding)) != len(decoding):
            raise ValueError(f"each decoding once, got {decoding}")
        return decoding


@dataclass
class PromptSet:
    """The prompts every model answers, with their reference answers when the file has them."""

    path: str
    sha256: str
    rows: int  # in the file, before sampling
    ids: list[str]
    prompts: list[str]
    references: list[str] | None


@dataclass
class Answers:
    """One model's answers under one decoding: token ids (ending with the stop id when it stopped) and text."""

    tokens: list[list[int]]
    texts: list[str]
    seconds: float


@dataclass
class Interval:
    """A point estimate over the prompts and its 95% bootstrap interval."""

    value: float
    low: float
    high: float


@dataclass
class ModelScores:
    """What one model's answers under one decoding are worth (None: not defined for this model, e.g. the teacher's ROUGE-L against itself)."""

    teacher_nll: Interval
    rouge_l_teacher: Interval | None
    rouge_l_reference: Interval | None
    distinct_2: Interval
    loop_share: Interval
    mean_length: Interval
    eos_share: Interval
    tokens_per_s: float
    params: int


@dataclass
class Comparison:
    """`model` minus `baseline` per metric (paired bootstrap over the same prompts), and the share of the baseline's gap to the teacher closed."""

    model: str
    baseline: str
    differences: dict[str, Interval]
    gap_closed: dict[str, Interval]  # teacher_nll: (baseline - model) / (baseline - teacher); rouge_l_teacher: (model - baseline) / (1 - baseline)


@dataclass
class JudgeReport:
    """The `judge` stage's metrics file."""

    prompts: dict[str, Any]
    decoding: dict[str, dict[str, Any]]
    models: dict[str, dict[str, ModelScores]]  # decoding -> model -> scores
    comparisons: dict[str, list[Comparison]] = field(default_factory=dict)  # decoding -> comparisons


@dataclass
class PerPrompt:
    """Per-prompt quantities of one model's answers, the inputs of every estimate."""

    nll_sum: np.ndarray
    tokens: np.ndarray
    rouge_teacher: np.ndarray | None
    rouge_reference: np.ndarray | None
    bigrams_distinct: np.ndarray
    bigrams: np.ndarray
    loops: np.ndarray
    length: np.ndarray
    ended: np.ndarray


def words(text: str) -> list[str]:
    """Lower-cased whitespace words: the unit of the degeneration metrics."""
    return text.lower().split()


def distinct_bigrams(text: str) -> tuple[int, int]:
    """(distinct word bigrams, word bigrams) of one answer."""
    w = words(text)
    pairs = list(zip(w, w[1:]))
    return len(set(pairs)), len(pairs)


def in_loop(text: str, repeats: int = LOOP_REPEATS, min_words: int = LOOP_MIN_WORDS, max_ngram: int = LOOP_MAX_NGRAM) -> bool:
    """Whether some phrase of 1..max_ngram words comes back to back `repeats` times or more, covering at least `min_words` words.

    A run where word i equals word i + n for r positions in a row is (r + n) / n copies of an n-word phrase.
    """
    w = words(text)
    for n in range(1, max_ngram + 1):
        copies = max(repeats, -(-min_words // n))
        if copies * n > len(w):
            break
        run = 0
        for i in range(len(w) - n):
            run = run + 1 if w[i] == w[i + n] else 0
            if run >= (copies - 1) * n:
                return True
    return False


def rouge_l(targets: Sequence[str], predictions: Sequence[str]) -> np.ndarray:
    """ROUGE-L F1 of each prediction against its target (`rouge-score`, Porter stemmer)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return np.array([scorer.score(target, prediction)["rougeL"].fmeasure for target, prediction in zip(targets, predictions)], dtype=np.float64)


def read_judge_prompts(settings: JudgeSettings) -> PromptSet:
    """The prompt file (checked as any prompt file: column, empty rows, duplicate ids), then its seeded sample."""
    reference = settings.reference_column or ""
    frame = read_prompts(settings.prompts, settings.text_column, response_column=reference)
    rows = frame.height
    if settings.sample is not None:
        if settings.sample > rows:
            raise PipelineError(f"{settings.prompts}: judge.sample {settings.sample} is more than its {rows} prompts")
        frame = sample_rows(frame, settings.sample, settings.seed)
    references = frame["response"].to_list() if "response" in frame.columns else None
    return PromptSet(str(settings.prompts), sha256_file(Path(settings.prompts)), rows, frame["id"].to_list(), frame["prompt"].to_list(), references)


def check_models(teacher: Path, students: dict[str, Path]) -> Any:
    """The teacher's tokenizer, once every student folder is a model with that same tokenizer: the teacher scores the students' token ids as they are."""
    for name, path in {TEACHER: teacher, **students}.items():
        if not (Path(path) / "config.json").exists():
            raise PipelineError(f"{name}: {path} is not a model folder with a config.json")
    if TEACHER in students:
        raise PipelineError(f"'{TEACHER}' names the teacher: give the student another name")
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    expected = tokenizer_sha256(tokenizer), tokenizer_definition_sha256(tokenizer)
    for name, path in students.items():
        theirs = AutoTokenizer.from_pretrained(path)
        actual = tokenizer_sha256(theirs), tokenizer_definition_sha256(theirs)
        if actual != expected:
            raise PipelineError(
                f"student {name} at {path} has another tokenizer ({actual[0][:12]}) than the teacher ({expected[0][:12]})"
                + ("" if actual[0] != expected[0] else f", the same vocabulary with other {DEFINITION_PARTS}")
                + ": "
                "the teacher judges the student's token ids as they are, so both must share one tokenizer"
            )
    return tokenizer


def model_limit(path: Path) -> int:
    config = AutoConfig.from_pretrained(path)
    return getattr(config.get_text_config(), "max_position_embeddings", 1 << 30)


def model_parameters(path: Path) -> int:
    """Parameters of a model folder, counted on the meta device (no weights loaded; tied weights once)."""
    with torch.device("meta"):
        return count_parameters(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path)))


def decodings(settings: JudgeSettings, sampling: GenerationSettings) -> dict[str, GenerationSettings]:
    """The decoding settings every model uses: greedy, and sampled at the teacher stage's temperature and top-p."""
    every = {
        "greedy": GenerationSettings(max_new_tokens=settings.max_new_tokens, temperature=0, top_p=1, seed=settings.seed),
        "sampled": GenerationSettings(max_new_tokens=settings.max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p, seed=settings.seed),
    }
    return {name: every[name] for name in settings.decoding}


def generate_answers(backend: Any, prompts: list[list[int]], settings: GenerationSettings, stop_ids: list[int], batch_size: int, tokenizer: Any, progress: tqdm) -> Answers:
    """Answers in chunks of similar prompt length (less padding), chunk i seeded with seed + i; returned in prompt order."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    tokens: list[list[int] | None] = [None] * len(prompts)
    started = time.perf_counter()
    for chunk, start in enumerate(range(0, len(order), batch_size)):
        rows = order[start : start + batch_size]
        for row, answer in zip(rows, backend.answer([prompts[i] for i in rows], settings, settings.seed + chunk, stop_ids)):
            tokens[row] = list(answer)
        progress.update(len(rows))
    seconds = time.perf_counter() - started
    done = [t or [] for t in tokens]
    stops = set(stop_ids)
    texts = [tokenizer.decode(t[:-1] if t and t[-1] in stops else t, skip_special_tokens=True) for t in done]
    return Answers(done, texts, seconds)


def teacher_nll(backend: Any, prompts: list[list[int]], answers: Answers) -> tuple[np.ndarray, np.ndarray]:
    """(sum of the teacher's negative log-likelihood, answer tokens) per prompt: one forward of prompt + answer each."""
    scored = [(i, list(prompts[i]) + answer) for i, answer in enumerate(answers.tokens) if answer]
    sums, counts = np.zeros(len(prompts)), np.zeros(len(prompts))
    if scored:
        outputs = backend.score([seq for _, seq in scored], [len(prompts[i]) for i, _ in scored], 1)
        for (i, _), output in zip(scored, outputs):
            sums[i], counts[i] = -float(np.sum(output.token_logprobs, dtype=np.float64)), len(output.token_logprobs)
    return sums, counts


def teacher_nlls(backend: Any, prompts: list[list[int]], answers: dict[tuple[str, str], Answers], progress: tqdm | None = None) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """`teacher_nll` of every answer set at once: with a backend that runs a prompt once for all its answers
    (`continuation_logprobs`, transformers) prompt by prompt, else one `score` pass per answer set."""
    joint = getattr(backend, "continuation_logprobs", None)
    if joint is None:
        return {key: teacher_nll(backend, prompts, given) for key, given in answers.items()}
    out = {key: (np.zeros(len(prompts)), np.zeros(len(prompts))) for key in answers}
    for i, prompt in enumerate(prompts):
        given = [(key, answer.tokens[i]) for key, answer in answers.items() if answer.tokens[i]]
        for (key, _), logprobs in zip(given, joint(prompt, [tokens for _, tokens in given])):
            out[key][0][i], out[key][1][i] = -float(np.sum(logprobs, dtype=np.float64)), len(logprobs)
        if progress is not None:
            progress.update(1)
    return out


def per_prompt(answers: Answers, nll: tuple[np.ndarray, np.ndarray], stop_ids: list[int], teacher_texts: list[str] | None, references: list[str] | None) -> PerPrompt:
    stops = set(stop_ids)
    bigrams = np.array([distinct_bigrams(text) for text in answers.texts], dtype=np.float64).reshape(-1, 2)
    ended = np.array([bool(t) and t[-1] in stops for t in answers.tokens], dtype=np.float64)
    return PerPrompt(
        nll_sum=nll[0],
        tokens=nll[1],
        rouge_teacher=None if teacher_texts is None else rouge_l(teacher_texts, answers.texts),
        rouge_reference=None if references is None else rouge_l(references, answers.texts),
        bigrams_distinct=bigrams[:, 0],
        bigrams=bigrams[:, 1],
        loops=np.array([in_loop(text) for text in answers.texts], dtype=np.float64),
        length=np.array([len(t) for t in answers.tokens], dtype=np.float64) - ended,
        ended=ended,
    )


def ratio(numerator: np.ndarray, denominator: np.ndarray, resamples: np.ndarray) -> tuple[float, np.ndarray]:
    """sum(numerator) / sum(denominator) over the prompts, and over each bootstrap resample [B, N] of them."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(numerator.sum() / denominator.sum()), numerator[resamples].sum(1) / denominator[resamples].sum(1)


def estimates(values: PerPrompt, resamples: np.ndarray) -> dict[str, tuple[float, np.ndarray]]:
    """Each metric over the prompts and over each resample: per-token ratios for NLL and distinct-2, per-prompt means for the rest."""
    ones = np.ones_like(values.length)
    out = {
        "teacher_nll": ratio(values.nll_sum, values.tokens, resamples),
        "distinct_2": ratio(values.bigrams_distinct, values.bigrams, resamples),
        "loop_share": ratio(values.loops, ones, resamples),
        "mean_length": ratio(values.length, ones, resamples),
        "eos_share": ratio(values.ended, ones, resamples),
    }
    if values.rouge_teacher is not None:
        out["rouge_l_teacher"] = ratio(values.rouge_teacher, ones, resamples)
    if values.rouge_reference is not None:
        out["rouge_l_reference"] = ratio(values.rouge_reference, ones, resamples)
    return out


def interval(value: float, resampled: np.ndarray) -> Interval:
    tail = 100 * (1 - CONFIDENCE) / 2
    finite = resampled[np.isfinite(resampled)]
    if not len(finite):
        return Interval(value, float("nan"), float("nan"))
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Interval(value, float(low), float(high))


def gap_closed(model: tuple[float, np.ndarray], baseline: tuple[float, np.ndarray], best: tuple[float, np.ndarray]) -> Interval:
    """(baseline - model) / (baseline - best): the share of the baseline's distance to the best value that the model closes."""
    with np.errstate(invalid="ignore", divide="ignore"):
        share = [np.divide(np.subtract(b, m), np.subtract(b, t)) for m, b, t in zip(model, baseline, best)]
    return interval(float(share[0]), share[1])


def compare(model: dict[str, tuple[float, np.ndarray]], baseline: dict[str, tuple[float, np.ndarray]], teacher: dict[str, tuple[float, np.ndarray]], names: tuple[str, str]) -> Comparison:
    """Paired differences (model - baseline) and the gap closed, on the same resamples: toward the teacher's NLL, and toward ROUGE-L 1 (the teacher's against itself)."""
    differences = {key: interval(model[key][0] - baseline[key][0], model[key][1] - baseline[key][1]) for key in model if key in baseline}
    gap = {"teacher_nll": gap_closed(model["teacher_nll"], baseline["teacher_nll"], teacher["teacher_nll"])}
    if "rouge_l_teacher" in model and "rouge_l_teacher" in baseline:
        gap["rouge_l_teacher"] = gap_closed(model["rouge_l_teacher"], baseline["rouge_l_teacher"], (1.0, np.ones_like(model["rouge_l_teacher"][1])))
    return Comparison(names[0], names[1], differences, gap)


def _is_report(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("models"), dict) and isinstance(value.get("decoding"), dict) and isinstance(value.get("prompts"), dict)


def _is_answers(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(row, dict) and {"id", "prompt", "answers"} <= set(row) for row in value)


def _is_side_by_side(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\n") == SIDE_BY_SIDE_TITLE
    except (OSError, UnicodeDecodeError):
        return False


GENERATION_FILE = ReportKind("generation metrics file", "kd judge", _is_report)
ANSWERS_FILE = ReportKind("answers file", "kd judge", _is_answers)
SIDE_BY_SIDE_TITLE = "# Answers side by side"
SIDE_BY_SIDE_FILE = FileKind("side-by-side answers file written by kd judge", _is_side_by_side)


def judge_models(
    settings: JudgeSettings,
    teacher: Path,
    students: dict[str, Path],
    sampling: GenerationSettings,
    chat_template: bool = True,
    comparisons: Sequence[tuple[str, str]] = (),
    metrics_path: Path | None = None,
    answers_path: Path | None = None,
    markdown_path: Path | None = None,
    overwrite: bool = False,
) -> JudgeReport:
    """`kd judge` and the judge stage: every model answers every prompt under each decoding; the teacher scores the answers.

    Every check runs before any model generates (output paths, prompt file, sample, model folders,
    tokenizers, prompt lengths, compared names), and the three files are written only at the end, each
    whole or not at all; `overwrite` lets them replace files of other kinds.
    """
    inputs = [settings.prompts, teacher, *students.values()]
    GENERATION_FILE.claim(metrics_path, None, inputs, overwrite)
    if answers_path is not None:
        claim_file(answers_path, ANSWERS_FILE.output, "--answers", inputs, overwrite)
    if markdown_path is not None:
        claim_file(markdown_path, SIDE_BY_SIDE_FILE, "--markdown", inputs, overwrite)
    prompt_set = read_judge_prompts(settings)
    tokenizer = check_models(teacher, students)
    for pair in comparisons:
        unknown = [name for name in pair if name not in students]
        if unknown:
            raise PipelineError(f"cannot compare {pair[0]} with {pair[1]}: no student named {', '.join(unknown)} (students: {', '.join(students)})")
    if chat_template and not getattr(tokenizer, "chat_template", None):
        raise PipelineError(f"teacher tokenizer at {teacher} has no chat template; set teacher.chat_template: false")
    encoded = [encode_prompt(tokenizer, prompt, chat_template) for prompt in prompt_set.prompts]
    limit = min(length_limit(model_limit(path), settings.max_new_tokens, False) for path in (teacher, *students.values()))
    refuse_too_long([(prompt_set.ids, [(ids, len(ids)) for ids in encoded])], limit, "refuse")
    stop_ids = stop_token_ids(Path(teacher), tokenizer)
    modes = decodings(settings, sampling)
    paths = {**students, TEACHER: teacher}  # students first: only one engine is alive at a time, and the teacher's stays for scoring
    answers: dict[str, dict[str, Answers]] = {mode: {} for mode in modes}
    with tqdm(total=len(encoded) * len(modes) * len(paths), unit="answer", desc="judge: answers") as progress:
        for name, path in paths.items():
            backend = load_backend(settings.backend, Path(path), settings.dtype, settings.batch_size, settings.device, 1, settings.engine)
            for mode, decoding in modes.items():
                progress.set_postfix(model=name, decoding=mode)
                answers[mode][name] = generate_answers(backend, encoded, decoding, stop_ids, settings.batch_size, tokenizer, progress)
            if name != TEACHER:
                close_backend(backend)
    with tqdm(total=len(encoded), unit="prompt", desc="judge: teacher scores the answers") as progress:
        scored = teacher_nlls(backend, encoded, {(mode, name): answers[mode][name] for mode in modes for name in paths}, progress)
    close_backend(backend)
    nll = {mode: {name: scored[mode, name] for name in paths} for mode in modes}
    report = score_answers(settings, prompt_set, modes, answers, nll, stop_ids, {name: model_parameters(Path(path)) for name, path in paths.items()}, comparisons)
    if metrics_path is not None:
        write_json(metrics_path, asdict(report))
    if answers_path is not None:
        write_json(answers_path, answer_rows(prompt_set, answers))
    if markdown_path is not None:
        write_text(markdown_path, side_by_side(report, prompt_set, answers))
    return report


def close_backend(backend: Any) -> None:
    """Release an engine that holds resources (vLLM's workers); transformers backends have nothing to close."""
    close = getattr(backend, "close", None)
    if close is not None:
        close()


def score_answers(
    settings: JudgeSettings,
    prompt_set: PromptSet,
    modes: dict[str, GenerationSettings],
    answers: dict[str, dict[str, Answers]],
    nll: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
    stop_ids: list[int],
    params: dict[str, int],
    comparisons: Sequence[tuple[str, str]] = (),
) -> JudgeReport:
    """The metrics and their intervals; one set of resamples for every model and decoding, so differences are paired."""
    resamples = np.random.default_rng(settings.seed).integers(0, len(prompt_set.ids), size=(settings.bootstrap, len(prompt_set.ids)))
    models: dict[str, dict[str, ModelScores]] = {}
    compared: dict[str, list[Comparison]] = {}
    for mode in modes:
        teacher_texts = answers[mode][TEACHER].texts
        points = {}
        models[mode] = {}
        for name, given in answers[mode].items():
            values = per_prompt(given, nll[mode][name], stop_ids, None if name == TEACHER else teacher_texts, prompt_set.references)
            points[name] = estimates(values, resamples)
            found = {key: interval(*points[name][key]) for key in points[name]}
            generated = sum(len(t) for t in given.tokens)
            models[mode][name] = ModelScores(
                teacher_nll=found["teacher_nll"],
                rouge_l_teacher=found.get("rouge_l_teacher"),
                rouge_l_reference=found.get("rouge_l_reference"),
                distinct_2=found["distinct_2"],
                loop_share=found["loop_share"],
                mean_length=found["mean_length"],
                eos_share=found["eos_share"],
                tokens_per_s=generated / given.seconds if given.seconds > 0 else float("nan"),
                params=params[name],
            )
        compared[mode] = [compare(points[a], points[b], points[TEACHER], (a, b)) for a, b in comparisons]
    prompts = {"path": prompt_set.path, "sha256": prompt_set.sha256, "rows": prompt_set.rows, "judged": len(prompt_set.ids), "sample": settings.sample, "seed": settings.seed}
    decoding = {mode: {"temperature": g.temperature, "top_p": g.top_p, "max_new_tokens": g.max_new_tokens, "seed": g.seed} for mode, g in modes.items()}
    return JudgeReport(prompts | {"references": prompt_set.references is not None, "bootstrap": settings.bootstrap}, decoding, models, compared)


def answer_rows(prompt_set: PromptSet, answers: dict[str, dict[str, Answers]]) -> list[dict[str, Any]]:
    """Per prompt: its id, text, reference and every model's answer under each decoding (what `kd report` quotes)."""
    rows = []
    for i, (row_id, prompt) in enumerate(zip(prompt_set.ids, prompt_set.prompts)):
        row: dict[str, Any] = {"id": row_id, "prompt": prompt}
        if prompt_set.references is not None:
            row["reference"] = prompt_set.references[i]
        row["answers"] = {mode: {name: given.texts[i] for name, given in by_model.items()} for mode, by_model in answers.items()}
        rows.append(row)
    return rows


def write_text(path: Path, text: str) -> None:
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text)


def quote(text: str) -> str:
    """A Markdown block quote of an answer, whatever it holds ('(empty)' for an empty one)."""
    lines = text.strip().splitlines() or ["(empty)"]
    return "\n".join(f"> {line}" if line.strip() else ">" for line in lines)


def side_by_side(report: JudgeReport, prompt_set: PromptSet, answers: dict[str, dict[str, Answers]], limit: int | None = None) -> str:
    """The Markdown file people read: the metrics tables, then per prompt the reference, the teacher's answer and each student's."""
    modes = list(report.models)
    lines = [
        SIDE_BY_SIDE_TITLE,
        "",
        f"{len(prompt_set.ids)} prompts of `{prompt_set.path}` ({prompt_set.rows} in the file; sample {report.prompts['sample']}, seed {report.prompts['seed']}),"
        f" at most {next(iter(report.decoding.values()))['max_new_tokens']} new tokens.",
        "Decoding: " + "; ".join(f"{mode} (temperature {d['temperature']}, top-p {d['top_p']}, seed {d['seed']})" for mode, d in report.decoding.items()) + ".",
        "",
    ]
    for mode in modes:
        lines += ["```", format_judge_table(report, mode), "```", ""]
    for i, (row_id, prompt) in enumerate(zip(prompt_set.ids, prompt_set.prompts)):
        if limit is not None and i >= limit:
            break
        lines += [f"## {i + 1}. `{row_id}`", "", quote(prompt), ""]
        if prompt_set.references is not None:
            lines += ["**reference**", "", quote(prompt_set.references[i]), ""]
        for mode in modes:
            for name, given in answers[mode].items():
                lines += [f"**{name}**, {mode}", "", quote(given.texts[i]), ""]
    return "\n".join(lines)


QUALITY_COLUMNS = [("teacher NLL", "teacher_nll", 3), ("ROUGE-L vs teacher", "rouge_l_teacher", 3), ("ROUGE-L vs reference", "rouge_l_reference", 3)]
DEGENERATION_COLUMNS = [("distinct-2", "distinct_2", 3), ("loops", "loop_share", 2), ("length", "mean_length", 1), ("ends (EOS)", "eos_share", 2)]


def cell(value: Any, digits: int) -> str:
    """An estimate as 'value [low, high]' (its 95% interval)."""
    return f"{value['value']:.{digits}f} [{value['low']:.{digits}f}, {value['high']:.{digits}f}]"


def format_judge_table(report: JudgeReport | dict[str, Any], mode: str) -> str:
    """One decoding's tables: quality (with parameters and speed) and degeneration, each estimate with its 95% interval."""
    data = asdict(report) if isinstance(report, JudgeReport) else report
    scores = data["models"][mode]
    quality = {
        name: {"params": f"{s['params']:,}", "tok/s": f"{s['tokens_per_s']:,.0f}"} | {key: cell(s[key], digits) for _, key, digits in QUALITY_COLUMNS if s.get(key)} for name, s in scores.items()
    }
    degeneration = {name: {key: cell(s[key], digits) for _, key, digits in DEGENERATION_COLUMNS} for name, s in scores.items()}
    first = model_table(quality, [("params", "params", "{}"), *((title, key, "{}") for title, key, _ in QUALITY_COLUMNS), ("tok/s", "tok/s", "{}")], 12, 24)
    second = model_table(degeneration, [(title, key, "{}") for title, key, _ in DEGENERATION_COLUMNS], 12, 24)
    lines = [f"{mode} decoding: {data['prompts']['judged']} held-out prompts, 95% bootstrap intervals over prompts", *first, "", *second]
    for comparison in data.get("comparisons", {}).get(mode, []):
        nll, gap = comparison["differences"].get("teacher_nll"), comparison["gap_closed"]
        parts = [f"{comparison['model']} - {comparison['baseline']}: teacher NLL {cell(nll, 3)}"] if nll else []
        if "rouge_l_teacher" in comparison["differences"]:
            parts.append(f"ROUGE-L vs teacher {cell(comparison['differences']['rouge_l_teacher'], 3)}")
        if "teacher_nll" in gap:
            parts.append(f"NLL gap to the teacher closed {cell(gap['teacher_nll'], 2)}")
        lines += ["", "; ".join(parts)]
    return "\n".join(lines)


def format_examples(rows: list[dict[str, Any]], count: int, mode: str | None = None, chars: int = 400) -> str:
    """The first `count` prompts of an answers file with every model's answer under one decoding (the first one by default), each cut to `chars` characters."""
    lines: list[str] = []
    for row in rows[:count]:
        answers = row["answers"].get(mode) if mode else next(iter(row["answers"].values()), None)
        if answers is None:
            raise PipelineError(f"the answers file has no '{mode}' decoding (it has {', '.join(row['answers'])})")
        lines += [f"prompt {row['id']}: {_cut(row['prompt'], chars)}"]
        if "reference" in row:
            lines.append(f"  {'reference':<12} {_cut(row['reference'], chars)}")
        lines += [f"  {name:<12} {_cut(text, chars)}" for name, text in answers.items()]
        lines.append("")
    return "\n".join(lines).rstrip()


def _cut(text: str, chars: int) -> str:
    flat = " ".join(text.split()) or "(empty)"
    return flat if len(flat) <= chars else flat[: chars - 3] + "..."
