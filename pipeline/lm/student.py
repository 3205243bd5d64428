"""Student models over the teacher's vocabulary: a small Llama built from a config, a pretrained causal LM from a folder,
or one pruned from the teacher itself (`student.init: prune`, see pipeline.lm.prune)."""

from __future__ import annotations

import difflib
import inspect
import re
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.activations import ACT2FN

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


LEGACY_LLAMA_FIELDS = {"rope_theta", "rope_scaling", "attn_implementation"}  # LlamaConfig takes these as keyword arguments beyond its signature
LLAMA_FIELDS = frozenset(inspect.signature(LlamaConfig.__init__).parameters) - {"self", "kwargs", "vocab_size"} | LEGACY_LLAMA_FIELDS
SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "head_dim")


def student_config(fields: dict[str, Any], vocab_size: int = 256) -> LlamaConfig:
    """The LlamaConfig of a scratch student: DEFAULT_STUDENT with `fields` (student.model) over it, tied embeddings by default.

    Every field must be a LlamaConfig field with a value it accepts, and the shapes must fit together;
    a problem raises ValueError naming it (the settings turn it into one line naming `student.model`).
    The vocabulary comes from the cache.
    """
    if "vocab_size" in fields:
        raise ValueError("vocab_size comes from the cache (its tokenizer's output vocabulary): remove it")
    unknown = sorted(set(fields) - LLAMA_FIELDS)
    if unknown:
        hints = [f"{name} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(name, LLAMA_FIELDS, n=1)) else name for name in unknown]
        raise ValueError(f"not LlamaConfig field(s): {', '.join(hints)}")
    settings = {"tie_word_embeddings": True, **DEFAULT_STUDENT, **fields}
    for name in SIZES:
        value = settings.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
    if settings.get("hidden_act", "silu") not in ACT2FN:
        raise ValueError(f"hidden_act '{settings['hidden_act']}' is not an activation transformers knows (e.g. silu, gelu, relu)")
    heads, kv_heads = settings["num_attention_heads"], settings.get("num_key_value_heads") or settings["num_attention_heads"]
    if heads % kv_heads:
        raise ValueError(f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})")
    try:
        return LlamaConfig(vocab_size=vocab_size, **settings)
    except (StrictDataclassError, TypeError, ValueError) as error:
        reason = str(error).strip().splitlines()[-1].strip().removeprefix("ValueError: ").removeprefix("TypeError: ").split(". Errors:")[0].rstrip(".")
        reason = re.sub(r"<class '(\w+)'>", r"\1", reason)
        raise ValueError(reason[:1].lower() + reason[1:]) from None


def build_student(config: dict[str, Any], vocab_size: int, seed: int) -> LlamaForCausalLM:
    """A randomly initialised student; embeddings tied to the output layer to keep it small."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(student_config(config, vocab_size))


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
