"""Student models: small Llama-architecture causal LMs built from a config, sharing the teacher's vocabulary."""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

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


def position_hidden(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """The output layer's inputs [N, H] at the (rows, columns) pairs only.

    The output layer over a 50k vocabulary dominates the cost; padding and unscored positions never reach it.
    """
    return model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[rows, columns]


def position_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Logits [N, V] only at the (rows, columns) pairs."""
    return model.lm_head(position_hidden(model, input_ids, attention_mask, rows, columns))
