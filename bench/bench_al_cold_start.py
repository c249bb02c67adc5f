"""Cold start on brain-MRI phantoms: how soon does each queue reach a grade the labels lack?

The active-learning benchmark (`bench_active_learning.py`) starts every seed from three random
labels, which lack grade 3 on most clinical pools (grades 60/30/10 %), and the seeds where
uncertainty sampling loses are mostly those where its queue reaches the rare grade late
(docs/active_learning.md). This bench measures that step alone, without learning curves: for
each seed it draws the same clinical pool and initial labels as `bench_active_learning.py`,
trains the same round-0 model (`--init-steps` on the initial labels) and prints, for every
queue, the rank at which the first study of a missing grade comes:

* `random`: the expected rank under a random order, (n + 1) / (m + 1) for m such studies
  among n;
* `entropy`: the plain uncertainty order (`score_studies(..., cold_start=False)`);
* `network`: the cold start's k-center order from the labelled studies in the network's
  penultimate features (`cold_start_space="network"`, the default until session 28);
* `intensity`: the same order between model-free intensity descriptors
  (`cold_start_space="intensity"`, the default since session 28);
* `ordinal` (starts with grades 1 and 2 only): the grade-2 logit over the grade-1 logit,
  highest first (grade 3 as "more" grade 2).

Seeds whose initial labels hold every grade are listed and skipped. One process, 1 torch
thread, about 5 s per seed. Development seeds (100-199) only: the test seeds (0-99, 200-399)
are for declared runs of `bench_active_learning.py`.

  .venv/bin/python bench/bench_al_cold_start.py --seeds 100-139
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_active_learning as al

from ai_engine.active_learning import score_studies
from ai_engine.grading.data import preprocess
from ai_engine.grading.train import predict_logits
from ai_engine.networks import build_network
from ai_engine.training.reproducibility import derive_seed, seed_everything

QUEUES = ("random", "entropy", "network", "intensity", "ordinal")


def parse_seeds(text: str) -> list[int]:
    """'100-139' or '100,103,110-112' -> seeds; ValueError on anything else."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        first, _, last = part.partition("-")
        lo, hi = int(first), int(last or first)
        if lo < 0 or hi < lo:
            raise ValueError(f"bad seed range {part!r}")
        seeds += range(lo, hi + 1)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"need distinct seeds, got {text!r}")
    return seeds


def first_rank(order: list[int], labels: np.ndarray, missing: set[int]) -> int:
    """1-based rank of the first study in `order` whose grade is in `missing`."""
    return next(r for r, i in enumerate(order, start=1) if labels[i] in missing)


def run_seed(rep: int, args: argparse.Namespace, config, work: Path) -> dict | None:
    pool, initial_keys = al.draw_seed("clinical", rep, args)
    initial = [i for i, it in enumerate(pool) if it["key"] in initial_keys]
    grades = np.array([it["label"] + 1 for it in pool])
    start = sorted({int(g) for g in grades[initial]})
    missing = {1, 2, 3} - set(start)
    if not missing:
        return {"seed": rep, "start": start}
    for it in pool:
        it["image"] = torch.from_numpy(preprocess(it["volume"], config.spatial_size).image)
    seed_everything(derive_seed(rep, "network-init"))
    model = build_network(config.network, **config.build_kwargs())
    items = [pool[i] for i in sorted(initial, key=lambda i: pool[i]["key"])]
    al.fit(model, items, args, args.init_steps, args.lr, derive_seed(rep, "round", 0), work / "t")
    folder = work / f"seed{rep}"
    al.write_folder(model, config, folder, [it["label"] for it in items])
    unlabeled = [i for i in range(len(pool)) if i not in initial]
    labels = grades[unlabeled]
    studies = [(pool[i]["key"], pool[i]["volume"]) for i in unlabeled]
    labeled = [(pool[i]["key"], pool[i]["volume"]) for i in initial]
    index = {key: j for j, (key, _) in enumerate(studies)}

    def queue(**kwargs) -> list[int]:
        ranking = score_studies(folder, studies, mc_samples=args.mc_samples, seed=1, **kwargs)
        return [index[s.key] for s in ranking]

    m = int(sum(g in missing for g in labels))
    ranks = {
        "random": (len(labels) + 1) / (m + 1),
        "entropy": first_rank(queue(cold_start=False), labels, missing),
        "network": first_rank(queue(labeled=labeled, cold_start_space="network"), labels, missing),
        "intensity": first_rank(
            queue(labeled=labeled, cold_start_space="intensity"), labels, missing
        ),
    }
    if start == [1, 2]:
        data = [{"image": pool[i]["image"], "label": pool[i]["label"]} for i in unlabeled]
        logits, _ = predict_logits(model, data, batch_size=16)
        ranks["ordinal"] = first_rank(
            list(np.argsort(-(logits[:, 1] - logits[:, 0]), kind="stable")), labels, missing
        )
    shutil.rmtree(folder, ignore_errors=True)
    return {"seed": rep, "start": start, "missing_in_pool": m, "ranks": ranks}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="100-139", help="e.g. 100-139 or 100,105,110-112")
    parser.add_argument("--pool", type=int, default=48)
    parser.add_argument("--init", type=int, default=3)
    parser.add_argument("--shape", default="32,32,32")
    parser.add_argument("--spatial-size", default="24,24,24")
    parser.add_argument("--block-inplanes", default="8,16,32,32")
    parser.add_argument("--init-steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--mc-samples", type=int, default=8)
    args = parser.parse_args()
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as exc:
        parser.error(f"--seeds: {exc}")
    if not 0 < args.init < args.pool:
        parser.error("need 0 < --init < --pool")
    # what bench_active_learning.fit and grading_config read
    args.head_dropout, args.steps_per_epoch, args.batch_size, args.focal_gamma = 0.0, 20, 8, 2.0
    torch.set_num_threads(1)
    config = al.grading_config(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in seeds:
            row = run_seed(rep, args, config, Path(tmp))
            rows.append(row)
            ranks = row.get("ranks")
            text = "every grade: skipped" if ranks is None else "  ".join(
                f"{q} {ranks[q]:.1f}" if q == "random" else f"{q} {ranks[q]}"
                for q in QUEUES if q in ranks
            )  # fmt: skip
            print(f"seed {rep} start {row['start']}: {text}", flush=True)
    print("\nRank of the first study of a missing grade (mean, max; random: expected rank)")
    groups = {
        "start grades 1, 2": [r for r in rows if r.get("ranks") and r["start"] == [1, 2]],
        "other starts": [r for r in rows if r.get("ranks") and r["start"] != [1, 2]],
    }
    for name, group in groups.items():
        if not group:
            continue
        cells = []
        for q in QUEUES:
            vals = [r["ranks"][q] for r in group if q in r["ranks"]]
            if vals:
                cells.append(f"{q} {np.mean(vals):.1f} (max {max(vals):.3g})")
        print(f"{name} ({len(group)} seeds): " + ", ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
