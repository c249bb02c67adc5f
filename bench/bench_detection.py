"""Benchmark of the lung-nodule detector: train on phantom CTs, evaluate FROC on a held-out
phantom set (other seeds), time inference on one CT-sized scan (512 x 512 x 300) on the CPU
(and the GPU when there is one). Prints a table of figures against the goals:

    CPM on held-out phantoms       >= 0.90
    CPU inference, 512x512x300     <= 60 s  (2 threads)
    pointing game (Grad-CAM of the FP classifier on true-positive findings)  >= 0.90

Usage:
    .venv/bin/python bench/bench_detection.py [--work /tmp/bench_detection] [--threads 2]

Scans are generated once into --work and reused; the model folder is --work/model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ai_engine.data.datalist import load_datalist, write_datalist  # noqa: E402
from ai_engine.data.phantoms import chest_ct_datasets, make_chest_ct  # noqa: E402
from ai_engine.detection.cli import FLIP_CHOICES  # noqa: E402
from ai_engine.detection.config import DetectionConfig  # noqa: E402
from ai_engine.detection.ensemble import ensemble_detector  # noqa: E402
from ai_engine.detection.evaluate import evaluate_detector, write_metrics  # noqa: E402
from ai_engine.detection.explain import pointing_game_detection  # noqa: E402
from ai_engine.detection.pipeline import NoduleDetector, findings_on_source  # noqa: E402
from ai_engine.detection.train import DetectionTrainOptions, train_detector  # noqa: E402
from ai_engine.detection.transforms import load_ct  # noqa: E402
from ai_engine.evaluation.froc import froc  # noqa: E402
from ai_engine.io.dicom_write import write_datasets  # noqa: E402
from ai_engine.io.volume import Volume  # noqa: E402

#: the earlier test sets (the first scans of today's: seeds 9000-9011 in sessions 1-6, 9000-9047
#: in sessions 7-17), each reported apart for comparison
EARLIER_TEST_SETS = ((12, "until session 7"), (48, "until session 18"))


def make_split(
    root: Path,
    name: str,
    seeds: list[int],
    shape: tuple[int, int, int],
    n_nodules: int | None = None,
) -> list[dict]:
    """Phantom scans as DICOM series under root/name (reused when already there).

    `n_nodules` fixes the count (the validation scans get 3 each, so that the CPM that selects
    the best epoch rests on enough nodules); None draws it (0-6) as the phantom generator does.
    """
    items = []
    for seed in seeds:
        case = root / name / f"ct_{seed:05d}"
        meta = root / name / f"ct_{seed:05d}.nodules.json"  # beside, not inside, the series
        if not meta.is_file():
            shutil.rmtree(case, ignore_errors=True)  # a half-written case from an interrupted run
            volume, nodules = make_chest_ct(seed, shape=shape, n_nodules=n_nodules)
            write_datasets(chest_ct_datasets(volume, seed), case)
            meta.write_text(json.dumps(nodules))
        nodules = json.loads(meta.read_text())
        items.append(
            {
                # absolute: the datalist reads a relative path against its own folder, so a
                # relative --work would be doubled
                "image": str(case.resolve()),
                "nodules": [{k: n[k] for k in ("center_lps_mm", "diameter_mm")} for n in nodules],
            }
        )
    return items


def ct_sized_volume(seed: int, shape: tuple[int, int, int]) -> Volume:
    """A phantom of CT size placed on a realistic grid (0.7 x 0.7 x 1.25 mm, ~358 x 358 x 375 mm)."""
    volume, _ = make_chest_ct(seed, shape=shape)
    affine = np.diag([0.7, 0.7, 1.25, 1.0])
    affine[:3, 3] = [-(shape[0] - 1) * 0.35, -(shape[1] - 1) * 0.35, -400.0]
    return Volume(volume.array, affine, {"modality": "CT"})


def blob_filter_baseline(detector: NoduleDetector, items: list[dict]) -> dict | None:
    """FROC of the blob channel alone (no learning): the pipeline's blob candidates
    (`add_blob_candidates`, 64 per scan) scored by their peak response. None when the model
    has no blob channel."""
    from ai_engine.detection.candidates import add_blob_candidates
    from ai_engine.transforms import voxel_to_lps_mm

    if not detector.config.blob_sigmas_mm:
        return None
    points = []
    for item in items:
        image = detector.preprocess(item["image"])
        ct, blob = image[0].numpy(), image[1].numpy()
        spacing = np.linalg.norm(np.asarray(image.affine, dtype=np.float64)[:3, :3], axis=0)
        empty = np.zeros(blob.shape, np.int32)
        # scored by the response itself: it stands in for the U-Net's probability
        cands, _ = add_blob_candidates(
            [], empty, blob, ct > detector.body_level(), blob, spacing, 64
        )
        centers = np.array([c.center_voxel for c in cands]).reshape(-1, 3)
        centers_mm = voxel_to_lps_mm(image, centers) if len(cands) else np.zeros((0, 3))
        points.append(
            [
                {"center_lps_mm": c.tolist(), "score": cand.prob}
                for c, cand in zip(centers_mm, cands, strict=True)
            ]
        )
    return froc(points, [item["nodules"] for item in items]).to_metrics()


def place_of(hu: float, air_share: float, radii_to_nodule: float) -> str:
    """Where a false positive lies, from its centre's HU, the share of aerated lung (< -500
    HU) within 10 mm of it, and its distance to the nearest nodule in that nodule's radii."""
    if radii_to_nodule <= 2.0:
        return "beside a nodule (<= 2 radii)"
    if hu >= 300.0:
        return "bone"
    if hu < -300.0:
        return "aerated lung (no structure)"
    if air_share > 0.3:
        return "in the lung (vessel-like)"
    return "lung wall / mediastinum"


def false_positive_anatomy(scans: list[tuple[list, Volume, list[dict]]], top: int) -> dict:
    """The detections that hit no nodule, highest score first, each with its place
    (`place_of`), and the places counted among the `top` highest (with `top` = the number of
    scans: those above the 1-FP-per-scan operating point) and among all."""
    rows = []
    for detections, source, nodules in scans:
        centers = np.array([n["center_lps_mm"] for n in nodules], dtype=np.float64).reshape(-1, 3)
        radii = np.array([float(n["diameter_mm"]) / 2.0 for n in nodules])
        inverse = np.linalg.inv(np.asarray(source.affine, dtype=np.float64))
        spacing = np.linalg.norm(np.asarray(source.affine, dtype=np.float64)[:3, :3], axis=0)
        reach = np.maximum(np.rint(10.0 / spacing).astype(int), 1)
        for det in detections:
            c = np.asarray(det.center_lps_mm, dtype=np.float64)
            near = np.inf
            if len(nodules):
                dist = np.linalg.norm(centers - c, axis=1)
                if (dist <= radii).any():
                    continue
                near = float((dist / radii).min())
            ijk = np.rint((inverse @ np.append(c, 1.0))[:3]).astype(int)
            ijk = np.clip(ijk, 0, np.array(source.array.shape) - 1)
            core = source.array[tuple(slice(max(i - 1, 0), i + 2) for i in ijk)]
            ball = source.array[
                tuple(slice(max(i - r, 0), i + r + 1) for i, r in zip(ijk, reach, strict=True))
            ]
            hu, air = float(np.median(core)), float((ball < -500.0).mean())
            rows.append(
                {
                    "score": float(det.score),
                    "p_candidate": float(det.prob_candidate),
                    "p_classifier": None
                    if det.prob_classifier is None
                    else float(det.prob_classifier),
                    "diameter_mm": float(det.diameter_mm),
                    "hu": hu,
                    "air_share": air,
                    "radii_to_nodule": near,
                    "place": place_of(hu, air, near),
                }
            )
    rows.sort(key=lambda r: -r["score"])

    def counted(subset: list[dict]) -> dict[str, int]:
        places: dict[str, int] = {}
        for r in subset:
            places[r["place"]] = places.get(r["place"], 0) + 1
        return dict(sorted(places.items(), key=lambda kv: -kv[1]))

    return {"top": rows[:top], "top_places": counted(rows[:top]), "all_places": counted(rows)}


def time_inference(
    model: Path, volume: Volume, device: str, repeats: int = 1
) -> tuple[float, dict]:
    detector = NoduleDetector.from_model_folder(model, device=device)
    best, timings = float("inf"), {}
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = detector.detect(volume)
        findings_on_source(result, volume, detector.config.finding_threshold)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        if elapsed < best:
            best, timings = elapsed, dict(result.timings)
    return best, timings


def build_parser() -> argparse.ArgumentParser:
    """The bench's flags (defaults: the figures reported in docs/ai_engine.md)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default="/tmp/bench_detection")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=48)
    parser.add_argument("--n-val", type=int, default=16)
    parser.add_argument(
        "--n-test",
        type=int,
        default=192,
        help="held-out scans (12 until session 7: 1/8 FP per scan was then 1.5 FPs in all; 48 "
        "until session 18: two sets of 48 phantoms gave one model CPMs 0.04 apart)",
    )
    parser.add_argument(
        "--n-calibration",
        type=int,
        default=192,
        help="labelled scans (seeds 5000+) neither network trains on, on whose candidates the "
        "rescoring is fitted with the training scans' (0: the training scans' alone, the bench "
        "until session 18)",
    )
    parser.add_argument(
        "--shape", default="160,160,64", help="phantom matrix of the train/test scans"
    )
    parser.add_argument(
        "--ct-shape", default="512,512,300", help="matrix of the timed CT-sized scan"
    )
    parser.add_argument("--epochs", type=int, default=48)
    parser.add_argument(
        "--patience",
        type=int,
        default=48,
        help="epochs without validation-CPM gain before stopping",
    )
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4, help="U-Net patches per step")
    parser.add_argument("--fp-epochs", type=int, default=20)
    parser.add_argument("--fp-steps-per-epoch", type=int, default=40)
    parser.add_argument("--fp-batch-size", type=int, default=16)
    parser.add_argument("--fp-channels", default="8,16,32,32", help="classifier stage widths")
    parser.add_argument(
        "--unet-channels",
        default=",".join(str(c) for c in DetectionConfig().unet_channels),
        help="U-Net feature maps per level (default: the library's)",
    )
    parser.add_argument("--lr", type=float, default=1e-2, help="U-Net peak learning rate")
    parser.add_argument("--fp-lr", type=float, default=1e-3, help="classifier peak learning rate")
    parser.add_argument(
        "--spacing",
        type=float,
        default=1.0,
        help="resampling spacing, mm (1.5 until session 9: CPM 0.821 against 0.86 at 1 mm)",
    )
    parser.add_argument(
        "--test-time-flips",
        choices=FLIP_CHOICES,
        default="off",
        help="the U-Net's flipped passes: chosen on validation, or fixed (off: at 1 mm they "
        "take the CT-sized scan from ~50 s to ~64 s, over the 60 s goal)",
    )
    parser.add_argument("--patch", type=int, default=32, help="U-Net training patch edge")
    parser.add_argument(
        "--norm", default="instance", choices=["instance", "batch"], help="U-Net normalisation"
    )
    parser.add_argument("--pos-neg", default="1,1", help="nodule:background U-Net patches")
    parser.add_argument(
        "--label-min-diameter",
        type=float,
        default=6.0,
        help="U-Net target spheres are at least this wide (mm)",
    )
    parser.add_argument(
        "--dice",
        default="patch",
        choices=["patch", "batch"],
        help="U-Net Dice per patch (each nodule-centred patch weighs the same) or over the batch",
    )
    parser.add_argument(
        "--hard-fraction",
        type=float,
        default=0.5,
        help="share of background U-Net patches centred on soft tissue beside the lung",
    )
    parser.add_argument(
        "--mine-negatives-from",
        type=int,
        default=None,
        help="online hard-negative mining of the U-Net from this epoch (default: off)",
    )
    parser.add_argument(
        "--mine-negatives-every", type=int, default=4, help="epochs between minings"
    )
    parser.add_argument(
        "--mined-negative-fraction",
        type=float,
        default=1 / 3,
        help="share of background U-Net patches centred on its mined false positives",
    )
    parser.add_argument(
        "--peak-distance",
        type=float,
        default=3.0,
        help="local-maximum window of the candidates while stage 1 validates, mm (0: connected "
        "components); after stage 1, 0 or 3 mm is chosen on validation",
    )
    parser.add_argument("--fp-patch", type=int, default=24, help="classifier patch edge")
    parser.add_argument(
        "--plain-classifier",
        action="store_true",
        help="the plain 3D ResNet as classifier instead of the gated one",
    )
    parser.add_argument(
        "--fp-gate-weight",
        type=float,
        default=1.0,
        help="weight of the gated classifier's nodule-mask loss (0: the gate learns freely)",
    )
    parser.add_argument(
        "--fp-focal-gamma",
        type=float,
        default=2.0,
        help="focusing parameter of the classifier's focal loss (0: binary cross-entropy)",
    )
    parser.add_argument(
        "--fp-cutmix", type=float, default=0.3, help="share of classifier batches CutMixed"
    )
    parser.add_argument(
        "--fp-crop-jitter", type=int, default=4, help="classifier patch offset in training, voxels"
    )
    parser.add_argument(
        "--small-nodule-weight",
        type=int,
        default=1,
        help="U-Net positive patches on nodules under 7 mm (target spheres), times those on the "
        "others in a scan (1: the same)",
    )
    parser.add_argument(
        "--paste-copies",
        type=int,
        default=0,
        help="copies of each training scan with training nodules pasted beside vessels (0: off)",
    )
    parser.add_argument(
        "--paste-per-scan", type=int, default=4, help="nodules pasted into each copy"
    )
    parser.add_argument(
        "--rescore-degree",
        type=int,
        choices=[1, 2],
        default=2,
        help="terms of the rescoring: 2, the features with their squares and pairwise products "
        "(session 19); 1, the features alone",
    )
    parser.add_argument(
        "--no-rescore",
        action="store_true",
        help="no rescoring of the candidates (session 12; the score is then the fixed "
        "combination chosen on validation, as before)",
    )
    parser.add_argument(
        "--ema",
        type=float,
        default=None,
        metavar="DECAY",
        help="validate and keep a moving average of each stage's weights (e.g. 0.99; off)",
    )
    parser.add_argument(
        "--fp-hard-fraction",
        type=float,
        default=0.0,
        help="share of the classifier's negatives made of (repeated) mined false positives of "
        "U-Net probability >= 0.5",
    )
    parser.add_argument(
        "--blob-candidates",
        type=int,
        default=DetectionConfig.blob_candidates,
        help="blob-channel maxima per scan added to the U-Net's candidates",
    )
    parser.add_argument(
        "--fine-blob-candidates",
        type=int,
        default=DetectionConfig.fine_blob_candidates,
        help="maxima per scan of the fine (0.75 mm) dot filter added for the rescoring to score "
        "(0: none, the bench before session 18)",
    )
    parser.add_argument("--roi", type=int, default=64, help="sliding-window ROI at inference")
    parser.add_argument("--overlap", type=float, default=0.125)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ensemble",
        type=int,
        default=1,
        metavar="N",
        help="train N models (seeds --seed ... --seed + N - 1, into --work/members/seedS, each "
        "reused when there unless --retrain) and combine them into --work/model "
        "(`detection ensemble`); 1: one model",
    )
    parser.add_argument("--retrain", action="store_true", help="train even if --work/model exists")
    parser.add_argument(
        "--candidates-from",
        help="a detection model folder whose U-Net is kept: train (into --work/model) only the "
        "classifier",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted training in --work/model"
    )
    return parser


def training_setup(args: argparse.Namespace) -> tuple[DetectionConfig, DetectionTrainOptions]:
    """The detector configuration and training options the bench's flags ask for."""
    config = DetectionConfig(
        spacing_mm=(args.spacing,) * 3,
        patch_size=(args.patch,) * 3,
        unet_norm=args.norm,
        sw_roi_size=(args.roi,) * 3,
        sw_overlap=args.overlap,
        fp_patch_size=args.fp_patch,
        fp_channels=tuple(int(v) for v in args.fp_channels.split(",")),
        unet_channels=tuple(int(v) for v in args.unet_channels.split(",")),
        candidate_peak_distance_mm=args.peak_distance,
        blob_candidates=args.blob_candidates,
        fine_blob_candidates=args.fine_blob_candidates,
        fp_gate=not args.plain_classifier,
        test_time_flips=args.test_time_flips == "on",
    )
    opts = DetectionTrainOptions(
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        fp_epochs=args.fp_epochs,
        fp_steps_per_epoch=args.fp_steps_per_epoch,
        batch_size=args.batch_size,
        fp_batch_size=args.fp_batch_size,
        lr=args.lr,
        fp_lr=args.fp_lr,
        elastic_prob=0.05,
        early_stopping_patience=args.patience,
        pos_neg=tuple(int(v) for v in args.pos_neg.split(",")),
        label_min_diameter_mm=args.label_min_diameter,
        batch_dice=args.dice == "batch",
        hard_negative_fraction=args.hard_fraction,
        mine_negatives_from=args.mine_negatives_from,
        mine_negatives_every=args.mine_negatives_every,
        mined_negative_fraction=args.mined_negative_fraction,
        candidates_from=args.candidates_from,
        fp_hard_fraction=args.fp_hard_fraction,
        fp_gate_weight=args.fp_gate_weight,
        fp_focal_gamma=args.fp_focal_gamma,
        try_test_time_flips=args.test_time_flips == "search",
        fp_cutmix_prob=args.fp_cutmix,
        fp_crop_jitter=args.fp_crop_jitter,
        ema_decay=args.ema,
        small_nodule_weight=args.small_nodule_weight,
        paste_copies=args.paste_copies,
        paste_per_scan=args.paste_per_scan,
        rescore=not args.no_rescore,
        rescore_degree=args.rescore_degree,
        resume=args.resume,
        seed=args.seed,
        progress=False,
    )
    return config, opts


def main() -> int:
    parser = build_parser()
    args = parser.parse_args()
    if args.ensemble < 1:
        parser.error(f"--ensemble must be 1 (one model) or more, got {args.ensemble}")
    if args.n_calibration < 0:
        parser.error(f"--n-calibration must be >= 0, got {args.n_calibration}")
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    shape = tuple(int(v) for v in args.shape.split(","))
    ct_shape = tuple(int(v) for v in args.ct_shape.split(","))
    rows: list[tuple[str, str, str]] = []

    t0 = time.perf_counter()
    train = make_split(work, "train", list(range(1000, 1000 + args.n_train)), shape)
    val = make_split(work, "val", list(range(3000, 3000 + args.n_val)), shape, n_nodules=3)
    test = make_split(work, "test", list(range(9000, 9000 + args.n_test)), shape)
    calibration = make_split(
        work, "calibration", list(range(5000, 5000 + args.n_calibration)), shape
    )
    datalist = write_datalist(
        {"training": train, "validation": val, "testing": test, "calibration": calibration},
        work / "datalist.json",
    )
    t_data = time.perf_counter() - t0
    n_nod = sum(len(x["nodules"]) for x in test)
    print(
        f"data: {len(train)} train / {len(val)} val / {len(test)} test / {len(calibration)} "
        f"calibration scans ({n_nod} test nodules) in {t_data:.0f} s",
        flush=True,
    )

    model = work / "model"
    config, opts = training_setup(args)
    t_train = float("nan")
    if args.retrain or not (model / "model.json").is_file():
        t0 = time.perf_counter()
        if args.ensemble > 1:
            members = []
            for seed in range(args.seed, args.seed + args.ensemble):
                member = work / "members" / f"seed{seed}"
                if args.retrain or not (member / "model.json").is_file():
                    train_detector(
                        load_datalist(datalist), member, config, replace(opts, seed=seed)
                    )
                members.append(member)
            ensemble_detector(members, load_datalist(datalist), model, opts)
        else:
            train_detector(load_datalist(datalist), model, config, opts)
        t_train = time.perf_counter() - t0

    t0 = time.perf_counter()
    detector = NoduleDetector.from_model_folder(model)
    test_items = load_datalist(datalist)["testing"]
    metrics = evaluate_detector(detector, test_items)
    write_metrics(metrics, work / "metrics_test.json", title="held-out phantoms")
    cand = evaluate_detector(detector, test_items, use_classifier=False)
    t_eval = time.perf_counter() - t0
    baseline = blob_filter_baseline(detector, test_items)

    # Pointing game: Grad-CAM of the FP classifier on each true-positive finding (score >= the
    # model's finding threshold), placed on the source grid; a hit when its maximum lies inside
    # the nodule.
    t0 = time.perf_counter()
    n_tp = n_point = 0
    n_candidates, n_findings = [], []
    scans = []
    for item in test_items:
        source = load_ct(item["image"])
        result = detector.detect(source)
        scans.append((result.detections, source, item["nodules"]))
        findings, _ = findings_on_source(result, source, detector.config.finding_threshold)
        n_candidates.append(len(result.detections))
        n_findings.append(len(findings))
        game = pointing_game_detection(
            detector, source, findings, item["nodules"], image=result.image
        )
        n_tp += game["n_true_positive"]
        n_point += game["n_hit"]
    t_point = time.perf_counter() - t0

    anatomy = false_positive_anatomy(scans, top=len(test_items))
    earlier = [
        (
            n,
            until,
            froc(
                [[d.as_point() for d in dets] for dets, _, _ in scans[:n]],
                [nodules for _, _, nodules in scans[:n]],
            ),
        )
        for n, until in EARLIER_TEST_SETS
        if n < len(test_items)
    ]
    del scans

    volume = ct_sized_volume(4242, ct_shape)
    cpu_s, cpu_t = time_inference(model, volume, "cpu")
    gpu = "n/a (no CUDA device)"
    if torch.cuda.is_available():
        gpu_s, _ = time_inference(model, volume, "cuda", repeats=3)
        gpu = f"{gpu_s:.2f} s ({torch.cuda.get_device_name(0)})"

    rows.append(("CPM, held-out phantoms (detector)", f"{metrics['cpm']:.3f}", ">= 0.90"))
    for k, v in metrics["sensitivity"].items():
        rows.append((f"  sensitivity @ {k} FP/scan", f"{v:.3f}", ""))
    for n, until, first in earlier:
        rows.append(
            (
                f"CPM, the first {n} test scans (the test set {until})",
                f"{first.cpm:.3f} ({first.n_nodules} nodules)",
                "",
            )
        )
    for size, sub in metrics["by_size"].items():
        sens = sub["sensitivity"]
        rows.append(
            (
                f"  {size} mm: CPM; sensitivity @ 1/8, 1, 8 FP/scan; hit at all",
                f"{sub['cpm']:.3f}; {sens['0.125']:.2f}, {sens['1']:.2f}, {sens['8']:.2f}; "
                f"{sub['n_hit']}/{sub['n_nodules']}",
                "",
            )
        )
    rows.append(("CPM, candidates only (no FP reduction)", f"{cand['cpm']:.3f}", ""))
    if baseline is not None:
        rows.append(
            (
                "CPM, blob filter alone (baseline: no learning, its candidates)",
                f"{baseline['cpm']:.3f} ({baseline['n_hit']}/{baseline['n_nodules']} hit)",
                "",
            )
        )
    rows.append(
        (
            "pointing game, true-positive findings",
            f"{n_point / n_tp:.3f} ({n_point}/{n_tp})" if n_tp else "n/a (no TP finding)",
            ">= 0.90",
        )
    )
    rows.append(
        (
            "candidate threshold (chosen on validation) / finding threshold",
            f"{detector.config.candidate_threshold:g} / {detector.config.finding_threshold:g}",
            "",
        )
    )
    rows.append(
        (
            "candidates / findings per test scan (mean, max)",
            f"{np.mean(n_candidates):.1f}, {max(n_candidates)} / "
            f"{np.mean(n_findings):.1f}, {max(n_findings)}",
            "",
        )
    )
    rows.append(
        (
            "candidate peak distance / test-time flips (chosen on validation)",
            f"{detector.config.candidate_peak_distance_mm:g} mm / {detector.config.test_time_flips}",
            "",
        )
    )
    rows.append(
        (
            "score combination / blob candidates / classifier flips (chosen on validation)",
            f"{detector.config.combine} / {detector.config.blob_candidates} / "
            f"{detector.config.fp_test_time_flips}",
            "",
        )
    )
    rows.append(("test scans / nodules", f"{metrics['n_images']} / {metrics['n_nodules']}", ""))
    rows.append(
        (
            "nodules hit / false positives (all kept)",
            f"{metrics['n_hit']} / {metrics['n_false_positives']}",
            "",
        )
    )
    rows.append(
        (
            "training time (both stages)",
            f"{t_train:.0f} s" if t_train == t_train else "reused model",
            "",
        )
    )
    rows.append(("evaluation time (2 passes)", f"{t_eval:.0f} s", ""))
    rows.append(("pointing-game time (detect + Grad-CAM)", f"{t_point:.0f} s", ""))
    rows.append(
        (
            f"CPU inference {'x'.join(map(str, ct_shape))}, {args.threads} threads",
            f"{cpu_s:.1f} s",
            "<= 60 s",
        )
    )
    rows.append(("  of which", ", ".join(f"{k} {v:.1f}" for k, v in cpu_t.items()), ""))
    rows.append(("GPU inference (same scan)", gpu, ""))
    rows.append(
        (
            "spacing / patch / overlap / U-Net norm",
            f"{args.spacing} mm / {args.patch}^3 / {args.overlap} / {args.norm}",
            "",
        )
    )
    rows.append(
        (
            "U-Net Dice / hard-negative share of background patches",
            f"{args.dice} / {args.hard_fraction:g}",
            "",
        )
    )
    rows.append(
        (
            "U-Net hard-negative mining (from epoch, every, share of background)",
            "off"
            if args.mine_negatives_from is None
            else f"{args.mine_negatives_from}, {args.mine_negatives_every}, {args.mined_negative_fraction:.2f}",
            "",
        )
    )

    rows.append(
        (
            f"false positives by place, top {len(test_items)} (1 per scan) / all",
            "; ".join(f"{k} {v}" for k, v in anatomy["top_places"].items())
            + " / "
            + "; ".join(f"{k} {v}" for k, v in anatomy["all_places"].items()),
            "",
        )
    )
    print(f"\nthe {len(anatomy['top'])} highest-scoring false positives on the test scans:")
    print("score  p_cand  p_cls  diam mm    HU  air share  radii to nodule  place")
    for r in anatomy["top"]:
        p_cls = "  n/a" if r["p_classifier"] is None else f"{r['p_classifier']:.3f}"
        print(
            f"{r['score']:.3f}  {r['p_candidate']:.3f}  {p_cls}  {r['diameter_mm']:7.1f} "
            f"{r['hu']:5.0f}  {r['air_share']:9.2f}  {r['radii_to_nodule']:15.1f}  {r['place']}"
        )

    width = max(len(r[0]) for r in rows)
    print("\n| figure".ljust(width + 3) + "| value | goal |")
    print("|" + "-" * (width + 2) + "|---|---|")
    for name, value, goal in rows:
        print(f"| {name.ljust(width)} | {value} | {goal} |")
    (work / "bench_figures.json").write_text(
        json.dumps({"rows": rows, "false_positives": anatomy}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
