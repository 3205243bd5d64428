"""Model folders on disk: written whole or not at all, read back as plain HF causal LMs."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM


def save_checkpoint(model: torch.nn.Module, tokenizer: Any, out_dir: Path) -> None:
    """save_pretrained into a temporary folder, then rename: a crash never leaves half a checkpoint."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


def load_causal_lm(path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
