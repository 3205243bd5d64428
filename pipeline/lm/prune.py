"""A student cut from the teacher itself (Minitron-style pruning): some of its decoder layers, narrower MLPs.

A student that starts as a piece of the teacher starts close to it: its embeddings, attention and MLPs
already compute what the teacher's do, so distillation has far less to learn than from random weights
(Minitron: Muralidharan et al., 2024, "Compact Language Models via Pruning and Knowledge Distillation").
Depth is cut by keeping whole decoder layers; width by keeping the MLP channels of largest importance,
||gate_proj row|| * ||up_proj row|| * ||down_proj column||. Every kept weight is copied exactly.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field, model_validator

from pipeline.errors import PipelineError
from pipeline.models import count_parameters, load_causal_lm
from pipeline.settings import Positive, Settings

logger = logging.getLogger(__name__)

LayerIndex = Annotated[int, Field(ge=0)]
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


class PruneSettings(Settings):
    """`student.prune`: which teacher decoder layers the student keeps, and how wide its MLPs are."""

    layers: list[LayerIndex] | None = Field(None, min_length=1)  # teacher decoder-layer indices to keep, increasing; checked against the teacher when it is loaded
    every: Positive | None = None  # or keep layers 0, every, 2 * every, ...; exactly one of layers / every
    intermediate_size: Positive | None = None  # MLP channels kept per layer (those of largest importance); None: the teacher's width

    @model_validator(mode="after")
    def _one_layer_choice(self) -> PruneSettings:
        if (self.layers is None) == (self.every is None):
            given = "both" if self.layers is not None else "neither"
            raise ValueError(f"give exactly one of layers (the teacher layers to keep) or every (keep every n-th layer), got {given}")
        if self.layers is not None and any(b <= a for a, b in zip(self.layers, self.layers[1:])):
            raise ValueError(f"layers must be increasing teacher layer indices without duplicates, got {self.layers}")
        return self


def kept_layers(prune: PruneSettings, num_layers: int) -> list[int]:
    """The teacher decoder layers the student keeps, in order; an index past the teacher's depth is an error."""
    if prune.every is not None:
        return list(range(0, num_layers, prune.every))
    layers = list(prune.layers or [])
    for index in layers:
        if index >= num_layers:
            raise PipelineError(f"student.prune.layers: layer {index} is out of range, the teacher has {num_layers} decoder layers (0..{num_layers - 1})")
    return layers


def mlp_importance(mlp: torch.nn.Module) -> torch.Tensor:
    """One score per MLP channel [intermediate]: ||gate_proj row|| * ||up_proj row|| * ||down_proj column||."""
    return mlp.gate_proj.weight.norm(dim=1) * mlp.up_proj.weight.norm(dim=1) * mlp.down_proj.weight.norm(dim=0)


def kept_channels(mlp: torch.nn.Module, width: int) -> torch.Tensor:
    """The `width` channels of largest importance, in their original order."""
    return torch.topk(mlp_importance(mlp), width).indices.sort().values


def pruned_student(teacher_folder: Path, prune: PruneSettings, vocab_size: int) -> torch.nn.Module:
    """A student cut from the teacher at `teacher_folder`: its kept layers and widest MLP channels, in float32, in train mode.

    Its embedding table must have a row for every id the cache holds (0 .. vocab_size - 1).
    """
    teacher_folder = Path(teacher_folder)
    if not (teacher_folder / "config.json").exists():
        raise PipelineError(f"student.init prune: {teacher_folder} is not a model folder with a config.json")
    teacher = load_causal_lm(teacher_folder)
    config = teacher.config
    layers = _decoder_layers(teacher)
    rows = teacher.get_input_embeddings().num_embeddings
    if rows < vocab_size:
        raise PipelineError(f"student.init prune: the teacher at {teacher_folder} has {rows} embedding rows, but the cache holds token ids up to {vocab_size - 1}")
    keep = kept_layers(prune, len(layers))
    width = config.intermediate_size
    if prune.intermediate_size is not None and prune.intermediate_size > width:
        raise PipelineError(f"student.prune.intermediate_size: {prune.intermediate_size} is wider than the teacher's MLPs ({width} channels)")
    narrow = prune.intermediate_size is not None and prune.intermediate_size < width
    student_width = prune.intermediate_size if narrow else width

    student_config = copy.deepcopy(config)
    student_config.num_hidden_layers = len(keep)
    student_config.intermediate_size = student_width
    if isinstance(getattr(config, "layer_types", None), list):
        student_config.layer_types = [config.layer_types[index] for index in keep]
    student = type(teacher)(student_config).to(torch.float32)
    student.generation_config = copy.deepcopy(teacher.generation_config)

    channels = {index: kept_channels(layers[index].mlp, student_width) for index in keep} if narrow else {}
    source = teacher.state_dict()
    with torch.no_grad():
        for name, tensor in student.state_dict().items():
            value = _teacher_tensor(name, source, keep, channels)
            if value.shape != tensor.shape:
                raise PipelineError(f"student.init prune: cannot copy {name}: the teacher's is {tuple(value.shape)}, the student's {tuple(tensor.shape)}")
            tensor.copy_(value)
    logger.info(
        "prune: kept teacher layers %s of %d, MLP width %d of %d: %d parameters (teacher %d)",
        keep,
        len(layers),
        student_width,
        width,
        count_parameters(student),
        count_parameters(teacher),
    )
    return student.train()


def _decoder_layers(teacher: torch.nn.Module) -> torch.nn.ModuleList:
    """The teacher's decoder layers, if it is a Llama-style model (model.model.layers with gate/up/down MLPs)."""
    layers = getattr(getattr(teacher, "model", None), "layers", None)
    usable = (
        isinstance(layers, torch.nn.ModuleList)
        and len(layers) > 0
        and hasattr(teacher.config, "intermediate_size")
        and all(isinstance(getattr(getattr(layer, "mlp", None), name, None), torch.nn.Linear) for layer in layers for name in MLP_PROJECTIONS)
    )
    if not usable:
        kind = getattr(teacher.config, "model_type", type(teacher).__name__)
        raise PipelineError(f"student.init prune: the teacher is a '{kind}' model; pruning needs a Llama-style decoder (model.layers with mlp.gate_proj/up_proj/down_proj)")
    return layers


def _teacher_tensor(name: str, source: dict[str, torch.Tensor], keep: list[int], channels: dict[int, torch.Tensor]) -> torch.Tensor:
    """The teacher tensor a student parameter or buffer is copied from: its kept layer's, MLP channels sliced."""
    prefix = "model.layers."
    if not name.startswith(prefix):
        return source[name]
    position, rest = name[len(prefix) :].split(".", 1)
    index = keep[int(position)]
    value = source[f"{prefix}{index}.{rest}"]
    if index not in channels:
        return value
    kept = channels[index]
    if rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.gate_proj.bias", "mlp.up_proj.bias"):
        return value[kept]
    if rest == "mlp.down_proj.weight":
        return value[:, kept]
    return value
