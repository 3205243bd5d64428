"""The `student` section of the params: what a language-model student starts from, learns and runs on."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from pipeline.lm.batch import Objective, Positions
from pipeline.lm.cross_tokenizer import CrossTokenizerSettings
from pipeline.lm.losses import LossSpec
from pipeline.lm.parallel import DEVICE_PATTERN, Parallel, Precision
from pipeline.lm.prune import PruneSettings
from pipeline.lm.student import student_config
from pipeline.settings import Positive


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

    def training_objective(self) -> Objective:
        """The training loss as a batch computes it (validation's is pipeline.lm.validation.validation_objective)."""
        return Objective(self, self.positions, self.chunk_positions)

    def dump(self) -> dict[str, Any]:
        """The settings as JSON values; the cross-tokenizer keys only when set, so a same-tokenizer run records what it always did."""
        unset = {name for name in CROSS_TOKENIZER_KEYS if getattr(self, name) is None}
        return self.model_dump(mode="json", exclude=unset)


CROSS_TOKENIZER_KEYS = ("tokenizer", "cross_tokenizer")


# Settings a resumed run may change: they decide when things happen or where, not what is computed.
RESUMABLE_CHANGES = {"eval_every", "eval_positions", "save_every", "device"}
