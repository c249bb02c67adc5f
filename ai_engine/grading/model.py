"""A grading model folder, loaded and ready to grade studies (whatever made it).

Trained, exported (TorchScript/ONNX), quantized and distilled folders all carry the same
`preprocessing` and `postprocessing` (temperature), so one class runs them all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai_engine.calibration import apply_temperature
from ai_engine.errors import ModelFolderError
from ai_engine.grading.config import TASK, GradingConfig
from ai_engine.grading.data import CHANNELS, GRADES, GradingStudy, load_study
from ai_engine.modelfolder import ModelFolder, load_model_folder

__all__ = ["GradingModel", "load_grading_model"]


@dataclass
class GradingModel:
    """A loaded grading model folder.

    Attributes:
        folder: the underlying `ModelFolder`.
        spatial_size: model grid size.
        channels: sequence names in channel order.
        temperature: calibration temperature (1.0 when not calibrated).
    """

    folder: ModelFolder
    spatial_size: tuple[int, int, int]
    channels: tuple[str, ...]
    temperature: float

    @property
    def runner(self) -> Any:
        return self.folder.model

    @property
    def config(self) -> GradingConfig | None:
        data = (self.folder.manifest.get("extra") or {}).get("grading_config")
        return GradingConfig.from_dict(data) if data else None

    @property
    def cam_layer(self) -> str | None:
        """Grad-CAM layer recorded at training time (`extra.cam_target_layer`), else the
        config's choice (None: `ai_engine.explain.find_target_layer` decides)."""
        extra = self.folder.manifest.get("extra") or {}
        if extra.get("cam_target_layer"):
            return str(extra["cam_target_layer"])
        cfg = self.config
        return cfg.cam_layer if cfg is not None else None

    @property
    def module(self) -> torch.nn.Module:
        """The network as a differentiable torch module (for Grad-CAM).

        Raises:
            ModelFolderError: the folder holds TorchScript or ONNX only.
        """
        runner = self.runner
        if isinstance(runner, torch.nn.Module) and not isinstance(runner, torch.jit.ScriptModule):
            return runner
        raise ModelFolderError(
            f"{self.folder.path} is a {self.folder.made_by} model without a state dict; "
            "Grad-CAM needs the PyTorch weights: explain with its parent folder "
            f"({(self.folder.manifest.get('parent') or {}).get('path', 'unknown')}) or use --method occlusion"
        )

    def logits(self, images: np.ndarray | torch.Tensor, batch_size: int = 4) -> np.ndarray:
        """Raw network outputs for a (B, C, *spatial) batch, in chunks of `batch_size`."""
        x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images).float()
        outs = [
            self.folder.predict(x[i : i + batch_size]).numpy()
            for i in range(0, x.shape[0], batch_size)
        ]
        return np.concatenate(outs, axis=0).astype(np.float64)

    def probabilities(self, logits: np.ndarray, calibrated: bool = True) -> np.ndarray:
        """Class probabilities (temperature-scaled unless `calibrated` is False)."""
        return apply_temperature(logits, self.temperature if calibrated else 1.0)

    def load(self, images: Mapping[str, str | Path | None] | str | Path) -> GradingStudy:
        """Load and preprocess a study the way this model was trained."""
        return load_study(images, self.spatial_size, self.channels)

    def grade(self, study: GradingStudy) -> dict[str, Any]:
        """Predicted grade, calibrated probabilities and missing-sequence flags of one study."""
        logits = self.logits(study.image[None])
        probs = self.probabilities(logits)[0]
        label = int(np.argmax(probs))
        return {
            "grade": GRADES[label],
            "probabilities": {str(g): float(p) for g, p in zip(GRADES, probs, strict=True)},
            "uncalibrated_probabilities": {
                str(g): float(p)
                for g, p in zip(GRADES, self.probabilities(logits, False)[0], strict=True)
            },
            "temperature": self.temperature,
            "missing_sequences": list(study.missing_channels),
            "complete": not study.missing_channels,
            "model": {"path": str(self.folder.path), "made_by": self.folder.made_by},
        }


def load_grading_model(path: str | Path, device: str = "cpu") -> GradingModel:
    """Load a tumor-grading model folder (trained, exported, quantized or distilled).

    Raises:
        ModelFolderError: missing/incomplete folder, or a folder of another task.
    """
    folder = load_model_folder(path, device=device)
    if folder.task != TASK:
        raise ModelFolderError(
            f"{path} is a {folder.task or 'unknown'!r} model, not a {TASK!r} model"
        )
    pre = folder.preprocessing
    try:
        spatial_size = tuple(int(s) for s in pre["spatial_size"])
        channels: Sequence[str] = tuple(pre.get("channels", CHANNELS))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFolderError(
            f"{path}: model.json preprocessing lacks spatial_size/channels"
        ) from exc
    temperature = float(folder.postprocessing.get("temperature", 1.0))
    return GradingModel(folder, spatial_size, tuple(channels), temperature)  # type: ignore[arg-type]
