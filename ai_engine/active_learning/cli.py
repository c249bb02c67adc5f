"""`python -m ai_engine active-learning score`: rank a datalist's studies for labelling.

Example:
  python -m ai_engine active-learning score --model models/grading --data pool.json \\
      --split all --strategy uncertainty --out ranking.json

Datalist items (docs/ai_engine.md, DATALIST): MRI items (`images`) for a tumor-grading model,
CT items (`image`) for a nodule-detection model; labels (grade, nodules) are ignored. An item
may carry a `key` (e.g. its StudyInstanceUID); otherwise its path (relative to the datalist)
is the key. RANKING.json holds `{"model", "task", "strategy", "split", "params", "n",
"ranking": [{"rank", "key", "score", "components", "item"}, ...]}`, written only when every
study was scored.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ai_engine.active_learning.diversity import DEFAULT_DIVERSITY_WEIGHT
from ai_engine.errors import InputError

SPLIT_CHOICES = ("testing", "training", "validation", "all")


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="rank studies of a datalist for labelling")
    s.add_argument("--model", required=True, help="tumor-grading or nodule-detection model folder")
    s.add_argument("--data", required=True, help="datalist JSON with the unlabeled studies")
    s.add_argument(
        "--split", default="all", choices=SPLIT_CHOICES, help="datalist split (default all)"
    )
    s.add_argument("--strategy", default="uncertainty", help="uncertainty (default) or random")
    s.add_argument("--out", required=True, help="RANKING.json to write")
    s.add_argument("--mc-samples", type=int, default=8, help="MC-dropout passes (default 8)")
    s.add_argument("--no-tta", action="store_true", help="skip test-time-augmentation variance")
    s.add_argument(
        "--diversity-weight",
        type=float,
        default=DEFAULT_DIVERSITY_WEIGHT,
        help=f"0 = uncertainty only (default {DEFAULT_DIVERSITY_WEIGHT:g})",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu")
    s.add_argument("--quiet", action="store_true", help="no per-study progress on stderr")
    return parser


def _item_key(item: dict[str, Any], base: Path) -> str:
    if item.get("key"):
        return str(item["key"])
    if "image" in item:
        path = Path(item["image"])
    else:
        paths = [Path(p) for p in item["images"].values()]
        path = Path(os.path.commonpath([str(p) for p in paths])) if len(paths) > 1 else paths[0]
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _items(datalist: Path, split: str, task: str) -> list[dict[str, Any]]:
    from ai_engine.active_learning.scoring import GRADING_TASK
    from ai_engine.data.datalist import SPLITS, load_datalist

    data = load_datalist(datalist)
    items = [it for s in SPLITS for it in data[s]] if split == "all" else data[split]
    if not items:
        raise InputError(f"datalist {datalist} has no items in split {split!r}")
    want = "images" if task == GRADING_TASK else "image"
    for index, item in enumerate(items):
        if want not in item:
            kind = "MRI items ('images')" if want == "images" else "CT items ('image')"
            raise InputError(f"{datalist} {split}[{index}]: a {task} model scores {kind}")
    return items


def _volumes(items: list[dict[str, Any]], keys: list[str], task: str) -> Iterator[tuple[str, Any]]:
    """(key, Volume) pairs, each study loaded only when the scorer asks for it."""
    from ai_engine.active_learning.scoring import GRADING_TASK
    from ai_engine.grading.data import CHANNELS
    from ai_engine.io import load_multimodal, load_volume

    for key, item in zip(keys, items, strict=True):
        if task == GRADING_TASK:
            yield key, load_multimodal(item["images"], channels=CHANNELS)
        else:
            yield key, load_volume(item["image"])


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    Path(tmp).replace(path)


def _score(args: argparse.Namespace) -> int:
    from ai_engine.active_learning.scoring import STRATEGIES, score_studies
    from ai_engine.modelfolder import read_manifest

    if args.strategy not in STRATEGIES:
        raise InputError(f"--strategy {args.strategy!r}: choose one of {', '.join(STRATEGIES)}")
    model = Path(args.model)
    task = str(read_manifest(model).get("task", ""))
    datalist = Path(args.data)
    items = _items(datalist, args.split, task)
    base = datalist.resolve().parent
    keys = [_item_key(item, base) for item in items]

    def progress(fraction: float, message: str) -> None:
        if not args.quiet:
            print(f"[{100 * fraction:5.1f}%] {message}", file=sys.stderr, flush=True)

    ranking = score_studies(
        model,
        _volumes(items, keys, task),
        strategy=args.strategy,
        mc_samples=args.mc_samples,
        tta=not args.no_tta,
        diversity_weight=args.diversity_weight,
        seed=args.seed,
        progress=progress,
        device=args.device,
        total=len(items),
    )
    by_key = dict(zip(keys, items, strict=True))
    out = {
        "model": str(model),
        "task": task,
        "strategy": args.strategy,
        "split": args.split,
        "datalist": str(datalist),
        "params": {
            "mc_samples": args.mc_samples,
            "tta": not args.no_tta,
            "diversity_weight": args.diversity_weight,
            "seed": args.seed,
        },
        "n": len(ranking),
        "ranking": [
            {
                "rank": s.rank,
                "key": s.key,
                "score": s.score,
                "components": s.components,
                "item": by_key[s.key],
            }
            for s in ranking
        ],
    }
    _write_atomic(Path(args.out), out)
    print(f"{'rank':>4}  {'score':>7}  key")
    for s in ranking[:20]:
        print(f"{s.rank:>4}  {s.score:>7.4f}  {s.key}")
    if len(ranking) > 20:
        print(f"... {len(ranking) - 20} more in {args.out}")
    print(f"wrote {args.out} ({len(ranking)} studies, strategy {args.strategy})")
    return 0


def run(args: argparse.Namespace) -> int:
    return {"score": _score}[args.command](args)
