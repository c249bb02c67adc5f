"""`python -m ai_engine detection {train,evaluate,predict}`: lung-nodule detection on CT."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ai_engine.detection.config import DetectionConfig
from ai_engine.errors import InputError

#: `train --test-time-flips` / `--fp-test-time-flips`: chosen on validation, or fixed
FLIP_CHOICES = ("search", "on", "off")


def _triple(text: str, kind: type = float) -> tuple:
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(
            f"expected one or three comma-separated numbers, got {text!r}"
        )
    try:
        return tuple(kind(p) for p in parts)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _scales(text: str) -> tuple[float, ...]:
    if text.strip().lower() in {"", "none", "off"}:
        return ()
    try:
        return tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser(prog: str) -> argparse.ArgumentParser:
    """Sub-commands train, ensemble, evaluate, predict."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Lung-nodule detection on CT (3D U-Net candidates + 3D ResNet false-positive reduction).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train both stages and write a model folder")
    t.add_argument("--data", help="DATALIST json (training + validation splits)")
    t.add_argument(
        "--demo",
        action="store_true",
        help="no --data: write 4 small phantom CTs under OUT/demo_data and train a tiny model "
        "in about a minute (for demos and smoke tests, not for use)",
    )
    t.add_argument("--out", required=True, help="model folder to write")
    t.add_argument("--epochs", type=int, default=20, help="U-Net epochs (default 20)")
    t.add_argument("--steps-per-epoch", type=int, default=20)
    t.add_argument("--fp-epochs", type=int, default=10, help="classifier epochs (default 10)")
    t.add_argument("--fp-steps-per-epoch", type=int, default=20)
    t.add_argument("--batch-size", type=int, default=4, help="U-Net patches per micro-batch")
    t.add_argument(
        "--fp-batch-size", type=int, default=32, help="classifier patches per micro-batch"
    )
    t.add_argument(
        "--patch-size",
        type=lambda s: _triple(s, int),
        default=(48, 48, 48),
        help="U-Net training patch (voxels), e.g. 48 or 64,64,48",
    )
    t.add_argument(
        "--roi-size",
        type=lambda s: _triple(s, int),
        default=(64, 64, 64),
        help="sliding-window ROI at inference (voxels)",
    )
    t.add_argument(
        "--spacing",
        type=_triple,
        default=(1.0, 1.0, 1.0),
        help="resampling spacing in mm, e.g. 1.0 or 1,1,1.5 (default 1)",
    )
    t.add_argument(
        "--unet-norm", choices=["instance", "batch"], default="instance", help="U-Net norm"
    )
    t.add_argument("--loss", choices=["dicece", "dicefocal"], default="dicece", help="U-Net loss")
    t.add_argument(
        "--pos-neg",
        type=lambda s: tuple(int(v) for v in s.split(",")),
        default=(1, 1),
        help="nodule:background U-Net patches, e.g. 1,1",
    )
    t.add_argument(
        "--label-min-diameter",
        type=float,
        default=0.0,
        help="U-Net target spheres are at least this wide (mm)",
    )
    t.add_argument(
        "--mine-negatives-from",
        type=int,
        metavar="EPOCH",
        help="online hard-negative mining: from this U-Net epoch on, centre a share of the "
        "background patches on the U-Net's own false positives on the training scans (off)",
    )
    t.add_argument("--mine-negatives-every", type=int, default=4, help="epochs between minings")
    t.add_argument(
        "--mined-negative-fraction",
        type=float,
        default=1 / 3,
        help="share of the background patches on mined false positives (default 1/3)",
    )
    t.add_argument(
        "--blob-sigmas",
        type=_scales,
        default=None,
        help="scales (mm) of the blob-enhancement input channel, e.g. 1.5,2.25,3.75,6 (the "
        "default); 'none' for the CT channel alone",
    )
    t.add_argument(
        "--blob-candidates",
        type=int,
        default=None,
        help="also take this many of the blob channel's strongest maxima per scan as "
        f"candidates (default {DetectionConfig.blob_candidates}; 0: U-Net candidates only)",
    )
    t.add_argument(
        "--fine-blob-candidates",
        type=int,
        default=None,
        help="also take this many maxima per scan of a finer (0.75 mm) dot filter as candidates, "
        "for the rescoring to score (3-4 mm nodules; default "
        f"{DetectionConfig.fine_blob_candidates}; 0: none)",
    )
    t.add_argument(
        "--plain-classifier",
        action="store_true",
        help="false-positive classifier without the nodule-supervised gate (MONAI's ResNet; "
        "its Grad-CAM is coarser)",
    )
    t.add_argument(
        "--fp-focal-gamma",
        type=float,
        default=2.0,
        help="focusing parameter of the classifier's focal loss (default 2; 0: plain "
        "binary cross-entropy)",
    )
    t.add_argument(
        "--fp-cutmix",
        type=float,
        default=0.3,
        metavar="P",
        help="share of the classifier's batches mixed by 3D CutMix (default 0.3; 0: none)",
    )
    t.add_argument(
        "--ema-decay",
        type=float,
        metavar="DECAY",
        help="validate and keep a moving average of each stage's weights with this decay "
        "(e.g. 0.99; default off)",
    )
    t.add_argument(
        "--paste-copies",
        type=int,
        default=0,
        metavar="N",
        help="also train on N copies of each training scan with small training nodules pasted "
        "beside vessels and the chest wall (default 0: off)",
    )
    t.add_argument(
        "--paste-per-scan", type=int, default=4, help="nodules pasted into each copy (default 4)"
    )
    t.add_argument(
        "--paste-max-diameter",
        type=float,
        default=8.0,
        metavar="MM",
        help="largest training nodule copied (default 8 mm)",
    )
    t.add_argument(
        "--paste-attached-share",
        type=float,
        default=0.75,
        help="share of pasted nodules against a vessel or the wall; the rest stand free "
        "(default 0.75)",
    )
    t.add_argument(
        "--no-rescore",
        action="store_true",
        help="do not fit the rescoring (a logistic regression over both networks' outputs and "
        "the image at each candidate, fitted on the candidates of the training scans and of the "
        "datalist's 'calibration' scans); the score is then the fixed combination chosen on "
        "validation",
    )
    t.add_argument(
        "--rescore-degree",
        type=int,
        default=2,
        help="2 (default): the rescoring weighs the features, their squares and pairwise "
        "products; 1: the features alone",
    )
    t.add_argument(
        "--rescore-margin",
        type=float,
        default=0.02,
        help="a fixed score combination replaces the rescoring only when its validation CPM "
        "is higher by more than this (default 0.02)",
    )
    for flag, what in (
        ("--test-time-flips", "the U-Net's 8 flipped passes (about 4x its inference time)"),
        ("--fp-test-time-flips", "the classifier's mean over 8 flipped patches"),
    ):
        t.add_argument(
            flag,
            choices=FLIP_CHOICES,
            default="search",
            help=f"{what}: 'search' (default) keeps them when they raise the validation CPM; "
            "'on' or 'off' fixes them (e.g. 'off' to bound the inference time)",
        )
    t.add_argument("--lr", type=float, default=1e-2)
    t.add_argument("--fp-lr", type=float, default=1e-3)
    t.add_argument("--accumulation-steps", type=int, default=1)
    t.add_argument("--warmup-steps", type=int, default=10)
    t.add_argument(
        "--patience", type=int, default=6, help="early stopping patience in epochs (0: off)"
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    t.add_argument("--init-weights", help="weights file for the U-Net, or a detection model folder")
    t.add_argument(
        "--candidates-from",
        metavar="MODEL_DIR",
        help="keep this detection model's U-Net and candidate settings; train the classifier only",
    )
    t.add_argument("--max-steps", type=int, help="cap on optimizer steps per stage (quick runs)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")

    n = sub.add_parser(
        "ensemble",
        help="combine trained detection models into one (their probabilities averaged)",
        description="Combine trained detection models (e.g. other seeds) into one model folder: "
        "the U-Nets' and the classifiers' probabilities are averaged; the candidate threshold "
        "is chosen again on the validation scans and the rescoring fitted again on the "
        "training scans' candidates. Nothing is trained.",
    )
    n.add_argument("--models", nargs="+", required=True, metavar="MODEL_DIR", help="2 or more")
    n.add_argument("--data", required=True, help="DATALIST json (training + validation splits)")
    n.add_argument("--out", required=True, help="model folder to write")
    n.add_argument("--device", default="cpu")

    e = sub.add_parser("evaluate", help="FROC of a model on a datalist split")
    e.add_argument("--model", required=True, help="model folder")
    e.add_argument("--data", required=True, help="DATALIST json")
    e.add_argument(
        "--out", required=True, help="METRICS.json to write (the FROC PNG goes beside it)"
    )
    e.add_argument("--split", default="testing", choices=["training", "validation", "testing"])
    e.add_argument("--candidates-only", action="store_true", help="skip false-positive reduction")
    e.add_argument("--device", default="cpu")

    p = sub.add_parser("predict", help="find nodules in one CT")
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--image", required=True, help="DICOM series folder or NIfTI file")
    p.add_argument(
        "--out", help="FINDINGS.json (default: print to stdout); the mask goes beside it"
    )
    p.add_argument(
        "--threshold",
        type=float,
        help="report findings scoring at least this (default: the model's)",
    )
    p.add_argument("--device", default="cpu")
    return parser


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")


def run(args: argparse.Namespace) -> int:
    """Run one sub-command; errors of input raise `InputError`/`ModelFolderError` (exit 2)."""
    from ai_engine.detection.transforms import input_errors_unwrapped

    _check_device(args.device)
    with input_errors_unwrapped():
        if args.command == "train":
            return _train(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "ensemble":
            return _ensemble(args)
        return _predict(args)


def config_from_args(args: argparse.Namespace) -> DetectionConfig:
    """The `DetectionConfig` of `train`'s flags (flags left out keep the config's defaults).

    Raises:
        InputError: flags that contradict each other or a value out of range.
    """
    if args.blob_sigmas == () and args.blob_candidates:
        raise InputError("--blob-candidates needs the blob channel: drop --blob-sigmas none")
    try:
        return DetectionConfig(
            spacing_mm=args.spacing,
            patch_size=args.patch_size,
            sw_roi_size=args.roi_size,
            unet_norm=args.unet_norm,
            fp_gate=not args.plain_classifier,
            test_time_flips=args.test_time_flips == "on",
            fp_test_time_flips=args.fp_test_time_flips == "on",
            **({} if args.blob_sigmas is None else {"blob_sigmas_mm": args.blob_sigmas}),
            **({} if args.blob_candidates is None else {"blob_candidates": args.blob_candidates}),
            **(
                {}
                if args.fine_blob_candidates is None
                else {"fine_blob_candidates": args.fine_blob_candidates}
            ),
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _train(args: argparse.Namespace) -> int:
    from ai_engine.data.datalist import load_datalist
    from ai_engine.detection.train import train_detector

    if args.demo:
        return _train_demo(args)
    if not args.data:
        raise InputError("train needs --data DATALIST (or --demo)")
    pos_neg = args.pos_neg
    if len(pos_neg) != 2 or min(pos_neg) < 0 or max(pos_neg) == 0:
        pos_neg_text = ",".join(map(str, pos_neg))
        raise InputError(f"--pos-neg must be two counts, not both 0, got {pos_neg_text}")
    datalist = load_datalist(args.data)
    if args.init_weights and not Path(args.init_weights).exists():
        raise InputError(f"--init-weights {args.init_weights} does not exist")
    config = config_from_args(args)
    out = train_detector(datalist, args.out, config, train_options_from_args(args))
    print(f"model folder written to {out}")
    return 0


def train_options_from_args(args: argparse.Namespace):
    """The `DetectionTrainOptions` of `train`'s flags."""
    from ai_engine.detection.train import DetectionTrainOptions

    return DetectionTrainOptions(
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        lr=args.lr,
        fp_epochs=args.fp_epochs,
        fp_steps_per_epoch=args.fp_steps_per_epoch,
        fp_batch_size=args.fp_batch_size,
        fp_lr=args.fp_lr,
        accumulation_steps=args.accumulation_steps,
        warmup_steps=args.warmup_steps,
        early_stopping_patience=args.patience or None,
        seed=args.seed,
        device=args.device,
        max_steps=args.max_steps,
        init_weights=args.init_weights,
        candidates_from=args.candidates_from,
        resume=args.resume,
        progress=not args.no_progress,
        loss=args.loss,
        pos_neg=args.pos_neg,
        label_min_diameter_mm=args.label_min_diameter,
        mine_negatives_from=args.mine_negatives_from,
        mine_negatives_every=args.mine_negatives_every,
        mined_negative_fraction=args.mined_negative_fraction,
        fp_focal_gamma=args.fp_focal_gamma,
        fp_cutmix_prob=args.fp_cutmix,
        ema_decay=args.ema_decay,
        paste_copies=args.paste_copies,
        paste_per_scan=args.paste_per_scan,
        paste_max_diameter_mm=args.paste_max_diameter,
        paste_attached_share=args.paste_attached_share,
        rescore=not args.no_rescore,
        rescore_degree=args.rescore_degree,
        rescore_margin=args.rescore_margin,
        try_test_time_flips=args.test_time_flips == "search",
        try_fp_test_time_flips=args.fp_test_time_flips == "search",
    )


def _train_demo(args: argparse.Namespace) -> int:
    """A tiny detector on 4 phantom CTs written by the phantom generator (seconds per stage)."""
    from ai_engine.data.datalist import load_datalist, write_datalist
    from ai_engine.data.phantoms import write_chest_ct
    from ai_engine.detection.train import DetectionTrainOptions, train_detector

    root = Path(args.out) / "demo_data"
    items = []
    for seed in (101, 102, 103, 104):
        case = root / f"ct_{seed}"
        if not case.exists():
            nodules = write_chest_ct(case, seed, shape=(64, 64, 24))
            (root / f"ct_{seed}.nodules.json").write_text(json.dumps(nodules))
        nodules = json.loads((root / f"ct_{seed}.nodules.json").read_text())
        items.append(
            {
                "image": case.name,
                "nodules": [{k: n[k] for k in ("center_lps_mm", "diameter_mm")} for n in nodules],
            }
        )
    path = write_datalist(
        {"training": items[:3], "validation": items[3:], "testing": items[3:]},
        root / "datalist.json",
    )
    config = DetectionConfig(
        spacing_mm=(1.5, 1.5, 1.5),  # coarse: a minute on a CPU, a demo not a detector
        patch_size=(32, 32, 32),
        sw_roi_size=(32, 32, 32),
        unet_channels=(4, 8, 16),
        fp_patch_size=16,
        fp_channels=(4, 8, 8, 8),
    )
    options = DetectionTrainOptions(
        epochs=2,
        steps_per_epoch=3,
        batch_size=2,
        lr=1e-2,
        fp_epochs=2,
        fp_steps_per_epoch=3,
        fp_batch_size=8,
        warmup_steps=1,
        early_stopping_patience=None,
        seed=args.seed,
        device=args.device,
        random_negatives=6,
        elastic_prob=0.0,
        progress=not args.no_progress,
    )
    out = train_detector(load_datalist(path), args.out, config, options)
    print(f"demo model folder written to {out} (data: {path})")
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    from ai_engine.data.datalist import load_datalist
    from ai_engine.detection.ensemble import ensemble_detector
    from ai_engine.detection.train import DetectionTrainOptions

    datalist = load_datalist(args.data)
    opts = DetectionTrainOptions(device=args.device, progress=False)
    out = ensemble_detector(args.models, datalist, args.out, opts)
    print(f"ensemble of {len(args.models)} models written to {out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ai_engine.data.datalist import load_datalist
    from ai_engine.detection.evaluate import evaluate_detector, write_metrics
    from ai_engine.detection.pipeline import NoduleDetector

    detector = NoduleDetector.from_model_folder(args.model, device=args.device)
    datalist = load_datalist(args.data)
    items = datalist.get(args.split, [])
    if not items:
        raise InputError(f"datalist {args.data} has no {args.split!r} items to evaluate")
    metrics = evaluate_detector(detector, items, use_classifier=not args.candidates_only)
    metrics["split"] = args.split
    metrics["model"] = str(Path(args.model).resolve())
    out, png = write_metrics(metrics, args.out, title=f"{Path(args.model).name} on {args.split}")
    print(
        f"CPM {metrics['cpm']:.3f} on {metrics['n_images']} scans / {metrics['n_nodules']} nodules; "
        f"wrote {out} and {png}"
    )
    return 0


def _predict(args: argparse.Namespace) -> int:
    import numpy as np

    from ai_engine.detection.pipeline import NoduleDetector, findings_on_source
    from ai_engine.detection.transforms import load_ct
    from ai_engine.io import save_nifti
    from ai_engine.io.volume import Volume

    detector = NoduleDetector.from_model_folder(args.model, device=args.device)
    t0 = time.perf_counter()
    volume = load_ct(args.image)
    result = detector.detect(volume)
    threshold = detector.config.finding_threshold if args.threshold is None else args.threshold
    findings, label_map = findings_on_source(result, volume, threshold)
    doc = {
        "image": str(Path(args.image).resolve()),
        "model": str(Path(args.model).resolve()),
        "threshold": threshold,
        "source_geometry": {
            "affine_lps": volume.affine.tolist(),
            "shape": list(volume.spatial_shape),
        },
        "findings": findings,
        "timings_s": {
            **{k: round(v, 3) for k, v in result.timings.items()},
            "total_s": round(time.perf_counter() - t0, 3),
        },
    }
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        mask_path = out.parent / "findings_mask.nii.gz"
        save_nifti(Volume(label_map.astype(np.float32), volume.affine), mask_path, dtype=np.uint16)
        doc["mask"] = mask_path.name
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"{len(findings)} findings written to {out} (mask {mask_path})")
    else:
        print(json.dumps(doc, indent=2))
    return 0
