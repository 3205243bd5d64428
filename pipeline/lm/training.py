"""Student training for language models: stream the cache, minimise the distillation loss."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator
from transformers import AutoTokenizer

from pipeline.cache.format import CAUSAL_LM_TASK, DEFINITION_PARTS, VOCABULARY_ONLY, tokenizer_difference
from pipeline.cache.reader import Cache
from pipeline.cache.schema import check_student
from pipeline.errors import PipelineError
from pipeline.hashing import tokenizer_sha256
from pipeline.lm.chunked_loss import chunked_distillation_loss
from pipeline.lm.cross_tokenizer import CrossBatch, CrossTokenizer, CrossTokenizerSettings, cross_loss, cross_tokenizer, describe_report
from pipeline.lm.cross_tokenizer import scored as cross_scored
from pipeline.lm.losses import LossSpec
from pipeline.lm.model_card import model_card
from pipeline.lm.parallel import DEVICE_PATTERN, Parallel, Precision, Processes, autocast, training_processes
from pipeline.lm.prune import PruneSettings
from pipeline.lm.resume import TRAINING_STATE_FOLDER, OtherRunError, check_same_run, full_model_state, load_training_state, remove_training_state, restore_training_state, save_training_state
from pipeline.lm.streaming import Positions, TopKBatch, count_batches, prefetched, scored_positions, stream_batches
from pipeline.lm.student import PRUNE, SCRATCH, initial_student, position_hidden, student_config
from pipeline.models import STUDENT_FOLDER, count_parameters, save_checkpoint
from pipeline.outputs import claim_file, claim_folder
from pipeline.settings import Positive
from pipeline.training import LOSS_LOG_FILE, train_loop, write_loss_log

log = logging.getLogger(__name__)


class StudentSettings(LossSpec):
    """The `student` section: the starting point, the loss (LossSpec's fields), the optimisation and where it runs."""

    init: str = "scratch"  # scratch: a random student built from `model`; prune: cut from the teacher (`prune`); or the path of a pretrained HF causal-LM folder
    model: dict[str, Any] = {}  # LlamaConfig fields of a scratch student; the vocabulary comes from the cache
    prune: PruneSettings | None = None  # init prune: which teacher layers (and MLP width) the student keeps
    positions: Positions = "response"  # or "all": CE also on prompt tokens
    chunk_positions: Positive = 256
    epochs: Positive = 4
    max_steps: Positive | None = None  # optimizer steps; when set it replaces `epochs` (the stream wraps around as needed)
    batch_size: Positive = 8  # sequences per micro-batch and process; global batch = batch_size x processes x grad_accumulation
    grad_accumulation: Positive = 1
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(10, ge=0)
    seed: int = 0
    shuffle_rows: Positive = 256
    device: str = Field("auto", pattern=DEVICE_PATTERN)  # auto (a GPU when there is one), cpu, cuda, cuda:N
    precision: Precision = "fp32"  # or bf16: mixed precision, float32 master weights
    parallel: Parallel = "ddp"  # with several processes (torchrun): ddp, or fsdp (FSDP2, for students that do not fit one GPU)
    eval_every: int = Field(0, ge=0)  # validation KL every N steps (0: at the end only)
    eval_positions: Positive | None = 1024  # validation KL during training on a seeded sample of about this many positions (None: the whole split); `kd evaluate` scores the whole split
    save_every: int = Field(0, ge=0)  # a resumable training state every N steps (0: none)
    tokenizer: str | None = None  # the student's tokenizer folder (default: a pretrained init's own, else the cache's)
    cross_tokenizer: CrossTokenizerSettings | None = None  # set to train a student whose tokenizer differs from the cache's (pipeline/lm/cross_tokenizer.py)

    @field_validator("model")
    @classmethod
    def _llama_fields(cls, fields: dict[str, Any]) -> dict[str, Any]:
        student_config(fields)  # a typo (hiden_size) or shapes that do not fit are refused here, not trained past
        return fields

    def dump(self) -> dict[str, Any]:
        """The settings as JSON values; the cross-tokenizer keys only when set, so a same-tokenizer run records what it always did."""
        unset = {name for name in CROSS_TOKENIZER_KEYS if getattr(self, name) is None}
        return self.model_dump(mode="json", exclude=unset)


CROSS_TOKENIZER_KEYS = ("tokenizer", "cross_tokenizer")


# Settings a resumed run may change: they decide when things happen or where, not what is computed.
RESUMABLE_CHANGES = {"eval_every", "eval_positions", "save_every", "device"}
VALIDATION_SPEC = LossSpec(loss="forward_kl", tail="bucket", alpha=1.0, temperature=1.0)  # the KL `kd evaluate` reports


@dataclass
class StudentRun:
    """What training returns: one row per optimizer step, and one per validation."""

    steps: list[dict[str, float]]
    validation: list[dict[str, float]]


def tokenizer_mismatch(cache: Cache, tokenizer: Any, tokenizer_path: Path) -> str | None:
    """Why a student's tokenizer is not the one the cache was made with (the whole tokenizer, where the cache records it), or None."""
    record = cache.manifest["tokenizer"]
    difference = tokenizer_difference(record, tokenizer)
    if difference is None:
        return None
    actual = f"{tokenizer_sha256(tokenizer)[:12]} ({len(tokenizer)} tokens)" if difference == "vocabulary" else f"the same vocabulary with other {DEFINITION_PARTS}"
    made_with = f"the cache was made with tokenizer {record['sha256'][:12]} ({record['tokenizer_size']} tokens)"
    if Path(tokenizer_path) == Path(cache.tokenizer_dir):
        return f"tokenizer mismatch: {made_with}, but the one shipped in {tokenizer_path} is {actual}: it was changed after the teacher wrote it; restore it, or give the teacher's tokenizer with --tokenizer"
    hint = "to distil across tokenizers set student.cross_tokenizer" if difference == "vocabulary" else "the same text would become other ids: use the tokenizer the cache was made with"
    return f"tokenizer mismatch: {made_with}, the student's at {tokenizer_path} is {actual}; {hint}"


def check_compatibility(cache: Cache, tokenizer: Any, tokenizer_path: Path, settings: StudentSettings) -> None:
    """Refuse a cache this student cannot learn from, saying what differs."""
    cache.require_task(CAUSAL_LM_TASK, "a causal LM student")
    mismatch = tokenizer_mismatch(cache, tokenizer, tokenizer_path)
    if mismatch:
        raise PipelineError(mismatch)
    if cache.manifest["tokenizer"].get("definition_sha256") is None:
        log.warning("%s: %s", cache.path, VOCABULARY_ONLY)
    check_student(cache.storage, cache.path, settings.loss, settings.tail)


def check_positions(student: torch.nn.Module, cache: Cache, init: str) -> None:
    """Refuse a student whose position limit is below the cache's longest sequence: it would train past what it was built for."""
    limit = student.config.max_position_embeddings
    longest = max(cache.longest_sequence(split) for split in cache.splits if cache.splits[split].get("shards"))
    if longest > limit:
        where = "student.model.max_position_embeddings" if init == SCRATCH else f"the student's max_position_embeddings ({init})"
        raise PipelineError(f"{where} is {limit}, but {cache.path} holds a sequence of {longest} tokens: raise it to at least {longest}")


def student_tokenizer_path(cache: Cache, tokenizer_path: Path | None, init: str = SCRATCH) -> Path:
    """The tokenizer given, else a pretrained student's own, else the one shipped inside the cache."""
    own = Path(init) if init != SCRATCH and (Path(init) / "tokenizer_config.json").exists() else None
    path = tokenizer_path or own or cache.tokenizer_dir
    if not path.exists():
        raise PipelineError(f"no tokenizer at {path}: this cache does not ship one, pass the teacher's tokenizer folder")
    return path


def batch_loss(model: torch.nn.Module, batch: TopKBatch, settings: StudentSettings, totals: tuple[int, int] | None = None, validation: bool = False) -> dict[str, torch.Tensor]:
    """The training loss of one batch, with the output layer applied chunk by chunk inside the loss.

    `totals` (divergence positions, CE positions of the whole step) turn sums into the step's means;
    `validation` scores the KL `kd evaluate` reports instead of the training loss.
    """
    spec, positions = (VALIDATION_SPEC, "response") if validation else (settings, settings.positions)
    if isinstance(batch, CrossBatch):
        return cross_loss(model, batch, spec, settings.cross_tokenizer or CrossTokenizerSettings(), positions, settings.chunk_positions, totals, exact_map=validation)
    rows, columns, targets = scored_positions(batch, positions)
    hidden = position_hidden(model, batch.input_ids, batch.attention_mask, rows, columns)
    head = model.get_output_embeddings()
    return chunked_distillation_loss(hidden, head.weight, head.bias, targets, batch.topk_ids, batch.topk_logprobs, spec, settings.chunk_positions, batch.counts, totals)


def scored_counts(batch: TopKBatch | CrossBatch, positions: str) -> tuple[int, int]:
    """(divergence positions, CE positions) of a batch."""
    if isinstance(batch, CrossBatch):
        return batch.num_tokens, len(cross_scored(batch, positions)[0])
    return batch.num_tokens, len(scored_positions(batch, positions)[0])


class DistillationStep(torch.nn.Module):
    """The student and its loss as one module, so that DDP and FSDP2 see (and synchronise) the whole step."""

    def __init__(self, student: torch.nn.Module, settings: StudentSettings) -> None:
        super().__init__()
        self.student = student
        self.settings = settings

    def forward(self, batch: TopKBatch, totals: tuple[int, int], validation: bool = False) -> dict[str, torch.Tensor]:
        return batch_loss(self.student, batch, self.settings, totals, validation)


class StepPlan:
    """Which micro-batches make each optimizer step of each process, from the manifest alone.

    Every process must run the same number of steps (DDP and FSDP wait for each other at every
    step), so with several processes an epoch has as many steps as the process with the fewest
    micro-batches can fill, and the few sequences beyond are left for that epoch.
    """

    def __init__(self, cache: Cache, settings: StudentSettings, processes: Processes, convert: CrossTokenizer | None = None) -> None:
        self.cache, self.settings, self.processes, self.convert = cache, settings, processes, convert
        self._steps: dict[int, int] = {}

    def batches(self, epoch: int, rank: int) -> int:
        s = self.settings
        return count_batches(self.cache, "train", s.batch_size, s.seed + epoch, s.shuffle_rows, rank, self.processes.world)

    def steps_in(self, epoch: int) -> int:
        if epoch not in self._steps:
            accumulation, world = self.settings.grad_accumulation, self.processes.world
            counts = [self.batches(epoch, rank) for rank in range(world)]
            steps = math.ceil(counts[0] / accumulation) if world == 1 else min(counts) // accumulation
            if steps == 0:
                raise PipelineError(
                    f"the train split is too small for {world} process(es) x {accumulation} accumulated batches of {self.settings.batch_size}: a process gets {min(counts)} batch(es) per epoch"
                )
            self._steps[epoch] = steps
        return self._steps[epoch]

    def report_unused(self) -> None:
        """Warn when equal steps per process leave a noticeable share of the first epoch's batches unused."""
        world, accumulation = self.processes.world, self.settings.grad_accumulation
        batches = sum(self.batches(0, rank) for rank in range(world))
        unused = 1 - self.steps_in(0) * world * accumulation / batches
        if world > 1 and unused > 0.05 and self.processes.main:
            log.warning(
                "%d processes: the shards split unevenly (whole shards per process), so %.0f%% of an epoch's batches go unused; write the cache in more, smaller shards (teacher.shard_rows)",
                world,
                100 * unused,
            )

    @property
    def total(self) -> int:
        return self.settings.max_steps or sum(self.steps_in(epoch) for epoch in range(self.settings.epochs))

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, steps done in it) before optimizer step `step`."""
        epoch = 0
        while step >= self.steps_in(epoch):
            step -= self.steps_in(epoch)
            epoch += 1
        return epoch, step

    def steps(self, start: int) -> Iterator[tuple[int, list[TopKBatch]]]:
        """(epoch, micro-batches) of this process for steps start .. total - 1, decoded ahead in a thread."""
        s, accumulation = self.settings, self.settings.grad_accumulation
        epoch, done = self.position(start)
        step = start
        while step < self.total:
            stream = stream_batches(self.cache, "train", s.batch_size, s.seed + epoch, s.shuffle_rows, self.processes.rank, self.processes.world, skip=done * accumulation)
            batches = prefetched(stream if self.convert is None else self.convert.batches(stream))
            try:
                for _ in range(done, self.steps_in(epoch)):
                    if step == self.total:
                        break
                    group = list(itertools.islice(batches, accumulation))
                    if not group:
                        raise PipelineError(f"the train split of {self.cache.path} ended before the planned step {step}: its shards do not match the manifest")
                    yield epoch, group
                    step += 1
            finally:
                batches.close()
            epoch, done = epoch + 1, 0


def validation_kl(model: torch.nn.Module, cache: Cache, settings: StudentSettings, processes: Processes, convert: CrossTokenizer | None = None) -> float | None:
    """Mean KL(teacher || student) over the cache's validation split (top-k + tail, or the sampled estimate).

    A split larger than `student.eval_positions` is scored on a seeded sample of it (shards and rows
    in the seeded order, batches until that many positions), the same sample at every validation, so
    validation stays a bounded cost at any cache size. Every process scores the same positions, so
    FSDP's collectives line up and no reduction is needed. None when the cache has no validation split.
    """
    if not cache.splits.get("validation", {}).get("shards"):
        return None
    kl, positions = 0.0, 0
    sample = validation_is_sampled(cache, settings)
    was_training = model.training
    model.eval()
    with torch.no_grad():  # float32 even when training in bf16: the figure `kd evaluate` reports
        batches = stream_batches(cache, "validation", settings.batch_size, seed=settings.seed if sample else None)
        for batch in batches if convert is None else convert.batches(batches):
            kl += model(batch.to(processes.device), (1, 1), validation=True)["kd"].item()  # totals (1, 1): sums, not means
            positions += batch.num_tokens
            if sample and positions >= (settings.eval_positions or 0):
                break
    model.train(was_training)
    return kl / max(positions, 1)


def validation_is_sampled(cache: Cache, settings: StudentSettings) -> bool:
    """Whether validation during training scores a sample (the split has more positions than student.eval_positions)."""
    return settings.eval_positions is not None and cache.splits["validation"]["tokens"] > settings.eval_positions


def describe_validation(cache: Cache, settings: StudentSettings) -> str:
    """Which validation the training log shows: the whole split, or a sample of it."""
    total = cache.splits["validation"]["tokens"]
    if validation_is_sampled(cache, settings):
        return f"validation KL on a seeded sample of about {settings.eval_positions:,} of the split's {total:,} positions (student.eval_positions); `kd evaluate` scores them all"
    return f"validation KL on the whole validation split ({total:,} positions)"


def accumulated_step(model: torch.nn.Module, group: list[TopKBatch], settings: StudentSettings, processes: Processes) -> dict[str, float]:
    """Forward and backward over this process's micro-batches of one optimizer step; the step's loss terms.

    Each micro-batch's loss is its share of the mean over the global batch (all processes, all
    micro-batches), so the gradients add up to that mean's: the same step as one process with one
    batch of all those sequences. Gradients are synchronised on the last micro-batch only.
    """
    totals = processes.all_sum([sum(scored_counts(batch, settings.positions)[i] for batch in group) for i in (0, 1)])
    sums = torch.zeros(3, dtype=torch.float64)
    for i, batch in enumerate(group):
        with processes.gradient_sync(model, sync=i == len(group) - 1), autocast(processes.device, settings.precision):
            terms = model(batch.to(processes.device), (int(totals[0]), int(totals[1])))
        (terms["loss"] * processes.world).backward()  # DDP and FSDP average the processes' gradients
        sums += torch.tensor([terms[name].item() for name in ("loss", "kd", "ce")], dtype=torch.float64)
    return dict(zip(("loss", "kd", "ce"), processes.all_sum(sums.tolist()))) | {"positions": int(totals[0])}


def run_identity(cache: Cache, settings: StudentSettings, processes: Processes) -> dict[str, Any]:
    """What a saved training state must share with this run to be resumed by it."""
    dump = {key: value for key, value in settings.dump().items() if key not in RESUMABLE_CHANGES}
    return {f"student.{key}": value for key, value in dump.items()} | {"cache": cache.manifest["manifest_sha256"], "processes": processes.world}


def train_student(
    cache_dir: Path,
    settings: StudentSettings,
    out_dir: Path,
    tokenizer_path: Path | None = None,
    loss_log: Path | None = None,
    checkpoint_dir: Path | None = None,
    teacher: Path | None = None,
    restart_other_runs: bool = False,
    overwrite: bool = False,
) -> StudentRun:
    """Train a student on the cache's train split, save it (HF folder, tokenizer, model card) to out_dir.

    tokenizer_path None means the tokenizer shipped in the cache. `loss_log` also writes the step log
    as CSV (and the validation log beside it). `checkpoint_dir` holds the training state every
    `save_every` steps: a rerun resumes from it (refusing one from a run with other settings unless
    `restart_other_runs`), and it is deleted once the student is saved. `teacher` is the teacher's
    folder, needed by init prune. Run under torchrun, each process trains on its share of the shards.
    Every output path is checked before any work (pipeline.outputs); `overwrite` lets them replace
    folders and files that are not this kind of output.
    """
    claim_student_outputs(cache_dir, settings, out_dir, tokenizer_path, loss_log, checkpoint_dir, teacher, overwrite)
    cache = Cache.open(cache_dir)
    tokenizer_path = student_tokenizer_path(cache, tokenizer_path or (Path(settings.tokenizer) if settings.tokenizer else None), settings.init)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    convert = None
    if settings.cross_tokenizer is None:
        check_compatibility(cache, tokenizer, tokenizer_path, settings)
    else:
        convert = cross_student(cache, tokenizer, settings)
    cache.check_shards("train")
    if cache.splits.get("validation", {}).get("shards"):
        cache.check_shards("validation")  # a damaged shard stops the run now, not at the first validation
    with training_processes(settings.device) as processes:
        return _train(cache, settings, out_dir, tokenizer, loss_log, checkpoint_dir, teacher, restart_other_runs, processes, convert)


def claim_student_outputs(
    cache_dir: Path, settings: StudentSettings, out_dir: Path, tokenizer_path: Path | None, loss_log: Path | None, checkpoint_dir: Path | None, teacher: Path | None, overwrite: bool
) -> None:
    """Refuse, before any work, outputs that would replace the user's files or the run's own inputs.

    The student folder is replaced only when it is saved; the training state folder must hold nothing
    but a training state (it is scratch space, and never the user's files, `--overwrite` or not); the
    loss log may not lie inside it.
    """
    pretrained = Path(settings.init) if settings.init not in (SCRATCH, PRUNE) else None
    inputs = [cache_dir, tokenizer_path, Path(settings.tokenizer) if settings.tokenizer else None, teacher, pretrained]
    claim_folder(out_dir, STUDENT_FOLDER, "--out", inputs, overwrite, apart_from={"--checkpoints": checkpoint_dir})
    if checkpoint_dir is not None:
        claim_folder(checkpoint_dir, TRAINING_STATE_FOLDER, "--checkpoints", inputs, apart_from={"--out": out_dir})
    for path in [loss_log, validation_log_path(loss_log)] if loss_log is not None else []:
        claim_file(path, LOSS_LOG_FILE, "--loss-log", inputs, overwrite, apart_from={"--checkpoints": checkpoint_dir})


def cross_student(cache: Cache, tokenizer: Any, settings: StudentSettings) -> CrossTokenizer:
    """The converter for a student with its own tokenizer, after the checks its settings need; logs the validation split's alignment."""
    cache.require_task(CAUSAL_LM_TASK, "a causal LM student")
    cross = settings.cross_tokenizer or CrossTokenizerSettings()
    if settings.init == PRUNE:
        raise PipelineError("student.init prune starts from the teacher's own vocabulary: it cannot be combined with student.cross_tokenizer")
    if cross.loss != "exact_map" and settings.temperature != 1:
        raise PipelineError(f"student.cross_tokenizer.loss {cross.loss} compares probabilities at temperature 1: leave student.temperature at 1.0")
    convert = cross_tokenizer(cache, tokenizer, cross)
    if cache.splits.get("validation", {}).get("shards"):
        totals = dict.fromkeys(convert.totals, 0.0)
        for batch in convert.batches(stream_batches(cache, "validation", settings.batch_size)):
            for name, value in batch.stats.items():
                totals[name] += value
        convert.totals = dict.fromkeys(convert.totals, 0.0)
        if not totals["aligned"]:
            raise PipelineError(f"no position of {cache.path}'s validation split aligns with the student tokenizer: nothing to distil (check that it is a tokenizer for the same kind of text)")
        log.info("cross-tokenizer, validation split: %s", describe_report(convert.report(totals)))
    return convert


def _train(
    cache: Cache,
    settings: StudentSettings,
    out_dir: Path,
    tokenizer: Any,
    loss_log: Path | None,
    checkpoint_dir: Path | None,
    teacher: Path | None,
    restart_other_runs: bool,
    processes: Processes,
    convert: CrossTokenizer | None = None,
) -> StudentRun:
    vocab_size = cache.vocab_size if convert is None else len(tokenizer)
    student = initial_student(settings.init, settings.model, vocab_size, settings.seed, prune=settings.prune, teacher=teacher)
    if convert is None:
        check_positions(student, cache, settings.init)
    student = student.to(processes.device)
    model = processes.wrap(DistillationStep(student, settings), settings.parallel, student.model.layers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    plan, identity = StepPlan(cache, settings, processes, convert), run_identity(cache, settings, processes)
    has_validation = bool(cache.splits.get("validation", {}).get("shards"))
    if has_validation and processes.main:
        log.info("student: %s", describe_validation(cache, settings))
    plan.report_unused()
    state = load_training_state(checkpoint_dir)
    if state is not None and checkpoint_dir is not None:
        try:
            check_same_run(state, identity, checkpoint_dir)
        except OtherRunError as error:
            if not restart_other_runs:
                raise
            log.warning("%s; starting over", str(error).split(":")[0])
            state = None
    steps, validation = [], []
    if state is not None:
        restore_training_state(state, model, optimizer, processes)
        steps, validation = state["steps"], state["validation"]
        log.info("resuming from step %d of %d (%s)", len(steps), plan.total, checkpoint_dir)
    del state

    def after_step(rows: list[dict[str, float]]) -> None:
        step = len(rows)
        if settings.eval_every and step % settings.eval_every == 0 and step < plan.total and has_validation:
            validation.append({"step": step, "val_kl": validation_kl(model, cache, settings, processes, convert)})
        if checkpoint_dir is not None and settings.save_every and step % settings.save_every == 0 and step < plan.total:
            epoch, done = plan.position(step)
            save_training_state(checkpoint_dir, model, optimizer, {"identity": identity, "steps": rows, "validation": validation, "position": {"epoch": epoch, "steps_done": done}}, processes)

    steps = train_loop(
        model,
        optimizer,
        plan.steps(len(steps)),
        lambda group: accumulated_step(model, group, settings, processes),
        total_steps=plan.total,
        peak_lr=settings.lr,
        warmup_steps=settings.warmup_steps,
        desc=f"student {settings.loss} a={settings.alpha}",
        count_tokens=lambda group: sum(batch.num_tokens for batch in group) * processes.world,
        log=steps,
        after_step=after_step,
        show_progress=processes.main,
    )
    final_kl = validation_kl(model, cache, settings, processes, convert)
    if final_kl is not None:
        validation.append({"step": len(steps), "val_kl": final_kl})
    model_state = full_model_state(model)
    if processes.main:
        student_state = {key.removeprefix("student."): value for key, value in model_state.items()}
        card = model_card(
            cache,
            settings.dump(),
            count_parameters(student),
            len(steps),
            sum(row["positions"] for row in steps),
            {"val_kl": final_kl} if final_kl is not None else None,
            type(student).__name__,
        )
        save_checkpoint(student.eval(), tokenizer, out_dir, student_state, card, STUDENT_FOLDER)
        log.info("student: %.2fM parameters, %d steps, saved to %s", count_parameters(student) / 1e6, len(steps), out_dir)
        if loss_log is not None:
            write_loss_log(steps, loss_log)
            if validation:
                write_loss_log(validation, validation_log_path(loss_log))
        if checkpoint_dir is not None:
            remove_training_state(checkpoint_dir)
    if convert is not None and processes.main:
        log.info("cross-tokenizer, train split (every epoch): %s", describe_report(convert.report()))
    processes.barrier()
    return StudentRun(steps, validation)


def validation_log_path(loss_log: Path) -> Path:
    """Where the validation log goes beside the step log: distilled.csv -> distilled-validation.csv."""
    return loss_log.with_name(f"{loss_log.stem}-validation{loss_log.suffix}")


def save_initial_student(cache_dir: Path, settings: StudentSettings, out_dir: Path, teacher: Path | None = None, overwrite: bool = False) -> None:
    """The untrained start of `student.init` (cut from the teacher, a random Llama or a pretrained folder), saved as a student folder.

    Scored beside the trained students, it shows what training did: a pruned start is the teacher
    minus layers, before any distillation or CE step.
    """
    claim_folder(out_dir, STUDENT_FOLDER, "--out", [cache_dir, teacher], overwrite)
    cache = Cache.open(cache_dir)
    if settings.cross_tokenizer is not None:
        raise PipelineError("the untrained start is saved for students with the cache's tokenizer; unset student.cross_tokenizer")
    tokenizer_path = student_tokenizer_path(cache, Path(settings.tokenizer) if settings.tokenizer else None, settings.init)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    check_compatibility(cache, tokenizer, tokenizer_path, settings)
    student = initial_student(settings.init, settings.model, cache.vocab_size, settings.seed, prune=settings.prune, teacher=teacher)
    card = model_card(cache, settings.dump(), count_parameters(student), 0, 0, None, type(student).__name__)
    save_checkpoint(student.eval(), tokenizer, out_dir, card=card, kind=STUDENT_FOLDER)
    log.info("untrained start (student.init %s): %.2fM parameters, saved to %s", settings.init, count_parameters(student) / 1e6, out_dir)
