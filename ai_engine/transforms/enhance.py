"""Blob enhancement: the multi-scale Hessian "dot" filter of nodule CAD, as an input channel.

A small nodule and a vessel cut across look alike in a slice: a bright disc of soft-tissue
density a few millimetres wide. In 3D they differ in shape: a nodule is bright in every
direction (the three Hessian eigenvalues of the smoothed image strongly negative), a vessel
only across its axis (one eigenvalue near zero). Li, Sone and Doi's selective enhancement
filter (Med. Phys. 2003) turns that into a voxel response: with eigenvalues
l1 <= l2 <= l3 < 0 it is l3^2 / |l1|, zero otherwise; scale-normalised (sigma^2 H) and taken
as the maximum over a few Gaussian scales it peaks at nodule centres of matching sizes.

Given as a second channel, it hands a small network the shape cue it would otherwise have to
learn from a few dozen nodules. Eigenvalues are computed in closed form (Smith's
trigonometric solution for symmetric 3x3 matrices) over whole volumes in torch, so a
239 x 239 x 250 scan takes seconds on a CPU.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform
from scipy import ndimage

# The response of a bright sphere of contrast 1 at its matched scale is about 0.1-0.2; this
# gain puts nodules of the lung window's contrast (~0.6) near 1, like the image channel.
BLOB_GAIN = 8.0


def symmetric_eigenvalues(
    a11: torch.Tensor,
    a22: torch.Tensor,
    a33: torch.Tensor,
    a12: torch.Tensor,
    a13: torch.Tensor,
    a23: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eigenvalues (smallest, middle, largest) of symmetric 3x3 matrices given elementwise."""
    q = (a11 + a22 + a33) / 3.0
    b11, b22, b33 = a11 - q, a22 - q, a33 - q
    p1 = a12 * a12 + a13 * a13 + a23 * a23
    p = torch.sqrt((b11 * b11 + b22 * b22 + b33 * b33 + 2.0 * p1) / 6.0)
    safe = torch.where(p > 1e-12, p, torch.ones_like(p))
    # det(B) / 2 with B = (A - qI) / p
    det = (
        b11 * (b22 * b33 - a23 * a23)
        - a12 * (a12 * b33 - a23 * a13)
        + a13 * (a12 * a23 - b22 * a13)
    )
    r = torch.clamp(det / (2.0 * safe**3), -1.0, 1.0)
    phi = torch.acos(r) / 3.0
    largest = q + 2.0 * p * torch.cos(phi)
    smallest = q + 2.0 * p * torch.cos(phi + 2.0 * math.pi / 3.0)
    middle = 3.0 * q - largest - smallest
    return smallest, middle, largest


def blob_response(
    image: np.ndarray, sigmas_voxel: Sequence[Sequence[float]], slab: int = 16
) -> np.ndarray:
    """Multi-scale dot-filter response (X, Y, Z), float32, >= 0, of a bright-on-dark image.

    The Gaussian smoothing runs on the whole volume; the Hessian and its eigenvalues run on
    slabs of `slab` slices along the last axis, each read with 2 slices of margin (the reach
    of two central differences), so the result is exactly that of one pass over the volume
    while the temporaries stay a few MB instead of a dozen volume-sized arrays (4-5 times
    faster on a 359 x 359 x 375 scan).

    Args:
        image: (X, Y, Z) array (e.g. the windowed CT in [0, 1]).
        sigmas_voxel: per scale, the Gaussian sigma along each axis in voxels.
        slab: slices per Hessian pass (>= 1).
    """
    if slab < 1:
        raise ValueError(f"slab must be >= 1 slice, got {slab}")
    array = np.asarray(image, dtype=np.float32)
    out = np.zeros(array.shape, dtype=np.float32)
    nz = array.shape[2]
    for sigma in sigmas_voxel:
        smooth = ndimage.gaussian_filter(array, sigma, mode="nearest")
        # sigma_i sigma_j H_ij: the scale-normalised Hessian, in mm as in voxels (anisotropic
        # grids included, since sigma_i is the same mm scale in voxels of axis i)
        s = [float(v) for v in sigma]
        for z0 in range(0, nz, slab):
            z1 = min(z0 + slab, nz)
            lo, hi = max(z0 - 2, 0), min(z1 + 2, nz)
            g0, g1, g2 = torch.gradient(torch.from_numpy(smooth[:, :, lo:hi]))
            h00, h01, h02 = torch.gradient(g0)  # voxel units; the six distinct entries only
            h11, h12 = torch.gradient(g1, dim=(1, 2))
            (h22,) = torch.gradient(g2, dim=2)
            small, _, large = symmetric_eigenvalues(
                h00 * (s[0] * s[0]),
                h11 * (s[1] * s[1]),
                h22 * (s[2] * s[2]),
                h01 * (s[0] * s[1]),
                h02 * (s[0] * s[2]),
                h12 * (s[1] * s[2]),
            )
            response = torch.where(
                large < 0, large * large / torch.clamp(-small, min=1e-6), torch.zeros_like(large)
            )
            kept = response[:, :, z0 - lo : z0 - lo + (z1 - z0)].numpy()
            np.maximum(out[:, :, z0:z1], kept, out=out[:, :, z0:z1])
    return out


class BlobEnhanced(MapTransform):
    """Append the blob-enhancement channel to a (1, X, Y, Z) MetaTensor image.

    Args:
        keys: the image key(s).
        sigmas_mm: Gaussian scales (mm); each becomes voxels with the image's spacing.
        gain: multiplies the response (see `BLOB_GAIN`); clipped to [0, 2] afterwards.
    """

    def __init__(
        self,
        keys: Any,
        sigmas_mm: Sequence[float],
        gain: float = BLOB_GAIN,
        allow_missing_keys=False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not sigmas_mm or min(sigmas_mm) <= 0:
            raise ValueError(f"sigmas_mm must be positive scales, got {tuple(sigmas_mm)}")
        self.sigmas_mm = tuple(float(s) for s in sigmas_mm)
        self.gain = float(gain)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            image = out[key]
            affine = np.asarray(image.affine, dtype=np.float64)
            spacing = np.linalg.norm(affine[:3, :3], axis=0)
            sigmas = [tuple(s / spacing) for s in self.sigmas_mm]
            plain = image.as_subclass(torch.Tensor) if isinstance(image, MetaTensor) else image
            response = blob_response(plain[0].cpu().numpy(), sigmas)
            channel = torch.from_numpy(np.clip(response * self.gain, 0.0, 2.0))[None]
            stacked = torch.cat([plain, channel.to(plain.dtype)], dim=0)
            if isinstance(image, MetaTensor):
                meta = {k: v for k, v in image.meta.items() if k != "affine"}
                stacked = MetaTensor(stacked, affine=image.affine.clone(), meta=meta)
            out[key] = stacked
        return out
