"""Which micro-batches make each optimizer step of each process, planned from the manifest alone."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator

from pipeline.cache.reader import Cache
from pipeline.errors import PipelineError
from pipeline.lm.batch import StudentBatch
from pipeline.lm.cross_tokenizer import CrossTokenizer
from pipeline.lm.parallel import Processes
from pipeline.lm.streaming import count_batches, prefetched, stream_batches
from pipeline.lm.student_settings import StudentSettings

log = logging.getLogger(__name__)


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

    def steps(self, start: int) -> Iterator[tuple[int, list[StudentBatch]]]:
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
