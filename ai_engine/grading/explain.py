"""Explain a grading decision: heat map on the source grid (NIfTI) plus a key-slice PNG."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai_engine.explain import (
    explain,
    heatmap_to_source,
    key_slice,
    save_heatmap,
    save_key_slice_png,
)
from ai_engine.grading.data import GRADES, GradingStudy
from ai_engine.grading.model import GradingModel
from ai_engine.io import Volume

__all__ = ["GradingExplanation", "explain_study", "write_explanation"]

HEATMAP_FILE = "heatmap.nii.gz"
KEY_SLICE_FILE = "key_slice.png"
EXPLANATION_FILE = "explanation.json"


class _RunnerModule(torch.nn.Module):
    """Lets occlusion run on TorchScript/ONNX folders (forward only, no gradients needed)."""

    def __init__(self, model: GradingModel) -> None:
        super().__init__()
        self._model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._model.folder.predict(x).float()


@dataclass
class GradingExplanation:
    """A heat map for one study.

    Attributes:
        heat_source: the map on the source series' grid (shape and affine of the study).
        heat_model: the map on the model grid.
        grade: the explained grade.
        method: "gradcam", "gradcampp" or "occlusion".
    """

    heat_source: Volume
    heat_model: np.ndarray
    grade: int
    method: str


def explain_study(
    model: GradingModel, study: GradingStudy, method: str = "gradcam", grade: int | None = None
) -> GradingExplanation:
    """Heat map of `study` for `grade` (the predicted grade when None).

    Raises:
        ModelFolderError: Grad-CAM asked of a TorchScript/ONNX-only folder.
    """
    class_idx = None if grade is None else GRADES.index(int(grade))
    if method == "occlusion":
        try:
            module: torch.nn.Module = model.module
        except Exception:
            module = _RunnerModule(model)
    else:
        module = model.module
    layer = model.cam_layer
    heat, class_idx = explain(
        module, study.image, method=method, class_idx=class_idx, target_layer=layer
    )  # type: ignore[arg-type]
    heat_source = heatmap_to_source(heat, study.model_affine, study.source)
    return GradingExplanation(heat_source, heat, GRADES[class_idx], method)


def _display_image(study: GradingStudy) -> np.ndarray:
    """The source sequence shown under the heat map: T1c when present, else the first present."""
    names = list(study.source.meta.get("channel_names") or [])
    order = ["T1c", "FLAIR", "T1", "T2"]
    for name in order:
        if name in names and name not in study.missing_channels:
            return study.source.array[names.index(name)]
    return study.source.array[0]


def write_explanation(
    explanation: GradingExplanation,
    study: GradingStudy,
    out_dir: str | Path,
    prediction: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Write `heatmap.nii.gz` (source geometry), `key_slice.png` and `explanation.json`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    nii = save_heatmap(explanation.heat_source, out_dir / HEATMAP_FILE)
    heat = explanation.heat_source.array
    index = key_slice(heat, axis=2)
    title = f"grade {explanation.grade} ({explanation.method}), slice {index}"
    png = save_key_slice_png(
        _display_image(study), heat, out_dir / KEY_SLICE_FILE, axis=2, title=title
    )
    peak_voxel = [int(v) for v in np.unravel_index(int(np.argmax(heat)), heat.shape)]
    record = {
        "grade": explanation.grade,
        "method": explanation.method,
        "heatmap": nii.name,
        "key_slice_png": png.name,
        "key_slice_index": index,
        "peak_voxel": peak_voxel,
        "peak_lps_mm": [
            float(v) for v in explanation.heat_source.voxel_to_lps(np.array(peak_voxel))[0]
        ],
        "source_shape": list(explanation.heat_source.spatial_shape),
        "missing_sequences": list(study.missing_channels),
        "prediction": prediction,
    }
    (out_dir / EXPLANATION_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return {
        "heatmap": str(nii),
        "key_slice_png": str(png),
        "explanation": str(out_dir / EXPLANATION_FILE),
    }
