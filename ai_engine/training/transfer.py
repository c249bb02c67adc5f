"""Transfer learning: load the matching part of a local weights file into a network."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.networks.utils import copy_model_state

from ai_engine.errors import InputError


@dataclass
class TransferReport:
    """What a partial load did, name by name.

    Attributes:
        matched: parameters/buffers copied from the file.
        missing: in the network but not in the file (left as initialised).
        unexpected: in the file but not in the network (ignored).
        shape_mismatch: same name, different shape: (name, shape in file, shape in network).
    """

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, list[int], list[int]]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (recorded in the training log and model folder)."""
        return {
            "matched": self.matched,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "shape_mismatch": [list(x) for x in self.shape_mismatch],
        }

    def summary(self) -> str:
        """One line for the console."""
        return (
            f"transfer: {len(self.matched)} matched, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.shape_mismatch)} shape mismatches"
        )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a weights file: a bare state dict, a training checkpoint
    (`{"model": ...}`), a `{"state_dict": ...}` file, or a model folder holding `weights.pt`."""
    path = Path(path)
    if path.is_dir():
        path = path / "weights.pt"
    if not path.is_file():
        raise InputError(f"weights file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many kinds for a file that is not a torch save
        raise InputError(f"cannot read weights from {path}: {exc}") from exc
    for key in ("model", "state_dict"):
        if isinstance(data, Mapping) and key in data and isinstance(data[key], Mapping):
            data = data[key]
    if isinstance(data, torch.nn.Module):
        data = data.state_dict()
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise InputError(f"{path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in data.items()}


def load_partial_weights(model: torch.nn.Module, path: str | Path) -> TransferReport:
    """Copy into `model` every tensor of the file whose name and shape match; report the rest.

    Uses MONAI's `copy_model_state` for the copy (it skips shape mismatches itself).
    """
    src = read_state_dict(path)
    dst = model.state_dict()
    report = TransferReport()
    for name, tensor in src.items():
        if name not in dst:
            report.unexpected.append(name)
        elif tuple(dst[name].shape) != tuple(tensor.shape):
            report.shape_mismatch.append((name, list(tensor.shape), list(dst[name].shape)))
        else:
            report.matched.append(name)
    report.missing = [n for n in dst if n not in src]
    copy_model_state(model, {k: src[k] for k in report.matched}, inplace=True)
    return report
