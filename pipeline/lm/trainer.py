"""Training a language-model student, as a recipe: setup, then a step per optimizer step, validate, save.

`train_student` checks every output and the cache before any work, then runs a `StudentTrainer`
in each process (one, or several under torchrun).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from pipeline.cache.format import CAUSAL_LM_TASK
from pipeline.cache.reader import Cache
from pipeline.errors import PipelineError
from pipeline.lm.batch import DistillationStep, StudentBatch, scored_counts
from pipeline.lm.compatibility import check_compatibility, check_positions, student_tokenizer_path
from pipeline.lm.cross_tokenizer import CrossTokenizer, CrossTokenizerSettings, cross_tokenizer, describe_report
from pipeline.lm.model_card import model_card
from pipeline.lm.parallel import Processes, autocast, training_processes
from pipeline.lm.resume import TRAINING_STATE_FOLDER, OtherRunError, check_same_run, full_model_state, load_training_state, remove_training_state, restore_training_state, save_training_state
from pipeline.lm.step_plan import StepPlan
from pipeline.lm.streaming import stream_batches
from pipeline.lm.student import PRUNE, SCRATCH, initial_student
from pipeline.lm.student_settings import RESUMABLE_CHANGES, StudentSettings
from pipeline.lm.validation import describe_validation, validation_kl
from pipeline.models import STUDENT_FOLDER, count_parameters, save_checkpoint
from pipeline.outputs import claim_file, claim_folder
from pipeline.train_loop import LOSS_LOG_FILE, train_loop, write_loss_log

log = logging.getLogger(__name__)


@dataclass
class StudentRun:
    """What training returns: one row per optimizer step, and one per validation."""

    steps: list[dict[str, float]]
    validation: list[dict[str, float]]


@dataclass(frozen=True)
class StudentJob:
    """What one training run reads and writes, besides its settings."""

    cache: Cache
    out_dir: Path
    tokenizer: Any  # the student's tokenizer (the cache's, or its own across tokenizers)
    loss_log: Path | None = None  # the step log as CSV, and the validation log beside it
    checkpoint_dir: Path | None = None  # a resumable training state every `save_every` steps
    teacher: Path | None = None  # the teacher's folder (init prune)
    restart_other_runs: bool = False  # a training state of other settings is started over instead of refused
    convert: CrossTokenizer | None = None  # a student with another tokenizer: cache batches onto its tokens


class StudentTrainer:
    """One process's share of a student's training.

    `setup` builds the student (wrapped for DDP/FSDP), the optimizer and the step plan, and resumes a
    saved training state; `step` runs one optimizer step's forward and backward; `validate` scores the
    validation KL; `save` writes the student folder and the logs. `run` does them in that order.
    """

    def __init__(self, job: StudentJob, settings: StudentSettings, processes: Processes) -> None:
        self.job, self.settings, self.processes = job, settings, processes
        self.objective = settings.training_objective()
        self.has_validation = job.cache.has_split("validation")
        self.steps: list[dict[str, float]] = []
        self.validation: list[dict[str, float]] = []

    def setup(self) -> None:
        job, settings, processes = self.job, self.settings, self.processes
        vocab_size = job.cache.vocab_size if job.convert is None else len(job.tokenizer)
        self.student = initial_student(settings.init, settings.model, vocab_size, settings.seed, prune=settings.prune, teacher=job.teacher)
        if job.convert is None:
            check_positions(self.student, job.cache, settings.init)
        self.student = self.student.to(processes.device)
        self.model = processes.wrap(DistillationStep(self.student, self.objective), settings.parallel, self.student.model.layers)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        self.plan, self.identity = StepPlan(job.cache, settings, processes, job.convert), run_identity(job.cache, settings, processes)
        if self.has_validation and processes.main:
            log.info("student: %s", describe_validation(job.cache, settings))
        self.plan.report_unused()
        self._resume()

    def _resume(self) -> None:
        """Continue from the training state in `checkpoint_dir`, if it is one of this run."""
        checkpoint_dir = self.job.checkpoint_dir
        state = load_training_state(checkpoint_dir)
        if state is None or checkpoint_dir is None:
            return
        try:
            check_same_run(state, self.identity, checkpoint_dir)
        except OtherRunError as error:
            if not self.job.restart_other_runs:
                raise
            log.warning("%s; starting over", str(error).split(":")[0])
            return
        restore_training_state(state, self.model, self.optimizer, self.processes)
        self.steps, self.validation = state["steps"], state["validation"]
        log.info("resuming from step %d of %d (%s)", len(self.steps), self.plan.total, checkpoint_dir)

    def step(self, group: list[StudentBatch]) -> dict[str, float]:
        return accumulated_step(self.model, group, self.settings, self.processes)

    def validate(self) -> float | None:
        return validation_kl(self.model, self.job.cache, self.settings, self.processes, self.job.convert)

    def _after_step(self, rows: list[dict[str, float]]) -> None:
        """Validation every `eval_every` steps and a training state every `save_every` (not at the last step: the end does both)."""
        step, settings, total = len(rows), self.settings, self.plan.total
        if settings.eval_every and step % settings.eval_every == 0 and step < total and self.has_validation:
            self.validation.append({"step": step, "val_kl": self.validate()})
        if self.job.checkpoint_dir is not None and settings.save_every and step % settings.save_every == 0 and step < total:
            epoch, done = self.plan.position(step)
            progress = {"identity": self.identity, "steps": rows, "validation": self.validation, "position": {"epoch": epoch, "steps_done": done}}
            save_training_state(self.job.checkpoint_dir, self.model, self.optimizer, progress, self.processes)

    def train(self) -> None:
        settings, processes = self.settings, self.processes
        self.steps = train_loop(
            self.model,
            self.optimizer,
            self.plan.steps(len(self.steps)),
            self.step,
            total_steps=self.plan.total,
            peak_lr=settings.lr,
            warmup_steps=settings.warmup_steps,
            desc=f"student {settings.loss} a={settings.alpha}",
            count_tokens=lambda group: sum(batch.num_tokens for batch in group) * processes.world,
            log=self.steps,
            after_step=self._after_step,
            show_progress=processes.main,
        )

    def save(self, final_kl: float | None) -> None:
        """The student folder (weights, tokenizer, model card), the logs; then the training state is no longer needed."""
        job, settings = self.job, self.settings
        model_state = full_model_state(self.model)  # every process takes part (FSDP gathers the shards)
        if not self.processes.main:
            return
        student_state = {key.removeprefix("student."): value for key, value in model_state.items()}
        parameters = count_parameters(self.student)
        positions = sum(row["positions"] for row in self.steps)
        card = model_card(job.cache, settings.dump(), parameters, len(self.steps), positions, {"val_kl": final_kl} if final_kl is not None else None, type(self.student).__name__)
        save_checkpoint(self.student.eval(), job.tokenizer, job.out_dir, student_state, card, STUDENT_FOLDER)
        log.info("student: %.2fM parameters, %d steps, saved to %s", parameters / 1e6, len(self.steps), job.out_dir)
        if job.loss_log is not None:
            write_loss_log(self.steps, job.loss_log)
            if self.validation:
                write_loss_log(self.validation, validation_log_path(job.loss_log))
        if job.checkpoint_dir is not None:
            remove_training_state(job.checkpoint_dir)

    def run(self) -> StudentRun:
        self.setup()
        self.train()
        final_kl = self.validate()
        if final_kl is not None:
            self.validation.append({"step": len(self.steps), "val_kl": final_kl})
        self.save(final_kl)
        if self.job.convert is not None and self.processes.main:
            log.info("cross-tokenizer, train split (every epoch): %s", describe_report(self.job.convert.report()))
        self.processes.barrier()
        return StudentRun(self.steps, self.validation)


def accumulated_step(model: torch.nn.Module, group: list[StudentBatch], settings: StudentSettings, processes: Processes) -> dict[str, float]:
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
    return {f"student.{key}": value for key, value in dump.items()} | {"cache": cache.manifest.manifest_sha256, "processes": processes.world}


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
    if cache.has_split("validation"):
        cache.check_shards("validation")  # a damaged shard stops the run now, not at the first validation
    job = StudentJob(cache, out_dir, tokenizer, loss_log, checkpoint_dir, teacher, restart_other_runs, convert)
    with training_processes(settings.device) as processes:
        return StudentTrainer(job, settings, processes).run()


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
    if cache.has_split("validation"):
        totals = dict.fromkeys(convert.totals, 0.0)
        for batch in convert.batches(stream_batches(cache, "validation", settings.batch_size)):
            for name, value in batch.stats.items():
                totals[name] += value
        convert.totals = dict.fromkeys(convert.totals, 0.0)
        if not totals["aligned"]:
            raise PipelineError(f"no position of {cache.path}'s validation split aligns with the student tokenizer: nothing to distil (check that it is a tokenizer for the same kind of text)")
        log.info("cross-tokenizer, validation split: %s", describe_report(convert.report(totals)))
    return convert


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
