"""`python -m ai_engine distill`: train a student with at most a quarter of the teacher's
parameters from the teacher's softened outputs (temperature-scaled KL + the task loss).

Example:
  python -m ai_engine distill --teacher models/grading-cnn --datalist DL.json --out models/grading-student
The student is the teacher's network family with widths scaled by --width-factor (shrunk
further until it has <= --max-param-ratio of the teacher's parameters). It trains with the
shared trainer and is calibrated like the teacher; the folder is marked `made_by: distilled`.
Supported tasks: tumor-grading.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ai_engine.errors import InputError, ModelFolderError


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", required=True, help="teacher model folder")
    parser.add_argument("--datalist", required=True, help="training datalist")
    parser.add_argument("--out", required=True, help="student model folder to write")
    parser.add_argument("--width-factor", type=float, default=0.5)
    parser.add_argument("--max-param-ratio", type=float, default=0.25)
    parser.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    parser.add_argument("--alpha", type=float, default=0.7, help="weight of the teacher (KL) term")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the teacher's")
    parser.add_argument("--patience", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--eval-split", default=None, help="also compare teacher and student on this split"
    )
    parser.add_argument("--quiet", action="store_true")
    return parser


def distill_grading(
    teacher_dir: str | Path,
    datalist: str | Path,
    out: str | Path,
    *,
    width_factor: float = 0.5,
    max_param_ratio: float = 0.25,
    temperature: float = 4.0,
    alpha: float = 0.7,
    train_config: Any = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Distil a grading teacher folder into a smaller student folder.

    Raises:
        ModelFolderError: the teacher is not a grading model or lacks its config.
        InputError: no student small enough can be built.
    """
    import dataclasses

    from ai_engine.deploy.distill import pick_student
    from ai_engine.grading.model import load_grading_model
    from ai_engine.grading.train import train_grading
    from ai_engine.modelfolder import manifest_digest
    from ai_engine.training import TrainConfig

    teacher = load_grading_model(teacher_dir)
    config = teacher.config
    if config is None:
        raise ModelFolderError(
            f"{teacher_dir} does not record its grading config; cannot build a student"
        )
    try:
        choice = pick_student(config.network, config.build_kwargs(), width_factor, max_param_ratio)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    overrides = {
        k: v
        for k, v in choice["kwargs"].items()
        if k not in {"in_channels", "num_classes", "img_size"}
    }
    student_config = dataclasses.replace(
        config,
        network=choice["network"],
        network_kwargs=overrides,
        batch_size=batch_size or config.batch_size,
    )
    distillation = {
        "temperature": temperature,
        "alpha": alpha,
        "teacher": str(Path(teacher_dir).resolve()),
        **{k: v for k, v in choice.items() if k != "kwargs"},
        "parent": {
            "path": str(Path(teacher_dir).resolve()),
            "sha256": manifest_digest(teacher_dir),
            "made_by": teacher.folder.made_by,
        },
    }
    summary = train_grading(
        datalist,
        out,
        student_config,
        train_config or TrainConfig(progress=False),
        teacher=lambda x: teacher.folder.predict(x),
        distillation=distillation,
    )
    summary["distillation"] = {k: v for k, v in distillation.items() if k != "parent"}
    return summary


def run(args: argparse.Namespace) -> int:
    from ai_engine.modelfolder import read_manifest
    from ai_engine.training import TrainConfig

    manifest = read_manifest(args.teacher)
    if manifest.get("task") != "tumor-grading":
        raise ModelFolderError(
            f"distillation supports tumor-grading teachers; {args.teacher} is {manifest.get('task')!r}"
        )
    try:
        train_config = TrainConfig(
            epochs=args.epochs,
            max_steps=args.max_steps,
            lr=args.lr,
            early_stopping_patience=args.patience,
            seed=args.seed,
            device=args.device,
            progress=not args.quiet,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None
    summary = distill_grading(
        args.teacher,
        args.datalist,
        args.out,
        width_factor=args.width_factor,
        max_param_ratio=args.max_param_ratio,
        temperature=args.temperature,
        alpha=args.alpha,
        train_config=train_config,
        batch_size=args.batch_size,
    )
    report: dict[str, Any] = {
        "model_folder": summary["model_folder"],
        "distillation": summary["distillation"],
        "validation_accuracy": summary["validation"]["accuracy"],
        "validation_macro_f1": summary["validation"]["macro_f1"],
    }
    if args.eval_split:
        from ai_engine.grading.evaluate import compare_folders

        report["comparison"] = compare_folders(
            args.teacher, args.out, args.datalist, args.eval_split
        )
    print(json.dumps(report, indent=2))
    return 0
