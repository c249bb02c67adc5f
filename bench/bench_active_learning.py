"""Active-learning simulation on brain-MRI phantoms (tumor grading): uncertainty vs random.

Two pool settings, printed side by side (the first is the primary one):

* **clinical** (primary): what a hospital's unlabeled grading pool looks like. These
  settings were fixed from the clinical picture BEFORE any result was seen, and are not tuned:
  - patients' grades 1 / 2 / 3 in proportions 60 / 30 / 10 % (largest-remainder quotas over
    the pool's patients, then shuffled): most tumors are low grade, the high grade is rare;
  - several scans of one patient: a patient contributes 1, 2 or 3 studies with probabilities
    0.60 / 0.25 / 0.15 (follow-ups, repeated acquisitions; about a third of the studies have
    a sibling in the pool). A repeat is the patient's phantom (same seed: same anatomy,
    tumor and grade) re-acquired: per-channel gain x U(0.85, 1.15), an in-plane shift of up
    to 2 voxels, fresh Rician noise of 2-4 % of the channel's 99th percentile;
  - 8 % of the studies are degraded acquisitions (about 7.5 % of clinical MRI sequences are
    repeated for motion, Andre et al., JACR 2015): Rician noise of 15 % of the channel's 99th
    percentile. Their grade label is still the true one (high aleatoric noise, not a wrong
    label).
* **balanced**: every study a different phantom, grades 1, 2, 3 in turn, no degradation
  (the first version of this bench).

The held-out test set (`--test` phantoms, seeds 900000+, clean, grades balanced) is the same
for both settings and all seeds: macro-F1 weighs the grades equally, and a balanced set
measures every grade's F1 with the same precision, whatever the pool's prevalence.

Per setting and seed (each seed has its own pool, initial labels and network init):

1. label `--init` pool studies at random (the same for both strategies);
2. round 0: train a grading network from a seeded init on them (`--init-steps` steps). Both
   strategies start from this one model;
3. each round: acquire `--k` studies with `ai_engine.active_learning.score_studies` on the
   unlabeled rest ("uncertainty" with the library's defaults: MC-dropout entropy + TTA
   variance, diversity weight `DEFAULT_DIVERSITY_WEIGHT`, and the cold start: a model that has
   not seen every grade queues by distance from the labelled studies (between the images'
   intensity descriptors since session 28; variant `network-cold-start`: between the
   network's features, the default before), which the bench then passes as the registry
   does; or "random": the foreground-aware
   baseline; `--variants` adds other uncertainty settings as extra strategies), then fine-tune the previous round's weights on
   all labeled studies for `--round-steps` steps (WARM START, same schedule and seeds for both
   strategies: only the labeled set differs), and measure macro-F1 on the test set; until
   `--budget` labels.
4. the reference: the round-0 model fine-tuned on the WHOLE pool with the same schedule (as
   many rounds of `--round-steps` as the curve has), i.e. the full-data model with the same
   training budget as the last point of the curves.

Why warm start: it is cheaper than retraining every point from scratch (`--init-steps`
instead of `--round-steps` steps per point) and it is how a deployed model is refreshed as
labels arrive. Its known bias (a warm-started model generalises a little worse than one
retrained from scratch, Ash & Adams 2020) applies to both strategies and to the reference
alike. `--from-scratch` retrains every point (and the reference) from the round-0 init for
`--init-steps` steps instead, for a check.

Each round must train long enough for the model to absorb its labels, or "labels needed"
measures training steps: with the first schedule (20 steps at lr 1e-3) the model given the
WHOLE pool after round 0 still scored macro-F1 0.45-0.54 after one round and needed three
(60 steps) to reach its plateau, so no strategy could cross 95% before 15-18 labels. The
default (40 steps at lr 3e-3) brings the whole-pool model to its plateau in one round
(0.91-0.97, development seeds, validation set). `--full-curve` evaluates the whole-pool
model after every round (the `full` column), to check this for other settings.
`--reference-only` runs no strategy and reports how steady the whole-pool model is from round
to round (its labels never change, so every move of its macro-F1 is the schedule's noise,
which the strategies' curves carry too): a fine-tuning schedule is chosen on it, blind to the
strategies.

Method choices are made with `--eval-set validation` (phantom seeds 800000+) on the
development seeds (`--seed-offset 100`); the held-out test set only gives the reported figures.

"Labels needed" is the first labeled count whose macro-F1 reaches 95% of the reference
(counted as the next round, `--budget` + `--k` capped at `--pool`, when the curve never
reaches it within the budget: printed ">budget", with the number of such seeds; a lower
bound, so a strategy that misses the budget more often is flattered, never penalised). The goal of issue #6: uncertainty needs at most 0.7 of random's labels (ratio of
the means over seeds, with a paired bootstrap interval over seeds). Also printed: where the
seed-mean curves cross 95% of the mean full-pool macro-F1 (linear between points: a steadier
figure than per-seed first crossings, which one lucky round decides), the mean macro-F1 over
the curve (area under the learning curve, less noisy than one crossing), per-seed tables,
what each strategy acquired (rare grade, repeats of an already-labeled patient, degraded
studies), and how well each uncertainty signal (entropy, BALD, margin, TTA variance, the
combined score) ranks the pool's misclassified studies (AUROC over every unlabeled study of
every uncertainty round).

One study per round from 3 initial labels (`--init 3 --k 1`, the defaults since session 6)
measures "labels needed" to the label: an annotator takes the queue's next study one at a time
(MONAI Label's "next sample" works so), and the earlier protocol (6 initial labels, rounds of
3) put the floor at 9 labels and moved in steps of 3, i.e. 15-20 % of a typical answer of
~17 labels, and made the ranking's gain, which lies in the first labels (a grade the model
has not seen yet), fall inside one round. A round per label costs a round per label, so the
curve stops at `--budget` 30 labels (random needs 12-27 on most seeds); a seed that misses
it counts as 31 (see above). `--init 6 --k 3 --budget 48` repeats the earlier protocol.

Seeds 0-19 are the reported ones (`--seeds 10` in two processes, `--seed-offset 0` and `10`);
method choices were made on other seeds (`--seed-offset 100`), so the reported figures are not
tuned to their own noise.

Usage (defaults, 5 seeds of both settings: about 40 min on one core of a quiet machine, ~4
min per seed and setting, twice that under load; 1 torch thread: 2 threads stall each other
on a loaded machine):
  .venv/bin/python bench/bench_active_learning.py --out var/bench/active_learning

Given seeds (e.g. those whose initial labels hold a single grade): `--seed-list 110,115,...`.

More seeds in parallel: one process per core, each with its own `--seed-offset` and `--out`
(the same other flags), then the report of all their seeds together:
  .venv/bin/python bench/bench_active_learning.py --merge OUT1/results.json OUT2/results.json
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monai.transforms import Compose, RandFlipd

from ai_engine.active_learning import (
    DEFAULT_DIVERSITY_WEIGHT,
    missing_grades,
    score_studies,
)
from ai_engine.active_learning.uncertainty import (
    DEFAULT_TTA_WEIGHT,
    class_uncertainty,
    combined_uncertainty,
)
from ai_engine.data.phantoms import make_brain_mri
from ai_engine.evaluation.classification import classification_metrics
from ai_engine.grading.config import TASK, GradingConfig
from ai_engine.grading.data import GRADES, preprocess
from ai_engine.grading.train import (
    GradingLoss,
    class_weights_from_labels,
    label_counts,
    predict_logits,
    preprocessing_record,
)
from ai_engine.io import Volume
from ai_engine.modelfolder import Component, save_model_folder
from ai_engine.networks import build_network
from ai_engine.training import EpochLoader, TrainConfig, Trainer, make_dataset
from ai_engine.training.reproducibility import derive_seed, seed_everything

STRATEGIES = ("uncertainty", "random")
#: optional extra uncertainty variants (`--variants`): score_studies keyword overrides
VARIANTS = {
    "no-tta": {"tta": False},
    "diversity-0.2": {"diversity_weight": 0.2},
    "diversity-0.5": {"diversity_weight": 0.5},
    "diversity-1": {"diversity_weight": 1.0},
    "margin": {"tta": False},
    "bald": {"tta": False},
    "class-balance": {},
    "labeled-diversity-0.2": {"diversity_weight": 0.2},
    "labeled-diversity-0.5": {"diversity_weight": 0.5},
    "tta-16": {"tta_weight": 16.0},
    "tta-64": {"tta_weight": 64.0},
    "density-1": {"density_weight": 1.0},
    "density-4": {"density_weight": 4.0},
    "snapshots-3": {},
    "no-cold-start": {"cold_start": False},
    "one-grade-cold-start": {},
    "network-cold-start": {"cold_start_space": "network"},
}
#: variants that pass the labelled set's grade counts (`labeled_counts`: class-balanced
#: uncertainty)
COUNTED = {"class-balance"}
#: variants whose cold start ends at the second grade, not when every grade has a label: the
#: default before session 23 (docs/active_learning.md)
ONE_GRADE_COLD_START = {"one-grade-cold-start"}
#: variants that pass the labelled studies (`labeled`: diversity counted from the labelled
#: set, so that it acts on the first pick too)
WITH_LABELED = {name for name in VARIANTS if name.startswith("labeled-")}
#: variants that re-rank the library's queue by one of its components (a signal under test
#: that `score_studies` reports but does not rank by): foreground studies first, then by it
RERANK = {"margin": "margin", "bald": "bald"}
#: variants that also score with the previous rounds' models (a checkpoint ensemble of this
#: many members, the current one included) and rank by the entropy of their mixture
#: (`snapshot_rerank`)
SNAPSHOTS = {"snapshots-3": 3}
SETTINGS = ("clinical", "balanced")
NAMES = [str(g) for g in GRADES]

# clinical pool (fixed before any result was seen; see the module docstring)
GRADE_SHARE = (0.6, 0.3, 0.1)
STUDIES_PER_PATIENT = ((1, 0.60), (2, 0.25), (3, 0.15))
REPEAT_GAIN = (0.85, 1.15)
REPEAT_SHIFT = 2
REPEAT_NOISE = (0.02, 0.04)
DEGRADED_SHARE = 0.08
DEGRADED_NOISE = 0.15
SIGNALS = ("entropy", "bald", "margin", "tta_variance", "uncertainty")
#: first phantom seed of each evaluation set (balanced grades, clean)
EVAL_SETS = {"test": 900_000, "validation": 800_000}


def _rician(arr: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.sqrt(
        (arr + rng.normal(0, sigma, arr.shape)) ** 2 + rng.normal(0, sigma, arr.shape) ** 2
    )


def _p99(channel: np.ndarray) -> float:
    return float(np.percentile(channel, 99))


def reacquire(volume: Volume, rng: np.random.Generator) -> Volume:
    """Another scan of the same patient: gain, small in-plane shift, fresh Rician noise."""
    arr = volume.array.astype(np.float64)
    shift = tuple(int(v) for v in rng.integers(-REPEAT_SHIFT, REPEAT_SHIFT + 1, 2))
    arr = np.roll(arr, shift, axis=(1, 2))
    for c in range(arr.shape[0]):
        sigma = rng.uniform(*REPEAT_NOISE) * _p99(arr[c])
        arr[c] = _rician(arr[c] * rng.uniform(*REPEAT_GAIN), sigma, rng)
    return Volume(np.rint(arr), volume.affine, {**volume.meta, "reacquired": True})


def degrade(volume: Volume, rng: np.random.Generator) -> Volume:
    """A low-SNR acquisition: heavy Rician noise."""
    arr = volume.array.astype(np.float64)
    for c in range(arr.shape[0]):
        arr[c] = _rician(arr[c], DEGRADED_NOISE * _p99(arr[c]), rng)
    return Volume(np.rint(arr), volume.affine, {**volume.meta, "degraded": True})


def _quotas(shares: tuple[float, ...], n: int) -> list[int]:
    raw = np.asarray(shares) * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return [int(c) for c in counts]


def study(key: str, volume: Volume, grade: int, patient: str, **flags: bool) -> dict:
    return {"key": key, "volume": volume, "label": grade - 1, "patient": patient,
            "repeat": flags.get("repeat", False), "degraded": flags.get("degraded", False)}  # fmt: skip


def balanced_pool(first_seed: int, count: int, shape: tuple[int, int, int]) -> list[dict]:
    """Grades 1, 2, 3 in turn; every study its own phantom."""
    out = []
    for i in range(count):
        grade = i % 3 + 1
        volume, _, _ = make_brain_mri(first_seed + i, grade=grade, shape=shape)
        out.append(study(f"p{first_seed + i}", volume, grade, f"p{first_seed + i}"))
    return out


def clinical_pool(
    first_seed: int, count: int, shape: tuple[int, int, int], seed: int
) -> list[dict]:
    """Imbalanced grades, repeat scans of a patient, degraded acquisitions (module docstring)."""
    rng = np.random.default_rng(derive_seed(seed, "clinical-pool"))
    sizes, probs = zip(*STUDIES_PER_PATIENT, strict=True)
    per_patient: list[int] = []
    while sum(per_patient) < count:
        per_patient.append(int(rng.choice(sizes, p=probs)))
    per_patient[-1] -= sum(per_patient) - count
    grades = np.repeat([1, 2, 3], _quotas(GRADE_SHARE, len(per_patient)))
    rng.shuffle(grades)
    out = []
    for i, (n_studies, grade) in enumerate(zip(per_patient, grades, strict=True)):
        volume, _, _ = make_brain_mri(first_seed + i, grade=int(grade), shape=shape)
        patient = f"p{first_seed + i}"
        for j in range(n_studies):
            scan = volume if j == 0 else reacquire(volume, rng)
            out.append(study(f"{patient}s{j}", scan, int(grade), patient, repeat=j > 0))
    for i in rng.permutation(count)[: round(DEGRADED_SHARE * count)]:
        out[i]["volume"] = degrade(out[i]["volume"], rng)
        out[i]["degraded"] = True
    order = rng.permutation(count)  # the pool's order carries no information
    return [out[i] for i in order]


def fit(
    model: torch.nn.Module, items: list[dict], args: argparse.Namespace, steps: int, lr: float,
    seed: int, work: Path,
) -> None:  # fmt: skip
    """Train `model` in place on `items` for `steps` optimizer steps (flips, weighted focal loss)."""
    seed_everything(seed)
    data = [{"image": it["image"], "label": torch.tensor(it["label"])} for it in items]
    transform = Compose([RandFlipd(["image"], prob=0.5, spatial_axis=a) for a in range(3)])
    loader = EpochLoader(
        make_dataset(data, transform, cache=False), args.batch_size, shuffle=True, seed=seed
    )
    per_epoch = min(args.steps_per_epoch, steps)
    tc = TrainConfig(
        epochs=max(1, steps // per_epoch), steps_per_epoch=per_epoch, lr=lr,
        warmup_steps=min(10, steps // 5), seed=seed, progress=False, monitor="train_loss",
    )  # fmt: skip
    weights = class_weights_from_labels([it["label"] for it in items])
    Trainer(model, GradingLoss(args.focal_gamma, weights), loader, tc, work).fit()
    shutil.rmtree(work, ignore_errors=True)
    model.eval()


def grading_config(args: argparse.Namespace) -> GradingConfig:
    """The network every strategy trains: the grading preset for `resnet3d` with the bench's
    widths, grid and (`--head-dropout`) dropout in front of the head; 0 leaves the kwargs as
    runs before the flag printed them."""
    return GradingConfig(
        network="resnet3d",
        network_kwargs={
            "block_inplanes": [int(v) for v in args.block_inplanes.split(",")],
            **({"head_dropout": args.head_dropout} if args.head_dropout else {}),
        },
        spatial_size=tuple(int(v) for v in args.spatial_size.split(",")),
    )


def write_folder(
    model: torch.nn.Module, config: GradingConfig, folder: Path, labels: list[int]
) -> None:
    """The model as a grading folder that records the grades it was trained on (`labels`,
    class indices), as `grading train` writes them: the library's cold start reads them."""
    kwargs = config.build_kwargs()
    save_model_folder(
        folder,
        task=TASK,
        made_by_params={"label_counts": label_counts(labels)},
        components={"model": Component(network=config.network, network_kwargs=kwargs, module=model)},
        preprocessing=preprocessing_record(config),
        postprocessing={"temperature": 1.0, "grades": list(GRADES)},
        extra={"grading_config": config.to_dict()},
    )  # fmt: skip


def macro_f1(model: torch.nn.Module, test: list[dict]) -> float:
    data = [{"image": it["image"], "label": it["label"]} for it in test]
    logits, labels = predict_logits(model, data, batch_size=16)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    return float(classification_metrics(labels, probs, NAMES)["macro_f1"])


def strategies(args: argparse.Namespace) -> list[str]:
    """ "uncertainty" (the library's defaults), "random", then `--variants` of uncertainty;
    none with `--reference-only`."""
    if args.reference_only:
        return []
    default = ["random"] if args.variants_only else list(STRATEGIES)
    return [*default, *(f"uncertainty-{v}" for v in args.variants)]


def grade_counts(keys: list[str], by_key: dict) -> dict[int, int]:
    """How many of the labelled studies hold each grade."""
    return {g: sum(by_key[k]["label"] == g - 1 for k in keys) for g in GRADES}


def mix_at(args: argparse.Namespace) -> int:
    """Labeled count at which the acquired mix is reported: half way through the rounds."""
    rounds = max(0, (args.budget - args.init) // args.k)
    return args.init + args.k * ((rounds + 1) // 2)


def labels_needed(curve: list[tuple[int, float]], target: float, censored: int) -> int:
    """First labeled count whose metric reaches `target`; `censored` when none within the
    budget (`censored_as`)."""
    return next((n for n, f1 in curve if f1 >= target), censored)


def censored_as(args: argparse.Namespace) -> int:
    """What a curve that never reaches the target within the budget counts as: the next round
    (`--budget` + `--k`), capped at the pool. A lower bound of what it would have needed, the
    same for every strategy; below the pool, the count is printed beside the means."""
    return min(args.pool, args.budget + args.k)


def auroc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """Mann-Whitney AUROC of `score` for the boolean `positive` (None when one class is empty)."""
    from scipy.stats import rankdata

    pos, neg = int(positive.sum()), int((~positive).sum())
    if not pos or not neg:
        return None
    ranks = rankdata(score)
    return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * neg))


def draw_seed(setting: str, rep: int, args) -> tuple[list[dict], list[str]]:
    """A seed's pool (`--pool` studies of the setting) and the keys of its `--init` initial
    labels, as every run of this bench draws them."""
    shape = tuple(int(v) for v in args.shape.split(","))
    first = 100_000 * (rep + 1) + (50_000 if setting == "balanced" else 0)
    if setting == "clinical":
        pool = clinical_pool(first, args.pool, shape, derive_seed(rep, "pool"))
    else:
        pool = balanced_pool(first, args.pool, shape)
    rng = np.random.default_rng(derive_seed(rep, setting, "initial-labels"))
    return pool, [pool[i]["key"] for i in rng.permutation(len(pool))[: args.init]]


def run_seed(
    setting: str, rep: int, args, config: GradingConfig, test: list[dict], out: Path
) -> dict:
    pool, initial = draw_seed(setting, rep, args)
    for it in pool:
        it["image"] = torch.from_numpy(preprocess(it["volume"], config.spatial_size).image)
    by_key = {it["key"]: it for it in pool}
    root = out / setting / f"seed{rep}"
    timings = {"train_s": 0.0, "score_s": 0.0, "eval_s": 0.0}

    def train(model, items, steps, lr, seed) -> None:
        t0 = time.perf_counter()
        fit(model, items, args, steps, lr, seed, root / "training")
        timings["train_s"] += time.perf_counter() - t0

    def evaluate(model) -> float:
        t0 = time.perf_counter()
        f1 = macro_f1(model, test)
        timings["eval_s"] += time.perf_counter() - t0
        return f1

    seed_everything(derive_seed(rep, "network-init"))
    init_model = build_network(config.network, **config.build_kwargs())
    init_weights = copy.deepcopy(init_model.state_dict())
    items0 = [by_key[k] for k in sorted(initial)]
    train(init_model, items0, args.init_steps, args.lr, derive_seed(rep, "round", 0))
    f1_0 = evaluate(init_model)
    rounds = max(0, (args.budget - args.init) // args.k)

    def next_model(previous: torch.nn.Module, items: list[dict], r: int) -> torch.nn.Module:
        if args.from_scratch:
            model = copy.deepcopy(previous)
            model.load_state_dict(init_weights)
            train(model, items, args.init_steps, args.lr, derive_seed(rep, "round", r))
        else:
            model = previous
            train(model, items, args.round_steps, args.ft_lr, derive_seed(rep, "round", r))
        return model

    curves: dict[str, list[tuple[int, float]]] = {}
    acquired: dict[str, list[str]] = {}
    ranked: list[dict] = []  # per uncertainty round: signals and errors over the unlabeled pool
    for strategy in strategies(args):
        model = copy.deepcopy(init_model)
        labeled = list(initial)
        curve = [(len(labeled), f1_0)]
        members = SNAPSHOTS.get(strategy.removeprefix("uncertainty-"), 1)
        kept: list[Path] = []  # the previous rounds' folders a checkpoint ensemble scores with
        for r in range(1, rounds + 1):
            folder = root / strategy / f"round{r:02d}"
            write_folder(model, config, folder, [by_key[k]["label"] for k in labeled])
            unlabeled = [(k, by_key[k]["volume"]) for k in by_key if k not in set(labeled)]
            t0 = time.perf_counter()
            variant = VARIANTS.get(strategy.removeprefix("uncertainty-"), {})
            kwargs = dict(variant)
            if args.diversity is not None and strategy == "uncertainty":
                kwargs["diversity_weight"] = args.diversity
            if strategy.removeprefix("uncertainty-") in ONE_GRADE_COLD_START:
                seen = sum(n > 0 for n in grade_counts(labeled, by_key).values())
                kwargs["cold_start"] = seen < 2
            if strategy.removeprefix("uncertainty-") in COUNTED:
                kwargs["labeled_counts"] = grade_counts(labeled, by_key)
            # the labelled studies: for the variants that count distance from them, and, as the
            # registry does, while the model has not seen every grade (the library's cold start)
            if strategy != "random" and (
                strategy.removeprefix("uncertainty-") in WITH_LABELED or missing_grades(folder)
            ):
                kwargs["labeled"] = [(k, by_key[k]["volume"]) for k in labeled]
            ranking = score_studies(
                folder, unlabeled, strategy="random" if strategy == "random" else "uncertainty",
                mc_samples=args.mc_samples, seed=derive_seed(rep, "score", r), **kwargs,
            )  # fmt: skip
            name = RERANK.get(strategy.removeprefix("uncertainty-"))
            if name:
                ranking = sorted(ranking, key=lambda st, c=name: (
                    not st.components["foreground"], -st.components[c]))  # fmt: skip
            if members > 1 and kept:
                ranking = snapshot_rerank(
                    ranking, kept, unlabeled, args, derive_seed(rep, "score", r)
                )
            timings["score_s"] += time.perf_counter() - t0
            kept.append(folder)
            while len(kept) > members - 1:
                shutil.rmtree(kept.pop(0), ignore_errors=True)
            if strategy == "uncertainty":
                ranked.append(_round_signals(ranking, by_key))
            labeled += [s.key for s in ranking[: args.k]]
            model = next_model(model, [by_key[k] for k in sorted(labeled)], r)
            curve.append((len(labeled), evaluate(model)))
            print(f"{setting} seed {rep} {strategy:<11} labels {len(labeled):>3}  "
                  f"macro-F1 {curve[-1][1]:.3f}", flush=True)  # fmt: skip
        for folder in kept:
            shutil.rmtree(folder, ignore_errors=True)
        curves[strategy] = curve
        acquired[strategy] = labeled[: mix_at(args)]
    # the full-pool model after each round (warm start: the same schedule as the curves), to
    # tell a curve limited by labels from one limited by training steps
    reference = copy.deepcopy(init_model)
    full_curve = []
    for r in range(1 if not args.from_scratch else rounds, rounds + 1):
        reference = next_model(reference, pool, r)
        if not args.from_scratch and r < rounds and (args.full_curve or args.reference_only):
            full_curve.append((args.init + args.k * r, evaluate(reference)))
    full_f1 = evaluate(reference)
    full_curve.append((args.init + args.k * rounds, full_f1))
    print(f"{setting} seed {rep} full pool ({len(pool)}) macro-F1 {full_f1:.3f}", flush=True)
    target = 0.95 * full_f1
    needed = {s: labels_needed(curves[s], target, censored_as(args)) for s in curves}
    auc = {s: float(np.mean([f1 for _, f1 in curves[s]])) for s in curves}
    mix = {s: _composition(acquired[s], by_key) for s in curves}
    return {"setting": setting, "seed": rep, "full_f1": full_f1, "target": target,
            "curves": curves, "full_curve": full_curve, "labels_needed": needed, "curve_mean_f1": auc,
            "acquired": mix, "signals": ranked, "timings": timings,
            "pool": _composition([it["key"] for it in pool], by_key)}  # fmt: skip


def snapshot_rerank(ranking, previous: list[Path], unlabeled, args, seed: int) -> list:
    """The queue by a checkpoint ensemble: each study's u with its entropy taken of the mean of
    the current model's MC-mean probabilities and those of the `previous` rounds' models
    (MC-dropout, no TTA; the TTA term stays the current model's). Components
    `snapshot_entropy` and `snapshot_uncertainty`; foreground studies first."""
    probs = {s.key: [list(s.components["mc_mean_probabilities"].values())] for s in ranking}
    for folder in previous:
        scores = score_studies(folder, unlabeled, mc_samples=args.mc_samples, tta=False, seed=seed)
        for s in scores:
            probs[s.key].append(list(s.components["mc_mean_probabilities"].values()))
    for s in ranking:
        # the members' distributions as samples: the entropy of their mean, normalised
        h = class_uncertainty(np.array(probs[s.key]))["entropy"]
        s.components["snapshot_entropy"] = h
        s.components["snapshot_uncertainty"] = combined_uncertainty(
            h, s.components["tta_variance"], DEFAULT_TTA_WEIGHT
        )
    return sorted(ranking, key=lambda st: (
        not st.components["foreground"], -st.components["snapshot_uncertainty"]))  # fmt: skip


def _round_signals(ranking, by_key: dict) -> dict:
    """Each signal and whether the MC-mean prediction is wrong, for every scored study."""
    rows = {s: [] for s in SIGNALS}
    wrong, degraded, rank = [], [], []
    for s in ranking:
        it = by_key[s.key]
        mean = s.components["mc_mean_probabilities"]
        wrong.append(int(np.argmax([mean[g] for g in NAMES])) != it["label"])
        degraded.append(it["degraded"])
        rank.append(s.rank)
        for name in SIGNALS:
            rows[name].append(float(s.components.get(name) or 0.0))
    return {**rows, "wrong": wrong, "degraded": degraded, "rank": rank}


def _composition(keys: list[str], by_key: dict) -> dict:
    """Grades, degraded studies and repeats of a patient already in the list (in order)."""
    seen: set[str] = set()
    repeats = 0
    for k in keys:
        patient = by_key[k]["patient"]
        repeats += patient in seen
        seen.add(patient)
    labels = [by_key[k]["label"] for k in keys]
    return {"n": len(keys), "grades": [labels.count(i) for i in range(len(GRADES))],
            "degraded": sum(by_key[k]["degraded"] for k in keys), "same_patient": repeats}  # fmt: skip


def report(setting: str, results: list[dict], args) -> dict:
    """Print one setting's tables; return its summary."""
    names = strategies(args)
    short = {n: n.replace("uncertainty", "unc").replace("random", "rnd") for n in names}
    print(f"\n== {setting} pool ==")
    counts = [n for n, _ in results[0]["curves"]["random"]]
    # the full-pool model at the same round (same training steps), when measured
    full = [dict(r["full_curve"]) for r in results]
    print("mean (min-max) held-out macro-F1 over seeds by labeled count"
          + (" ('full': the whole pool labeled, same training steps)" if len(full[0]) > 1 else "")
          + ":")  # fmt: skip
    print(f"{'labels':>6}" + "".join(f"{short[n]:>22}" for n in names)
          + (f"{'full':>22}" if len(full[0]) > 1 else ""))  # fmt: skip
    for i, n in enumerate(counts):
        cells = []
        for s in names:
            v = [r["curves"][s][i][1] for r in results]
            cells.append(f"{np.mean(v):.3f} ({min(v):.3f}-{max(v):.3f})")
        if len(full[0]) > 1 and all(n in f for f in full):
            v = [f[n] for f in full]
            cells.append(f"{np.mean(v):.3f} ({min(v):.3f}-{max(v):.3f})")
        print(f"{n:>6}" + "".join(f"{c:>22}" for c in cells))
    print("per seed: labels to 95% of the full-pool macro-F1 (n95), mean macro-F1 over the "
          f"curve (AULC), the first {mix_at(args)} labels: grades 1/2/3, same-patient "
          "repeats, degraded")  # fmt: skip
    print(f"{'seed':>4} {'full F1':>8} {'target':>7}" + "".join(
        f" {short[n] + ' n95':>{max(8, len(short[n]) + 4)}}" for n in names) + "".join(
        f" {short[n] + ' AULC':>{max(9, len(short[n]) + 5)}}" for n in names) + "   acquired")  # fmt: skip
    for r in results:
        row = f"{r['seed']:>4} {r['full_f1']:>8.3f} {r['target']:>7.3f}"
        row += "".join(f" {_fmt_needed(r['labels_needed'][n], args):>{max(8, len(short[n]) + 4)}}"
                       for n in names)  # fmt: skip
        row += "".join(f" {r['curve_mean_f1'][n]:>{max(9, len(short[n]) + 5)}.3f}" for n in names)
        row += "   " + " | ".join(f"{short[n]} {_fmt_mix(r['acquired'][n])}" for n in names)
        print(row)
    needed = {s: [r["labels_needed"][s] for r in results] for s in names}
    mean = {s: float(np.mean(v)) for s, v in needed.items()}
    sd = {s: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for s, v in needed.items()}
    aulc = {s: float(np.mean([r["curve_mean_f1"][s] for r in results])) for s in names}
    ratio = {s: mean[s] / mean["random"] for s in names if s != "random"}
    print(f"labels to 95% of full-pool macro-F1, mean (sd) over {len(results)} seeds: " + ", ".join(
        f"{s} {mean[s]:.1f} ({sd[s]:.1f})" for s in names))  # fmt: skip
    censored = {s: sum(n > args.budget for n in v) for s, v in needed.items()}
    if any(censored.values()):
        print(f"  never within the budget ({args.budget}), counted as {censored_as(args)}: "
              + ", ".join(f"{s} {censored[s]} seeds" for s in names))  # fmt: skip
    for s in ratio:
        wins = sum(r["labels_needed"][s] < r["labels_needed"]["random"] for r in results)
        losses = sum(r["labels_needed"][s] > r["labels_needed"]["random"] for r in results)
        diff = [r["curve_mean_f1"][s] - r["curve_mean_f1"]["random"] for r in results]
        verdict = "met" if ratio[s] <= 0.7 else f"missed by {ratio[s] - 0.7:+.2f}"
        lo, hi = _ratio_interval(needed[s], needed["random"])
        print(f"ratio {s}/random = {ratio[s]:.2f} (paired bootstrap 95% interval over seeds "
              f"{lo:.2f}-{hi:.2f}; goal <= 0.70: {verdict}); fewer labels in "
              f"{wins}, more in {losses} of {len(results)} seeds; AULC {aulc[s]:.3f} vs "
              f"{aulc['random']:.3f}, paired difference {np.mean(diff):+.3f} "
              f"(min {min(diff):+.3f}, max {max(diff):+.3f})")  # fmt: skip
    # the crossing of the seed-mean curves (linear between points): less noisy than the mean
    # of per-seed first crossings, which a single lucky point decides
    target = 0.95 * float(np.mean([r["full_f1"] for r in results]))
    mean_curve = {s: (counts, [float(np.mean([r["curves"][s][i][1] for r in results]))
                               for i in range(len(counts))]) for s in names}  # fmt: skip
    crossing = {s: _interpolated_crossing(*mean_curve[s], target) for s in names}
    print(f"seed-mean curves reach 95% of the mean full-pool macro-F1 ({target:.3f}) at "
          + ", ".join(f"{s} {_fmt_crossing(crossing[s])}" for s in names)
          + "".join(f"; ratio {s}/random {crossing[s] / crossing['random']:.2f}"
                    for s in ratio if crossing[s] and crossing["random"]))  # fmt: skip
    signals = _signal_table(results)
    if signals:
        print("uncertainty signals over the unlabeled pool in every 'uncertainty' round: AUROC "
              "for 'MC-mean prediction wrong'" + (", mean rank percentile of degraded studies "
              "(0.5 = like the rest, 1 = top of the queue)" if setting == "clinical" else ""))  # fmt: skip
        for name, row in signals.items():
            extra = ""
            if row.get("degraded_percentile") is not None:
                extra = f", degraded {row['degraded_percentile']:.2f}"
            print(f"  {name:<13} AUROC {row['auroc']:.3f}{extra}")
    return {"mean_labels_needed": mean, "sd_labels_needed": sd, "ratio": ratio,
            "mean_curve_labels_needed": crossing,
            "curve_mean_f1": aulc, "signals": signals}  # fmt: skip


#: rounds of the whole-pool model after which it counts as trained (`reference_report`)
SETTLED_FROM = 5


def reference_only_problem(args: argparse.Namespace) -> str | None:
    """Why `--reference-only` cannot run with these flags (None: it can)."""
    if args.from_scratch:
        return "--reference-only measures the warm-start schedule; drop --from-scratch"
    if args.variants or args.variants_only:
        return "--reference-only runs no strategy; drop --variants and --variants-only"
    rounds = (args.budget - args.init) // args.k
    if rounds < SETTLED_FROM + 1:
        return (f"--reference-only needs at least {SETTLED_FROM + 1} rounds (its spread is "
                f"measured from round {SETTLED_FROM}); --budget {args.budget}, --init "
                f"{args.init} and --k {args.k} give {rounds}")  # fmt: skip
    return None


def report_for(args: argparse.Namespace):
    """The report of a run: the strategies' (`report`), or the whole-pool model's steadiness
    (`reference_report`) with `--reference-only`."""
    return reference_report if args.reference_only else report


def reference_report(setting: str, results: list[dict], args) -> dict:
    """How steady the whole-pool model is from round to round (`--reference-only`): with the
    same labels every round, any change of its macro-F1 is the fine-tuning schedule's noise,
    and a strategy's curve carries that noise too. Per seed: the first round within 95 % of
    its settled level, the settled level (mean from round `SETTLED_FROM`) and the spread
    around it (sd, and the mean absolute change between consecutive rounds)."""
    rows = []
    print(f"\n-- {setting}: the whole-pool model, round by round (ft-lr {args.ft_lr}, "
          f"{args.round_steps} steps per round) --")  # fmt: skip
    for r in results:
        f1 = np.array([v for _, v in r["full_curve"]])
        settled = f1[SETTLED_FROM - 1 :]
        level = float(settled.mean())
        first = int(np.argmax(f1 >= 0.95 * level)) + 1
        rows.append({"seed": r["seed"], "first_round": first, "level": level,
                     "sd": float(settled.std()), "step": float(np.abs(np.diff(settled)).mean()),
                     "min": float(settled.min())})  # fmt: skip
        print(f"seed {r['seed']}: within 95 % of its level at round {first}, level "
              f"{level:.3f}, sd {rows[-1]['sd']:.3f}, mean change {rows[-1]['step']:.3f}, "
              f"lowest {rows[-1]['min']:.3f}; " + " ".join(f"{v:.2f}" for v in f1))  # fmt: skip
    mean = {k: float(np.mean([row[k] for row in rows])) for k in
            ("first_round", "level", "sd", "step", "min")}  # fmt: skip
    print(f"mean over {len(rows)} seeds: round {mean['first_round']:.1f}, level "
          f"{mean['level']:.3f}, sd {mean['sd']:.3f}, mean change {mean['step']:.3f}, lowest "
          f"{mean['min']:.3f}")  # fmt: skip
    return {"seeds": rows, "mean": mean}


def _ratio_interval(
    needed: list[int], baseline: list[int], draws: int = 10_000
) -> tuple[float, float]:
    """2.5 and 97.5 percentiles of mean(needed) / mean(baseline) over seeds resampled in pairs."""
    rng = np.random.default_rng(0)
    a, b = np.asarray(needed, dtype=float), np.asarray(baseline, dtype=float)
    idx = rng.integers(0, len(a), (draws, len(a)))
    ratios = a[idx].mean(1) / b[idx].mean(1)
    return float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))


def _interpolated_crossing(counts: list[int], values: list[float], target: float) -> float | None:
    """Labeled count where the curve first reaches `target`, linear between points (None: never)."""
    for i, (n, v) in enumerate(zip(counts, values, strict=True)):
        if v >= target:
            if i == 0:
                return float(n)
            n0, v0 = counts[i - 1], values[i - 1]
            return float(n0 + (n - n0) * (target - v0) / (v - v0))
    return None


def _fmt_crossing(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}"


def _signal_table(results: list[dict]) -> dict:
    """AUROC of each signal for wrong predictions (mean over rounds with both kinds)."""
    out = {}
    rounds = [rd for r in results for rd in r["signals"]]
    if not rounds:
        return out
    for name in SIGNALS:
        aucs, pct = [], []
        for rd in rounds:
            score = np.asarray(rd[name])
            a = auroc(score, np.asarray(rd["wrong"], dtype=bool))
            if a is not None:
                aucs.append(a)
            deg = np.asarray(rd["degraded"], dtype=bool)
            if deg.any() and len(score) > 1:
                from scipy.stats import rankdata

                pct.extend((rankdata(score)[deg] - 1) / (len(score) - 1))
        out[name] = {"auroc": float(np.mean(aucs)) if aucs else float("nan"),
                     "degraded_percentile": float(np.mean(pct)) if pct else None}  # fmt: skip
    return out


def _fmt_needed(n: int, args) -> str:
    return f">{args.budget}" if n > args.budget else str(n)


def _fmt_mix(mix: dict) -> str:
    return f"{'/'.join(str(g) for g in mix['grades'])} {mix['same_patient']} {mix['degraded']}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="var/bench/active_learning")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="clinical,balanced")
    parser.add_argument("--seeds", type=int, default=5, help="repetitions per setting (>= 5)")
    parser.add_argument("--pool", type=int, default=48, help="pool studies per seed")
    parser.add_argument("--test", type=int, default=300, help="held-out test studies")
    parser.add_argument(
        "--eval-set", choices=sorted(EVAL_SETS), default="test",
        help="held-out set the curves are measured on: 'validation' for method choices",
    )  # fmt: skip
    parser.add_argument("--init", type=int, default=3, help="initially labeled studies")
    parser.add_argument("--k", type=int, default=1, help="studies acquired per round")
    parser.add_argument("--budget", type=int, default=30, help="labels at the last round")
    parser.add_argument("--seed-offset", type=int, default=0, help="first seed (dev runs: 100)")
    parser.add_argument(
        "--seed-list", default="",
        help="these seeds (comma-separated) instead of --seeds from --seed-offset, e.g. the "
        "seeds whose initial labels hold one grade",
    )  # fmt: skip
    parser.add_argument(
        "--variants", default="", help=f"extra uncertainty variants: {', '.join(VARIANTS)}"
    )
    parser.add_argument(
        "--variants-only", action="store_true",
        help="run the variants and random, not the default uncertainty (seen in an earlier run)",
    )  # fmt: skip
    parser.add_argument("--shape", default="32,32,32", help="phantom matrix")
    parser.add_argument("--spatial-size", default="24,24,24", help="model grid")
    parser.add_argument("--block-inplanes", default="8,16,32,32", help="ResNet widths")
    parser.add_argument(
        "--head-dropout", type=float, default=0.0,
        help="dropout the network trains with in front of its head (MC-dropout then samples "
        "it, 'native'); 0: none, and scoring injects p=0.2 there (last-layer MC-dropout)",
    )  # fmt: skip
    parser.add_argument("--init-steps", type=int, default=100, help="round-0 steps from init")
    parser.add_argument("--round-steps", type=int, default=40, help="fine-tune steps per round")
    parser.add_argument("--from-scratch", action="store_true", help="retrain every round")
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3, help="round-0 learning rate")
    parser.add_argument("--ft-lr", type=float, default=3e-3, help="fine-tune learning rate")
    parser.add_argument("--focal-gamma", type=float, default=2.0)
    parser.add_argument("--mc-samples", type=int, default=8)
    parser.add_argument(
        "--diversity", type=float, help="diversity weight of 'uncertainty' (default: the library's)"
    )
    parser.add_argument(
        "--full-curve", action="store_true", help="evaluate the full-pool model every round"
    )
    parser.add_argument(
        "--reference-only", action="store_true",
        help="no strategies: train the whole-pool model round after round and report how steady "
        "it is (choosing a fine-tuning schedule without looking at the strategies)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="RESULTS_JSON",
        help="no run: report the seeds of these runs' results.json together (runs of other "
        "seeds with the same settings, e.g. one per core)",
    )
    args = parser.parse_args()
    if args.merge:
        return merge_reports(args.merge)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown or not settings:
        parser.error(f"--settings: choose among {', '.join(SETTINGS)}, got {args.settings!r}")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if set(args.variants) - set(VARIANTS):
        parser.error(f"--variants: choose among {', '.join(VARIANTS)}, got {args.variants}")
    try:
        args.seed_list = [int(v) for v in args.seed_list.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--seed-list: comma-separated integers, got {args.seed_list!r}")
    if len(set(args.seed_list)) != len(args.seed_list) or any(v < 0 for v in args.seed_list):
        parser.error(f"--seed-list: distinct seeds >= 0, got {args.seed_list}")
    if not 0 < args.init < args.budget <= args.pool or args.k < 1:
        parser.error("need 0 < --init < --budget <= --pool and --k >= 1")
    if not 0.0 <= args.head_dropout < 1.0:
        parser.error(f"--head-dropout must be in [0, 1), got {args.head_dropout}")
    if args.reference_only:
        problem = reference_only_problem(args)
        if problem:
            parser.error(problem)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    config = grading_config(args)
    shape = tuple(int(v) for v in args.shape.split(","))
    # validation phantoms (seeds 800000+) for method choices on the development seeds; the
    # held-out test phantoms (900000+) only for the reported figures
    test = balanced_pool(EVAL_SETS[args.eval_set], args.test, shape)
    for it in test:
        it["image"] = torch.from_numpy(preprocess(it["volume"], config.spatial_size).image)
        del it["volume"]
    seeds = args.seed_list or list(range(args.seed_offset, args.seed_offset + args.seeds))
    args.seeds = len(seeds)
    results = {s: [run_seed(s, rep, args, config, test, out) for rep in seeds] for s in settings}

    print("\n== Active learning on brain-MRI phantoms (tumor grading, macro-F1 on held-out) ==")
    mode = (f"from scratch ({args.init_steps} steps) each round" if args.from_scratch else
            f"warm start: {args.init_steps} steps at round 0, +{args.round_steps} per round")  # fmt: skip
    print(f"pool {args.pool}/seed, test {args.test} balanced (phantom seeds 900000+), init "
          f"{args.init}, k {args.k}, budget {args.budget}, {args.seeds} seeds, grid "
          f"{config.spatial_size}, {mode}, mc_samples {args.mc_samples}, diversity "
          f"{DEFAULT_DIVERSITY_WEIGHT if args.diversity is None else args.diversity}, threads "
          f"{args.threads}; eval set {args.eval_set}")  # fmt: skip
    # the grading presets can change under this bench: say which network was measured
    print(f"network {config.network} {config.build_kwargs()}")
    print("clinical (primary): grades 60/30/10 %, 1-3 studies per patient (0.60/0.25/0.15; "
          "repeats re-acquired), 8 % degraded (heavy noise); balanced: distinct phantoms, grades "
          "in turn, clean")  # fmt: skip
    summary = {s: report_for(args)(s, results[s], args) for s in settings}
    total = time.perf_counter() - t_start
    print(f"\ntotal {total:.0f} s (" + ", ".join(
        f"{k} {sum(r['timings'][k] for rs in results.values() for r in rs):.0f} s"
        for k in ("train_s", "score_s", "eval_s")) + ")")  # fmt: skip
    (out / "results.json").write_text(
        json.dumps(
            {"args": vars(args), "results": results, "summary": summary, "total_s": total}, indent=1
        )
    )
    return 0


# flags that change what a seed's figures mean: merged runs must agree on them
_SAME = ("pool", "test", "init", "k", "budget", "eval_set", "shape", "spatial_size",
         "block_inplanes", "head_dropout", "init_steps", "round_steps", "from_scratch",
         "steps_per_epoch", "batch_size", "lr", "ft_lr", "focal_gamma", "mc_samples",
         "diversity", "variants", "reference_only")  # fmt: skip


def merge_reports(paths: list[str]) -> int:
    """Print the report of several runs' seeds together (`--merge`); exit 2 when the runs
    differ in a setting that matters, share a seed or a file is missing."""
    runs = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            print(f"error: {path}: no such results file", file=sys.stderr)
            return 2
        run = json.loads(p.read_text())
        # results written before a flag existed ran with its default
        run["args"].setdefault("reference_only", False)
        run["args"].setdefault("head_dropout", 0.0)
        runs.append(run)
    first = runs[0]["args"]
    for path, run in zip(paths[1:], runs[1:], strict=True):
        differ = [k for k in _SAME if run["args"].get(k) != first.get(k)]
        if differ:
            print(f"error: {path} differs from {paths[0]} in {', '.join(differ)}", file=sys.stderr)
            return 2
    args = argparse.Namespace(**first)
    merged: dict[str, list[dict]] = {}
    for run in runs:
        for setting, results in run["results"].items():
            merged.setdefault(setting, []).extend(results)
    for setting, results in merged.items():
        seeds = [r["seed"] for r in results]
        if len(set(seeds)) != len(seeds):
            print(
                f"error: the runs share seeds of the {setting} pool: {sorted(seeds)}",
                file=sys.stderr,
            )
            return 2
        results.sort(key=lambda r: r["seed"])
    args.seeds = max(len(v) for v in merged.values())
    print(f"== merged: {len(runs)} runs, seeds " + ", ".join(
        f"{s} {[r['seed'] for r in v]}" for s, v in merged.items()) + " ==")  # fmt: skip
    for setting, results in merged.items():
        report_for(args)(setting, results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
