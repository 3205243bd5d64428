"""Student models over the teacher's vocabulary: a small Llama built from a config, a pretrained causal LM from a folder,
or one pruned from the teacher itself (`student.init: prune`, see pipeline.lm.prune)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pipeline.errors import PipelineError
from pipeline.lm.prune import PruneSettings, pruned_student
from pipeline.models import load_causal_lm

SCRATCH = "scratch"
PRUNE = "prune"

DEFAULT_STUDENT = {
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "intermediate_size": 512,
    "max_position_embeddings": 1024,
}


def build_student(config: dict[str, Any], vocab_size: int, seed: int) -> LlamaForCausalLM:
    """A randomly initialised student; embeddings tied to the output layer to keep it small."""
    torch.manual_seed(seed)
    settings = {**DEFAULT_STUDENT, **config}
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, tie_word_embeddings=True, **settings))


def pretrained_student(folder: Path, vocab_size: int) -> torch.nn.Module:
    """A student that starts from the weights of an HF causal-LM folder, in float32 for training.

    Its embedding table must have a row for every id the cache holds (0 .. vocab_size - 1).
    """
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise PipelineError(f"student.init: {folder} is neither 'scratch' nor a model folder with a config.json")
    model = load_causal_lm(folder).train()
    rows = model.get_input_embeddings().num_embeddings
    if rows < vocab_size:
        raise PipelineError(f"student.init: the model at {folder} has {rows} embedding rows, but the cache holds token ids up to {vocab_size - 1}")
    return model


def initial_student(init: str, config: dict[str, Any], vocab_size: int, seed: int, *, prune: PruneSettings | None = None, teacher: Path | None = None) -> torch.nn.Module:
    """`student.init`: 'scratch' (a random Llama from `config`), 'prune' (cut from the `teacher` folder as `prune` says)
    or the path of a pretrained model folder."""
    if init == SCRATCH:
        return build_student(config, vocab_size, seed)
    if init == PRUNE:
        if teacher is None:
            raise PipelineError("student.init prune needs the teacher model folder")
        if prune is None:
            raise PipelineError("student.init prune needs student.prune settings")
        torch.manual_seed(seed)  # dropout and the shuffle stay seeded as in a scratch run
        return pruned_student(Path(teacher), prune, vocab_size)
    torch.manual_seed(seed)  # dropout and the shuffle stay seeded as in a scratch run
    return pretrained_student(Path(init), vocab_size)


def position_hidden(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """The output layer's inputs [N, H] at the (rows, columns) pairs only.

    The output layer over a 50k vocabulary dominates the cost; padding and unscored positions never reach it.
    """
    return model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[rows, columns]


def position_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Logits [N, V] only at the (rows, columns) pairs."""
    return model.lm_head(position_hidden(model, input_ids, attention_mask, rows, columns))
