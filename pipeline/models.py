"""Model folders on disk: written whole or not at all, read back as plain HF causal LMs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from pipeline.atomic import atomic_dir
from pipeline.outputs import FolderKind, write_marker

MODEL_CARD_TAG = "tags: [knowledge-distillation, kd-pipeline]"  # in every student's model card


def _earlier_student(folder: Path) -> bool:
    """A student folder from before markers: a model with the model card kd-pipeline writes."""
    card = folder / "README.md"
    return (folder / "config.json").is_file() and card.is_file() and MODEL_CARD_TAG in card.read_text(errors="replace")


STUDENT_FOLDER = FolderKind("student folder", _earlier_student)


def save_checkpoint(model: torch.nn.Module, tokenizer: Any, out_dir: Path, state_dict: dict[str, torch.Tensor] | None = None, card: str | None = None, kind: FolderKind | None = None) -> None:
    """save_pretrained into a temporary folder, then rename: a crash never leaves half a checkpoint.

    `state_dict` replaces the model's own weights (a sharded model's gathered ones); `card` is written as
    README.md; `kind` marks the folder as that kind of output (pipeline.outputs), so a rerun may replace it.
    """
    with atomic_dir(Path(out_dir)) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        if card is not None:
            (tmp / "README.md").write_text(card)
        if kind is not None:
            write_marker(tmp, kind)


def load_causal_lm(path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
