"""`python -m ai_engine grading train|evaluate|predict|explain`.

Examples:
  python -m ai_engine grading train --datalist DL.json --out models/grading-cnn --network resnet3d
  python -m ai_engine grading train --datalist DL.json --out models/grading-vit --network vit_classifier
  python -m ai_engine grading evaluate --model models/grading-cnn --datalist DL.json --split testing
  python -m ai_engine grading predict --model models/grading-cnn --study CASE_DIR
  python -m ai_engine grading predict --model models/grading-cnn --t1 T1 --t1c T1c --t2 T2 --flair FLAIR
  python -m ai_engine grading explain --model models/grading-cnn --study CASE_DIR --out expl/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ai_engine.errors import InputError

SEQUENCE_FLAGS = {"T1": "t1", "T1c": "t1c", "T2": "t2", "FLAIR": "flair"}


def _size(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y,Z integers, got {text!r}") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or min(values) < 8:
        raise argparse.ArgumentTypeError(f"expected three sizes >= 8, got {text!r}")
    return values  # type: ignore[return-value]


def _weights(text: str) -> list[float] | None:
    if text == "auto":
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or three numbers, got {text!r}"
        ) from None
    if len(values) != 3 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected three positive weights, got {text!r}")
    return values


def _add_study(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--study", help="study folder whose subfolders are the MR series (identified by header)"
    )
    for name, flag in SEQUENCE_FLAGS.items():
        p.add_argument(f"--{flag}", help=f"{name} series folder or NIfTI file")


def _study_images(args: argparse.Namespace) -> dict[str, str] | str:
    given = {
        name: getattr(args, flag) for name, flag in SEQUENCE_FLAGS.items() if getattr(args, flag)
    }
    if args.study and given:
        raise InputError("give either --study or --t1/--t1c/--t2/--flair, not both")
    if args.study:
        return str(args.study)
    if not given:
        raise InputError("no input: give --study DIR or at least one of --t1 --t1c --t2 --flair")
    return given


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train, calibrate and write a grading model folder")
    t.add_argument("--datalist", required=True)
    t.add_argument("--out", required=True, help="model folder to write")
    t.add_argument(
        "--network", default="resnet3d", choices=["resnet3d", "densenet121_3d", "vit_classifier"]
    )
    t.add_argument(
        "--network-kwargs", default="{}", help="JSON object overriding the preset's kwargs"
    )
    t.add_argument(
        "--spatial-size",
        type=_size,
        default=(32, 32, 32),
        help="model grid X,Y,Z (default 32,32,32: ~4 mm voxels on a brain field of view)",
    )
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--steps-per-epoch", type=int, default=None)
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--accumulation-steps", type=int, default=1)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--warmup-steps", type=int, default=20)
    t.add_argument("--patience", type=int, default=None, help="early stopping patience in epochs")
    t.add_argument(
        "--monitor", default="val_loss", choices=["val_loss", "val_accuracy", "val_macro_f1"]
    )
    t.add_argument("--focal-gamma", type=float, default=2.0)
    t.add_argument(
        "--class-weights",
        type=_weights,
        default=None,
        help="'auto' (inverse frequency) or w1,w2,w3",
    )
    t.add_argument(
        "--channel-dropout", type=float, default=0.2, help="probability of dropping a sequence"
    )
    t.add_argument(
        "--seg-aux-weight",
        type=float,
        default=None,
        help="weight of the auxiliary tumor segmentation loss when items have tumor_mask "
        "(default: the GradingConfig default; 0 = off)",
    )
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--pretrained", help="local weights file for transfer learning (partial load)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/training/last.pt")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu")
    t.add_argument("--quiet", action="store_true")

    e = sub.add_parser(
        "evaluate", help="METRICS.json on a datalist split (pointing game with masks)"
    )
    e.add_argument("--model", required=True)
    e.add_argument("--datalist", required=True)
    e.add_argument("--split", default="testing", choices=["training", "validation", "testing"])
    e.add_argument("--out", help="METRICS.json path (default MODEL/METRICS.json)")
    e.add_argument("--method", default="gradcam", choices=["gradcam", "gradcampp", "occlusion"])
    e.add_argument("--no-pointing-game", action="store_true")
    e.add_argument("--tolerance-voxels", type=int, default=0)

    p = sub.add_parser("predict", help="grade one study (JSON to stdout or --out)")
    p.add_argument("--model", required=True)
    _add_study(p)
    p.add_argument("--out", help="write the JSON here too")

    x = sub.add_parser(
        "explain", help="heat map (NIfTI, source geometry) + key-slice PNG for one study"
    )
    x.add_argument("--model", required=True)
    _add_study(x)
    x.add_argument("--out", required=True, help="output folder")
    x.add_argument("--method", default="gradcam", choices=["gradcam", "gradcampp", "occlusion"])
    x.add_argument(
        "--grade", type=int, choices=[1, 2, 3], help="grade to explain (default: predicted)"
    )
    return parser


def _train(args: argparse.Namespace) -> int:
    from ai_engine.grading.config import GradingConfig
    from ai_engine.grading.train import train_grading
    from ai_engine.training import TrainConfig

    try:
        net_kwargs = json.loads(args.network_kwargs)
    except json.JSONDecodeError as exc:
        raise InputError(f"--network-kwargs is not JSON: {exc}") from None
    if not isinstance(net_kwargs, dict):
        raise InputError("--network-kwargs must be a JSON object")
    if args.pretrained and not Path(args.pretrained).is_file():
        raise InputError(f"--pretrained {args.pretrained} does not exist")
    try:
        config = GradingConfig(
            network=args.network,
            network_kwargs=net_kwargs,
            spatial_size=args.spatial_size,
            focal_gamma=args.focal_gamma,
            class_weights=args.class_weights,
            channel_dropout_prob=args.channel_dropout,
            augment=not args.no_augment,
            batch_size=args.batch_size,
            **({} if args.seg_aux_weight is None else {"seg_aux_weight": args.seg_aux_weight}),
        )
        train_config = TrainConfig(
            epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch,
            max_steps=args.max_steps,
            lr=args.lr,
            warmup_steps=args.warmup_steps,
            accumulation_steps=args.accumulation_steps,
            early_stopping_patience=args.patience,
            monitor=args.monitor,
            monitor_mode="min" if args.monitor == "val_loss" else "max",
            seed=args.seed,
            device=args.device,
            progress=not args.quiet,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None
    summary = train_grading(
        args.datalist,
        args.out,
        config,
        train_config,
        pretrained=args.pretrained,
        resume=args.resume,
    )
    val = summary["validation"]
    print(
        f"model folder {summary['model_folder']}: validation accuracy {val['accuracy']:.3f}, "
        f"macro-F1 {val['macro_f1']:.3f}, ECE {summary['validation_ece_before']:.3f} -> "
        f"{summary['validation_ece_after']:.3f} (T={summary['temperature']:.3f})"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ai_engine.data.datalist import load_datalist
    from ai_engine.grading.evaluate import evaluate_grading, write_metrics
    from ai_engine.grading.model import load_grading_model
    from ai_engine.grading.train import grading_items

    model = load_grading_model(args.model)
    items = grading_items(load_datalist(args.datalist)[args.split], args.split)
    if not items:
        raise InputError(f"{args.datalist} has no {args.split!r} items")
    metrics = evaluate_grading(
        model,
        items,
        pointing=not args.no_pointing_game,
        method=args.method,
        tolerance_voxels=args.tolerance_voxels,
    )
    out = write_metrics(metrics, args.out or Path(args.model) / "METRICS.json")
    pg = metrics.get("pointing_game")
    print(
        f"{out}: n={metrics['n']} accuracy {metrics['accuracy']:.3f} macro-F1 {metrics['macro_f1']:.3f} "
        f"ECE {metrics['ece']:.3f}" + (f" pointing game {pg['rate']:.3f}" if pg else "")
    )
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ai_engine.grading.model import load_grading_model

    images = _study_images(args)
    model = load_grading_model(args.model)
    result = model.grade(model.load(images))
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    if result["missing_sequences"]:
        print(f"warning: graded without {', '.join(result['missing_sequences'])}", file=sys.stderr)
    return 0


def _explain(args: argparse.Namespace) -> int:
    from ai_engine.grading.explain import explain_study, write_explanation
    from ai_engine.grading.model import load_grading_model

    images = _study_images(args)
    model = load_grading_model(args.model)
    study = model.load(images)
    prediction: dict[str, Any] = model.grade(study)
    expl = explain_study(model, study, method=args.method, grade=args.grade)
    files = write_explanation(expl, study, args.out, prediction)
    print(json.dumps({"grade": expl.grade, "method": expl.method, **files}, indent=2))
    return 0


def run(args: argparse.Namespace) -> int:
    return {"train": _train, "evaluate": _evaluate, "predict": _predict, "explain": _explain}[
        args.command
    ](args)
