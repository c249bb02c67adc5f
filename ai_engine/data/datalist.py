"""Datalists: `{"training": [...], "validation": [...], "testing": [...]}` (MONAI's layout),
and optionally `"calibration": [...]`: labelled scans that no network trains on, on which a
detector fits its rescoring (the networks' outputs there are what they are on new scans).

Chest CT items: `{"image": "<case folder>", "nodules": [{"center_lps_mm": [x, y, z],
"diameter_mm": d}, ...]}`. Brain MRI items: `{"images": {"T1": ..., "T1c": ..., "T2": ...,
"FLAIR": ...}, "grade": 1|2|3, "tumor_mask": "<case>/tumor_mask.nii.gz"}`.
Relative paths are relative to the datalist file's folder; `load_datalist` resolves them.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from ai_engine.errors import InputError

SPLITS = ("training", "validation", "testing")
#: splits a datalist may hold besides `SPLITS` (read and written only where present)
OPTIONAL_SPLITS = ("calibration",)
MR_SEQUENCE_KEYS = ("T1", "T1c", "T2", "FLAIR")


def load_datalist(path: str | Path, check_files: bool = True) -> dict[str, list[dict[str, Any]]]:
    """Read and validate a datalist; return it with every path made absolute (every one of
    `SPLITS`, and the `OPTIONAL_SPLITS` it holds).

    Raises:
        InputError: the file is missing or not JSON, a split is not a list, or an item has
            missing/unknown keys, wrong types, or (with `check_files`) paths that do not exist.
            The message names the split and index of the bad item.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"datalist {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"datalist {path} is not valid JSON: {exc}") from None
    allowed = [*SPLITS, *OPTIONAL_SPLITS]
    if not isinstance(data, dict):
        raise InputError(f"datalist {path} must be a JSON object with keys {allowed}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise InputError(f"datalist {path}: unknown keys {unknown}; allowed are {allowed}")
    if not any(data.get(split) for split in SPLITS):
        raise InputError(f"datalist {path} holds no items in {list(SPLITS)}")
    base = path.parent
    out: dict[str, list[dict[str, Any]]] = {}
    for split in [*SPLITS, *(s for s in OPTIONAL_SPLITS if s in data)]:
        items = data.get(split, [])
        if not isinstance(items, list):
            raise InputError(
                f"datalist {path}: {split!r} must be a list, got {type(items).__name__}"
            )
        out[split] = [
            _validate_item(item, f"{path.name} {split}[{i}]", base, check_files)
            for i, item in enumerate(items)
        ]
    return out


def _resolve(value: Any, where: str, key: str, base: Path, check: bool) -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}: {key!r} must be a non-empty path string, got {value!r}")
    resolved = (base / value).resolve()
    if check and not resolved.exists():
        raise InputError(f"{where}: {key!r} points to {resolved}, which does not exist")
    return str(resolved)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _validate_item(item: Any, where: str, base: Path, check: bool) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise InputError(f"{where}: an item must be an object, got {type(item).__name__}")
    if ("image" in item) == ("images" in item):
        raise InputError(
            f"{where}: an item needs exactly one of 'image' (CT) or 'images' (MRI sequences)"
        )
    out = dict(item)
    if "image" in item:
        out["image"] = _resolve(item["image"], where, "image", base, check)
        nodules = item.get("nodules", [])
        if not isinstance(nodules, list):
            raise InputError(f"{where}: 'nodules' must be a list, got {type(nodules).__name__}")
        for n, nodule in enumerate(nodules):
            at = f"{where}.nodules[{n}]"
            if not isinstance(nodule, dict) or not {"center_lps_mm", "diameter_mm"} <= set(nodule):
                raise InputError(f"{at}: a nodule needs 'center_lps_mm' and 'diameter_mm'")
            center = nodule["center_lps_mm"]
            if (
                not isinstance(center, list)
                or len(center) != 3
                or not all(_number(c) for c in center)
            ):
                raise InputError(
                    f"{at}: 'center_lps_mm' must be three numbers (LPS mm), got {center!r}"
                )
            if not _number(nodule["diameter_mm"]) or nodule["diameter_mm"] <= 0:
                raise InputError(
                    f"{at}: 'diameter_mm' must be a positive number, got {nodule['diameter_mm']!r}"
                )
        out["nodules"] = [dict(n) for n in nodules]
    else:
        images = item["images"]
        if not isinstance(images, dict) or not images:
            raise InputError(f"{where}: 'images' must be an object of sequence name -> path")
        unknown = sorted(set(images) - set(MR_SEQUENCE_KEYS))
        if unknown:
            raise InputError(
                f"{where}: unknown sequences {unknown} in 'images'; allowed are {list(MR_SEQUENCE_KEYS)}"
            )
        out["images"] = {
            k: _resolve(v, where, f"images.{k}", base, check) for k, v in images.items()
        }
        if "grade" in item and (
            not isinstance(item["grade"], int)
            or isinstance(item["grade"], bool)
            or item["grade"] not in (1, 2, 3)
        ):
            raise InputError(f"{where}: 'grade' must be 1, 2 or 3, got {item['grade']!r}")
        if "tumor_mask" in item:
            out["tumor_mask"] = _resolve(item["tumor_mask"], where, "tumor_mask", base, check)
    return out


def write_datalist(data: dict[str, list[dict[str, Any]]], path: str | Path) -> Path:
    """Write a datalist atomically (temporary file, then rename): every one of `SPLITS`, and
    the `OPTIONAL_SPLITS` that hold items.

    Paths are written as given, and `load_datalist` reads a relative one against the
    datalist's folder: pass absolute paths, or paths relative to `path`'s folder (not to the
    working directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        splits = [*SPLITS, *(s for s in OPTIONAL_SPLITS if data.get(s))]
        json.dump({split: data.get(split, []) for split in splits}, handle, indent=2)
        handle.write("\n")
    Path(tmp).replace(path)
    return path
