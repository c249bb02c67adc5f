"""Training checkpoints: everything needed to resume a run as if it had never stopped."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ai_engine.errors import InputError

CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` atomically (temporary file then rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"checkpoint_version": CHECKPOINT_VERSION, **state}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (it holds RNG states, so not weights-only)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no checkpoint at {path}: nothing to resume (train without --resume)")
    state = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or state.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise InputError(
            f"{path} is not an ai_engine training checkpoint (version {CHECKPOINT_VERSION})"
        )
    return state
