"""Intensity transforms: CT window presets, HU clipping to [0, 1], z-score, min-max.

Thin configurations of MONAI's own transforms (ScaleIntensityRange, NormalizeIntensity,
ScaleIntensity) so they compose with any MONAI pipeline and keep MetaTensor metadata.
"""

from __future__ import annotations

from typing import Any

from monai.transforms import (
    NormalizeIntensity,
    NormalizeIntensityd,
    ScaleIntensity,
    ScaleIntensityd,
    ScaleIntensityRange,
    ScaleIntensityRanged,
)

#: CT window presets as (WindowCenter, WindowWidth) in HU.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
#: HU range of MONAI's lung nodule detection bundle: [-1024, 300] -> [0, 1].
NODULE_HU_RANGE = (-1024.0, 300.0)


def window_range(window: str | tuple[float, float]) -> tuple[float, float]:
    """(lowest, highest) HU of a preset name or a (center, width) pair."""
    if isinstance(window, str):
        if window not in CT_WINDOWS:
            raise ValueError(f"unknown CT window {window!r}; presets are {sorted(CT_WINDOWS)}")
        center, width = CT_WINDOWS[window]
    else:
        center, width = (float(v) for v in window)
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    return center - width / 2.0, center + width / 2.0


class CTWindow(ScaleIntensityRange):
    """Map a CT window (preset or (center, width)) to [0, 1], clipping outside it."""

    def __init__(self, window: str | tuple[float, float] = "lung") -> None:
        low, high = window_range(window)
        super().__init__(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)


class CTWindowd(ScaleIntensityRanged):
    """Dict version of `CTWindow`."""

    def __init__(
        self,
        keys: Any,
        window: str | tuple[float, float] = "lung",
        allow_missing_keys: bool = False,
    ) -> None:
        low, high = window_range(window)
        super().__init__(
            keys,
            a_min=low,
            a_max=high,
            b_min=0.0,
            b_max=1.0,
            clip=True,
            allow_missing_keys=allow_missing_keys,
        )


class HUClip(ScaleIntensityRange):
    """Clip HU to [a_min, a_max] and scale to [0, 1] (default the nodule-detection range)."""

    def __init__(
        self, a_min: float = NODULE_HU_RANGE[0], a_max: float = NODULE_HU_RANGE[1]
    ) -> None:
        if a_max <= a_min:
            raise ValueError(f"a_max ({a_max}) must be above a_min ({a_min})")
        super().__init__(a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True)


class HUClipd(ScaleIntensityRanged):
    """Dict version of `HUClip`."""

    def __init__(
        self,
        keys: Any,
        a_min: float = NODULE_HU_RANGE[0],
        a_max: float = NODULE_HU_RANGE[1],
        allow_missing_keys: bool = False,
    ) -> None:
        if a_max <= a_min:
            raise ValueError(f"a_max ({a_max}) must be above a_min ({a_min})")
        super().__init__(
            keys,
            a_min=a_min,
            a_max=a_max,
            b_min=0.0,
            b_max=1.0,
            clip=True,
            allow_missing_keys=allow_missing_keys,
        )


def ZScore(nonzero: bool = True) -> NormalizeIntensity:
    """Per-channel z-score (mean 0, std 1); `nonzero` ignores background zeros (MRI)."""
    return NormalizeIntensity(nonzero=nonzero, channel_wise=True)


def ZScored(keys: Any, nonzero: bool = True) -> NormalizeIntensityd:
    """Dict version of `ZScore`."""
    return NormalizeIntensityd(keys, nonzero=nonzero, channel_wise=True)


def MinMax(minv: float = 0.0, maxv: float = 1.0) -> ScaleIntensity:
    """Per-channel min-max scaling to [minv, maxv]."""
    return ScaleIntensity(minv=minv, maxv=maxv, channel_wise=True)


def MinMaxd(keys: Any, minv: float = 0.0, maxv: float = 1.0) -> ScaleIntensityd:
    """Dict version of `MinMax`."""
    return ScaleIntensityd(keys, minv=minv, maxv=maxv, channel_wise=True)
