"""Grading inputs: a multimodal MRI study -> a fixed-size, z-scored 4-channel tensor.

Preprocessing (recorded in the model folder, so `predict` repeats it exactly):

1. `ai_engine.io.load_multimodal` stacks T1, T1c, T2, FLAIR on the first present
   sequence's grid; a missing sequence is zero-filled and listed in
   `meta["missing_channels"]`.
2. The study's field of view is resampled (linear) onto a `spatial_size` grid. The model
   grid's affine is kept, so heat maps go back to the source grid exactly
   (`ai_engine.explain.heatmap_to_source`).
3. Per-channel z-score over non-zero voxels (`ai_engine.transforms.ZScore`); missing
   channels stay zero, which is what channel dropout teaches the network to expect.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, RandomizableTransform

from ai_engine.errors import InputError
from ai_engine.io import Volume, load_multimodal, load_volume, resample_to_grid
from ai_engine.transforms import ZScore

__all__ = [
    "CHANNELS",
    "GRADES",
    "GradingStudy",
    "LoadGradingStudyd",
    "RandChannelDropoutd",
    "grade_to_label",
    "label_to_grade",
    "load_study",
    "model_grid_affine",
    "preprocess",
    "tumor_fraction_on_model_grid",
]

CHANNELS: tuple[str, ...] = ("T1", "T1c", "T2", "FLAIR")
GRADES: tuple[int, ...] = (1, 2, 3)


def grade_to_label(grade: Any) -> int:
    """Grade 1|2|3 -> class index 0|1|2.

    Raises:
        InputError: not one of the grades.
    """
    if isinstance(grade, bool) or grade not in GRADES:
        raise InputError(f"grade must be one of {list(GRADES)}, got {grade!r}")
    return GRADES.index(int(grade))


def label_to_grade(label: int) -> int:
    """Class index 0|1|2 -> grade 1|2|3."""
    return GRADES[int(label)]


def model_grid_affine(
    source_affine: np.ndarray, source_shape: Sequence[int], spatial_size: Sequence[int]
) -> np.ndarray:
    """Affine of a `spatial_size` grid covering the same field of view as the source grid.

    Voxel edges coincide at the borders (as in `torch.nn.functional.interpolate` with
    `align_corners=False`): model voxel m sits at source index `(m + 0.5) * s - 0.5` with
    `s = source_shape / spatial_size` along each axis.
    """
    scale = np.asarray(source_shape, dtype=np.float64) / np.asarray(spatial_size, dtype=np.float64)
    index_map = np.eye(4)
    index_map[:3, :3] = np.diag(scale)
    index_map[:3, 3] = 0.5 * scale - 0.5
    return np.asarray(source_affine, dtype=np.float64) @ index_map


@dataclass
class GradingStudy:
    """A study ready for the network.

    Attributes:
        image: (C, *spatial_size) float32, z-scored, missing channels zero.
        model_affine: voxel->LPS affine of the model grid.
        source: the study as loaded (source grid; heat maps go back onto it).
        missing_channels: names of the sequences that were not given.
    """

    image: np.ndarray
    model_affine: np.ndarray
    source: Volume
    missing_channels: list[str]


def preprocess(
    volume: Volume, spatial_size: Sequence[int], channels: Sequence[str] = CHANNELS
) -> GradingStudy:
    """Resample a (C, X, Y, Z) study onto the model grid and z-score each present channel."""
    if volume.array.ndim != 4 or volume.array.shape[0] != len(channels):
        raise InputError(
            f"expected a ({len(channels)}, X, Y, Z) study with channels {list(channels)}, "
            f"got shape {volume.array.shape}"
        )
    size = tuple(int(s) for s in spatial_size)
    affine = model_grid_affine(volume.affine, volume.spatial_shape, size)
    missing = [str(m) for m in volume.meta.get("missing_channels", [])]
    out = np.zeros((len(channels), *size), dtype=np.float32)
    for index, name in enumerate(channels):
        if name in missing:
            continue
        out[index] = resample_to_grid(
            Volume(volume.array[index], volume.affine), affine, size, order=1
        )
    present = [i for i, name in enumerate(channels) if name not in missing]
    if present:
        out[present] = np.asarray(ZScore(nonzero=True)(out[present]), dtype=np.float32)
    return GradingStudy(image=out, model_affine=affine, source=volume, missing_channels=missing)


def load_study(
    images: Mapping[str, str | Path | None] | str | Path,
    spatial_size: Sequence[int],
    channels: Sequence[str] = CHANNELS,
) -> GradingStudy:
    """Load and preprocess one study (`{"T1": path, ...}` or a study folder of series).

    Raises:
        InputError: a given sequence file is missing or unreadable, or no sequence is given.
    """
    if isinstance(images, Mapping):
        for name, path in images.items():
            if path and not Path(path).exists():
                raise InputError(f"sequence {name}: {path} does not exist")
    volume = load_multimodal(images, channels=tuple(channels))
    return preprocess(volume, spatial_size, channels)


def load_mask_on_source(mask_path: str | Path, source: Volume) -> np.ndarray:
    """A label mask (e.g. `tumor_mask.nii.gz`) as a boolean array on the study's source grid."""
    mask = load_volume(mask_path)
    if mask.array.ndim != 3:
        raise InputError(f"{mask_path}: a mask must be one scalar volume")
    array = resample_to_grid(mask, source.affine, source.spatial_shape, order=0)
    return array > 0


def tumor_fraction_on_model_grid(mask_path: str | Path, study: GradingStudy) -> np.ndarray:
    """The tumor mask (`> 0`) linearly resampled onto the model grid: (X, Y, Z) in [0, 1].

    Training target of the auxiliary segmentation heads (`ai_engine.training.seg_aux`).
    """
    mask = load_volume(mask_path)
    if mask.array.ndim != 3:
        raise InputError(f"{mask_path}: a mask must be one scalar volume")
    binary = Volume((mask.array > 0).astype(np.float32), mask.affine)
    size = study.image.shape[1:]
    return np.clip(resample_to_grid(binary, study.model_affine, size, order=1), 0.0, 1.0)


class LoadGradingStudyd(MapTransform):
    """Dict transform: `{"images": {...}, "grade": g}` -> `{"image": tensor, "label": int}`.

    With `with_tumor=True` it also gives `"tumor"` (1, *spatial_size), the tumor fraction on
    the model grid, and `"tumor_weight"` (1.0, or 0.0 with a zero map when the item has no
    `tumor_mask`). Deterministic, so `CacheDataset` keeps its output and the DICOM series
    are read once.
    """

    def __init__(
        self,
        spatial_size: Sequence[int],
        channels: Sequence[str] = CHANNELS,
        with_tumor: bool = False,
    ) -> None:
        super().__init__(keys=["images"])
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.channels = tuple(channels)
        self.with_tumor = with_tumor

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        study = load_study(data["images"], self.spatial_size, self.channels)
        out = {k: v for k, v in data.items() if k not in {"images", "tumor_mask"}}
        out["image"] = torch.from_numpy(study.image)
        if "grade" in data:
            out["label"] = torch.tensor(grade_to_label(data["grade"]), dtype=torch.long)
        if self.with_tumor:
            path = data.get("tumor_mask")
            if path:
                fraction = tumor_fraction_on_model_grid(path, study)
                out["tumor"] = torch.from_numpy(fraction[None].astype(np.float32))
                out["tumor_weight"] = torch.tensor(1.0)
            else:
                out["tumor"] = torch.zeros((1, *self.spatial_size), dtype=torch.float32)
                out["tumor_weight"] = torch.tensor(0.0)
        return out


class RandChannelDropoutd(RandomizableTransform, MapTransform):
    """With probability `prob`, zero one (up to `max_channels`) random non-zero channel(s).

    Teaches the classifier to cope with a missing sequence: at inference a missing one is
    zero after preprocessing, the same as a dropped one here. At least one channel is kept.

    Args:
        keys: image keys (channel-first).
        prob: probability of dropping channels in a sample.
        max_channels: most channels dropped at once.
    """

    def __init__(self, keys: Sequence[str] | str, prob: float = 0.2, max_channels: int = 1) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        if max_channels < 1:
            raise ValueError(f"max_channels must be >= 1, got {max_channels}")
        self.max_channels = int(max_channels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            image = d[key]
            flat = image.reshape(image.shape[0], -1)
            present = [c for c in range(image.shape[0]) if bool((flat[c] != 0).any())]
            if len(present) < 2:
                continue
            count = int(self.R.randint(1, min(self.max_channels, len(present) - 1) + 1))
            drop = self.R.choice(present, size=count, replace=False)
            image = image.clone() if torch.is_tensor(image) else np.array(image)
            image[list(int(c) for c in drop)] = 0
            d[key] = image
        return d
