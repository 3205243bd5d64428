"""Crash-safe student training: the whole training state in one file, written atomically.

The state holds the model, the optimizer, the step log, the RNG states and the position in the
stream (epoch and optimizer steps done in it; the stream of each epoch is a function of the seed, so
the shard order and rows follow). Model and optimizer go through torch.distributed.checkpoint's
full state dicts, which read the same from one process, DDP or FSDP2. A rerun loads it and goes on;
it refuses a state written with other settings, naming the first that differs.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict, set_state_dict

from pipeline.atomic import atomic_path, remove_temp_files
from pipeline.errors import PipelineError
from pipeline.lm.parallel import Processes
from pipeline.outputs import FolderKind, holds_only

log = logging.getLogger(__name__)

STATE_FILE = "training-state.pt"
FORMAT_VERSION = 1  # rng: one entry per process, by rank
TRAINING_STATE_FOLDER = FolderKind("training state", lambda folder: holds_only(folder, [STATE_FILE]), overridable=False)  # scratch space: never the user's files


class OtherRunError(PipelineError):
    """The saved state belongs to a run with other settings or another cache."""


def rng_states() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Model and optimizer state as plain CPU tensors, gathered whole whatever wraps the model (a collective)."""
    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_model_state(model: torch.nn.Module) -> dict[str, Any]:
    """The model's weights alone, gathered whole as plain CPU tensors (a collective)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def all_rng_states(processes: Processes) -> list[dict[str, Any]]:
    """Every process's RNG states, by rank (a collective)."""
    if processes.world == 1:
        return [rng_states()]
    states: list[Any] = [None] * processes.world
    dist.all_gather_object(states, rng_states())
    return states


def save_training_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, run: dict[str, Any], processes: Processes) -> None:
    """Write the state (all processes call this; the first one writes) and wait until it is on disk.

    What writers killed mid-save left (a full-size temporary file) is removed first.
    """
    model_state, optimizer_state = full_state(model, optimizer)
    rng = all_rng_states(processes)
    if processes.main:
        remove_temp_files(folder, [STATE_FILE])
        state = {"format_version": FORMAT_VERSION, "model": model_state, "optimizer": optimizer_state, "rng": rng, **run}
        with atomic_path(folder / STATE_FILE) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)  # through a Python file, so a full disk is an OSError in the chain, not only "unexpected pos"
    processes.barrier()


def remove_training_state(folder: Path) -> None:
    """Delete the state file (and what killed writers of it left), then the folder if nothing else is in it."""
    remove_temp_files(folder, [STATE_FILE])
    (folder / STATE_FILE).unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def load_training_state(folder: Path | None) -> dict[str, Any] | None:
    """The saved state in `folder`, or None when there is none."""
    if folder is None or not (folder / STATE_FILE).exists():
        return None
    try:
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
    except Exception as error:  # a state file written by atomic_path is whole; anything else is foreign
        raise PipelineError(f"{folder / STATE_FILE} cannot be read ({type(error).__name__}); delete {folder} to start over") from error
    if state.get("format_version") != FORMAT_VERSION:
        raise PipelineError(f"{folder / STATE_FILE} has format version {state.get('format_version')}, this version reads {FORMAT_VERSION}; delete {folder} to start over")
    return state


def check_same_run(state: dict[str, Any], identity: dict[str, Any], folder: Path) -> None:
    """Refuse a saved state whose run identity (settings, cache, process count) differs from this run's."""
    saved = state["identity"]
    for key in sorted(set(saved) | set(identity)):
        if saved.get(key) != identity.get(key):
            raise OtherRunError(
                f"{folder} holds a run with another {key} ({saved.get(key)!r} there, {identity.get(key)!r} now): rerun with the same settings to resume it, or delete {folder} to start over"
            )


def restore_training_state(state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer, processes: Processes) -> None:
    """Load the saved model, optimizer and this process's RNG states into this run (every process)."""
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"], options=StateDictOptions(full_state_dict=True))
    set_rng_states(state["rng"][processes.rank])
