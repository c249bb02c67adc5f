"""Print how long phantom generation, writing and loading take (not a test).

Run: PYTHONPATH=. .venv/bin/python bench/bench_phantoms.py [--cases 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ai_engine.data.phantoms import (
    brain_mri_datasets,
    chest_ct_datasets,
    make_brain_mri,
    make_chest_ct,
    write_brain_mri,
    write_chest_ct,
)
from ai_engine.io import load_multimodal, load_volume


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.cases):
            (volume, nodules), t_make = _timed(make_chest_ct, seed)
            _, t_ds = _timed(chest_ct_datasets, volume, seed)
            _, t_write = _timed(write_chest_ct, Path(tmp) / f"ct{seed}", seed)
            _, t_load = _timed(load_volume, Path(tmp) / f"ct{seed}")
            rows.append(
                ("chest-ct 160x160x64", t_make, t_ds, t_write, t_load, f"{len(nodules)} nodules")
            )
            (mr, grade, _), t_make = _timed(make_brain_mri, seed)
            _, t_ds = _timed(brain_mri_datasets, mr, seed)
            _, t_write = _timed(write_brain_mri, Path(tmp) / f"mr{seed}", seed)
            _, t_load = _timed(load_multimodal, Path(tmp) / f"mr{seed}")
            rows.append(("brain-mri 4x96x96x64", t_make, t_ds, t_write, t_load, f"grade {grade}"))
    print(f"{'case':<22}{'make s':>8}{'to DICOM s':>12}{'write s':>9}{'load s':>8}  notes")
    for name, make, ds, write, load, note in rows:
        print(f"{name:<22}{make:>8.2f}{ds:>12.2f}{write:>9.2f}{load:>8.2f}  {note}")
    print(
        "write = make + to DICOM + files on disk (brain MRI also the NIfTI mask); load = load_volume / load_multimodal"
    )


if __name__ == "__main__":
    main()
