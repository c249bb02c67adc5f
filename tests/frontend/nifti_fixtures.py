"""Writes the NIfTI files the viewer's unit tests parse, with the platform's own writer.

`python -m tests.frontend.nifti_fixtures <dir>` writes, through `ai_engine.io.save_nifti`
(the writer behind the heat-map and mask endpoints):

- `heat.nii.gz`: a float32 heat map on an oblique grid with anisotropic spacing;
- `mask.nii.gz`: a uint16 label map (labels 0-2) on an axial grid;
- `expected.json`: per file, the dims, the voxel -> LPS matrix (3 x 4) and the values of
  chosen voxels, from the arrays and affines written, for the viewer's parser to match.

The viewer's tests (frontend/test/nifti.test.ts) run this before they parse: the contract
between the Python writer and the TypeScript reader is tested on the files the API serves.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ai_engine.io.nifti import save_nifti
from ai_engine.io.volume import Volume


def _oblique_affine() -> np.ndarray:
    """LPS affine: a rotation about z and x, spacings 0.7/0.9/2.5 mm, a non-zero origin."""
    a, b = np.deg2rad(20.0), np.deg2rad(-10.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = [-120.5, 33.25, -48.0]
    return affine


def _voxels(shape: tuple[int, int, int]) -> list[list[int]]:
    x, y, z = shape
    return [
        [0, 0, 0],
        [x - 1, 0, 0],
        [0, y - 1, 0],
        [0, 0, z - 1],
        [x - 1, y - 1, z - 1],
        [3, 2, 1],
    ]


def write(out: Path) -> dict:
    rng = np.random.default_rng(7)
    heat = rng.random((9, 7, 5)).astype(np.float32) * 3.5
    mask = np.zeros((8, 6, 4), dtype=np.float32)
    mask[2:5, 1:4, 1:3] = 1
    mask[6:8, 4:6, 3] = 2
    axial = np.diag([0.8, 0.8, 1.25, 1.0])
    axial[:3, 3] = [10.0, -20.0, 30.0]
    files = {
        "heat": (Volume(heat, _oblique_affine()), np.float32),
        "mask": (Volume(mask, axial), np.uint16),
    }
    expected = {}
    for name, (volume, dtype) in files.items():
        save_nifti(volume, out / f"{name}.nii.gz", dtype=dtype)
        array = volume.array.astype(dtype).astype(np.float64)
        expected[name] = {
            "dims": list(array.shape),
            "toLps": volume.affine[:3].tolist(),
            "max": float(array.max()),
            "voxels": [
                {"ijk": ijk, "value": float(array[tuple(ijk)])} for ijk in _voxels(array.shape)
            ],
        }
    (out / "expected.json").write_text(json.dumps(expected, indent=1))
    return expected


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.frontend.nifti_fixtures <output folder>")
    write(Path(sys.argv[1]))
