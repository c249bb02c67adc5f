"""`python -m ai_engine phantoms`: write phantom chest CT / brain MRI cases and a datalist.

Example: python -m ai_engine phantoms --kind chest-ct --count 10 --seed 0 --out var/phantoms/ct
Writes DIR/<case>/ (one DICOM series; brain MRI: T1, T1c, T2, FLAIR series and
tumor_mask.nii.gz) and DIR/datalist.json with training/validation/testing splits.
Case i uses seed SEED + i, so a case does not change when --count grows.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from ai_engine.data.datalist import SPLITS, write_datalist
from ai_engine.data.phantoms import (
    BRAIN_MRI_SHAPE,
    CHEST_CT_SHAPE,
    MR_CHANNELS,
    write_brain_mri,
    write_chest_ct,
)
from ai_engine.errors import InputError

KINDS = ("chest-ct", "brain-mri")
MAX_COUNT = 10000


def build_parser(prog: str) -> argparse.ArgumentParser:
    """Arguments of the phantoms command."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kind", required=True, help="chest-ct or brain-mri")
    parser.add_argument("--count", required=True, type=int, help="number of cases (1 or more)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first case (default 0)")
    parser.add_argument(
        "--out", required=True, type=Path, help="output folder (created; must not hold a datalist)"
    )
    parser.add_argument(
        "--split",
        default="0.6,0.2,0.2",
        help="training,validation,testing fractions (default 0.6,0.2,0.2)",
    )
    parser.add_argument(
        "--shape",
        default=None,
        help=f"matrix X,Y,Z (default {','.join(map(str, CHEST_CT_SHAPE))} for chest-ct, "
        f"{','.join(map(str, BRAIN_MRI_SHAPE))} for brain-mri)",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the datalist path")
    return parser


def parse_split(text: str) -> tuple[float, float, float]:
    """'0.6,0.2,0.2' -> three non-negative fractions summing to 1."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise InputError(f"--split {text!r}: expected three numbers like 0.6,0.2,0.2") from None
    if (
        len(parts) != 3
        or any(not np.isfinite(p) or p < 0 for p in parts)
        or abs(sum(parts) - 1.0) > 1e-6
    ):
        raise InputError(
            f"--split {text!r}: expected three non-negative fractions summing to 1, like 0.6,0.2,0.2"
        )
    return parts  # type: ignore[return-value]


def parse_shape(text: str, minimum: tuple[int, int, int]) -> tuple[int, int, int]:
    """'160,160,64' -> (160, 160, 64), each at least `minimum`."""
    try:
        shape = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise InputError(f"--shape {text!r}: expected three integers like 160,160,64") from None
    if (
        len(shape) != 3
        or any(n < m for n, m in zip(shape, minimum, strict=True))
        or any(n > 512 for n in shape)
    ):
        raise InputError(f"--shape {text!r}: expected three integers from {minimum} up to 512")
    return shape  # type: ignore[return-value]


def split_counts(count: int, fractions: tuple[float, float, float]) -> list[int]:
    """Cases per split: largest-remainder rounding, so the counts sum to `count`."""
    raw = [count * f for f in fractions]
    counts = [int(np.floor(r)) for r in raw]
    for index in sorted(range(3), key=lambda i: raw[i] - counts[i], reverse=True)[
        : count - sum(counts)
    ]:
        counts[index] += 1
    return counts


def run(args: argparse.Namespace) -> int:
    """Write the cases and the datalist; returns 0 (errors raise InputError: exit 2)."""
    if args.kind not in KINDS:
        raise InputError(f"--kind {args.kind!r}: expected one of {', '.join(KINDS)}")
    if not 1 <= args.count <= MAX_COUNT:
        raise InputError(f"--count {args.count}: expected 1 to {MAX_COUNT}")
    if args.seed < 0:
        raise InputError(f"--seed {args.seed}: expected a non-negative integer")
    fractions = parse_split(args.split)
    minimum = (64, 64, 16) if args.kind == "chest-ct" else (32, 32, 16)
    default = CHEST_CT_SHAPE if args.kind == "chest-ct" else BRAIN_MRI_SHAPE
    shape = parse_shape(args.shape, minimum) if args.shape else default
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if (out / "datalist.json").exists():
        raise InputError(f"--out {out} already holds a datalist.json; choose a new folder")
    prefix = "ct" if args.kind == "chest-ct" else "mr"
    cases = [(f"{prefix}_{args.seed + i:05d}", args.seed + i) for i in range(args.count)]
    clashes = [name for name, _ in cases if (out / name).exists()]
    if clashes:
        raise InputError(
            f"--out {out} already holds case folders {clashes[:3]}; choose a new folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    items = []
    started = time.perf_counter()
    written: list[Path] = []
    try:
        for name, seed in cases:
            case_dir = out / name
            written.append(case_dir)
            if args.kind == "chest-ct":
                nodules = write_chest_ct(case_dir, seed, shape=shape)
                items.append({"image": name, "nodules": nodules})
            else:
                grade = write_brain_mri(case_dir, seed, shape=shape)
                items.append(
                    {
                        "images": {seq: f"{name}/{seq}" for seq in MR_CHANNELS},
                        "grade": grade,
                        "tumor_mask": f"{name}/tumor_mask.nii.gz",
                    }
                )
            if not args.quiet:
                print(f"wrote {case_dir}", file=sys.stderr)
    except BaseException:
        for case_dir in written:  # leave nothing half-written
            shutil.rmtree(case_dir, ignore_errors=True)
        raise
    order = np.random.default_rng([args.seed, 99]).permutation(len(items))
    counts = split_counts(len(items), fractions)
    data, start = {}, 0
    for split, n in zip(SPLITS, counts, strict=True):
        data[split] = [items[i] for i in sorted(order[start : start + n])]
        start += n
    path = write_datalist(data, out / "datalist.json")
    if not args.quiet:
        elapsed = time.perf_counter() - started
        print(
            f"{args.count} {args.kind} cases in {elapsed:.1f} s; splits {dict(zip(SPLITS, counts, strict=True))}",
            file=sys.stderr,
        )
    print(path)
    return 0
