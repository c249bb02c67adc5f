"""Benchmark of tumor grading, explanations and deployable models on brain-MRI phantoms.

Prints, on a held-out phantom set (its own seeds):
  * accuracy and macro-F1 of the CNN (MONAI ResNet) and the transformer (MONAI ViT)
    (goal: macro-F1 >= 0.90), ECE before/after temperature scaling, Grad-CAM pointing game
    (goal >= 90%);
  * for the CNN in FP32, INT8 (ONNX Runtime static QDQ) and a distilled student, and the ViT
    in FP32 and INT8 (torch dynamic): macro-F1, latency per study on the CPU (network only,
    median of repeated single-study calls) and model size in MB;
  * ONNX / TorchScript parity (max abs difference).

Usage (about 30 minutes from scratch on 2 CPU threads; ~16 when the trained models in --out are reused):
  nohup .venv/bin/python bench/bench_grading.py --out var/bench/grading > /tmp/bench_grading.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ai_engine.data.phantoms import write_brain_mri
from ai_engine.deploy.cli_distill import distill_grading
from ai_engine.deploy.export import file_size_mb, time_per_call
from ai_engine.deploy.folders import export_folder, quantize_folder
from ai_engine.grading.config import GradingConfig
from ai_engine.grading.data import CHANNELS
from ai_engine.grading.evaluate import evaluate_grading, grading_calibration_batches
from ai_engine.grading.model import load_grading_model
from ai_engine.grading.train import train_grading
from ai_engine.training import TrainConfig


def write_split(root: Path, first_seed: int, count: int, shape: tuple[int, int, int]) -> list[dict]:
    items = []
    for i in range(count):
        seed = first_seed + i
        grade = i % 3 + 1
        case = f"case{seed}"
        if not (root / case / "tumor_mask.nii.gz").exists():
            write_brain_mri(root / case, seed, grade=grade, shape=shape)
        items.append(
            {
                "images": {n: f"{case}/{n}" for n in CHANNELS},
                "grade": grade,
                "tumor_mask": f"{case}/tumor_mask.nii.gz",
            }
        )
    return items


def folder_size_mb(path: Path) -> float:
    manifest = json.loads((path / "model.json").read_text())
    return file_size_mb([path / c["file"] for c in manifest["components"].values()])


def latency(model_dir: Path, spatial: tuple[int, int, int]) -> float:
    model = load_grading_model(model_dir)
    x = np.random.default_rng(0).normal(size=(1, 4, *spatial)).astype(np.float32)
    return time_per_call(model.logits, x, repeats=10, warmup=2)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="var/bench/grading")
    parser.add_argument("--train", type=int, default=48)
    parser.add_argument("--val", type=int, default=12)
    parser.add_argument("--test", type=int, default=30)
    parser.add_argument("--shape", default="64,64,48", help="phantom matrix")
    parser.add_argument("--spatial-size", default="48,48,48", help="model grid")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--fresh", action="store_true", help="delete earlier models (phantoms are kept)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.shape.split(","))
    spatial = tuple(int(v) for v in args.spatial_size.split(","))
    out = Path(args.out)
    data = out / "phantoms"
    models = out / "models"
    if args.fresh and models.exists():
        shutil.rmtree(models)
    t0 = time.perf_counter()

    # Held-out test set: other seeds than training and validation.
    train = write_split(data, 10_000, args.train, shape)
    val = write_split(data, 20_000, args.val, shape)
    test = write_split(data, 30_000, args.test, shape)
    datalist = data / "datalist.json"
    datalist.write_text(
        json.dumps({"training": train, "validation": val, "testing": test}, indent=1)
    )
    print(
        f"phantoms: {len(train)} train / {len(val)} val / {len(test)} test, {shape}, {time.perf_counter() - t0:.0f} s",
        flush=True,
    )

    from ai_engine.data.datalist import load_datalist

    test_items = load_datalist(datalist)["testing"]
    rows: dict[str, dict] = {}

    def train_one(name: str, network: str, lr: float) -> Path:
        folder = models / name
        if not (folder / "model.json").exists():
            start = time.perf_counter()
            config = GradingConfig(network=network, spatial_size=spatial, batch_size=4)
            tc = TrainConfig(
                epochs=args.epochs, lr=lr, warmup_steps=10, early_stopping_patience=8,
                monitor="val_loss", monitor_mode="min", seed=0, progress=False,
            )  # fmt: skip
            summary = train_grading(datalist, folder, config, tc)
            print(
                f"{name}: trained in {time.perf_counter() - start:.0f} s, best epoch {summary['best_epoch']}, "
                f"T={summary['temperature']:.3f}, val ECE {summary['validation_ece_before']:.3f} -> "
                f"{summary['validation_ece_after']:.3f}",
                flush=True,
            )
        return folder

    def evaluate(name: str, folder: Path, pointing: bool) -> dict:
        start = time.perf_counter()
        metrics = evaluate_grading(load_grading_model(folder), test_items, pointing=pointing)
        row = {
            "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"],
            "auc": metrics["auc"],
            "ece_before": metrics["ece_uncalibrated"],
            "ece_after": metrics["ece"],
            "pointing_game": (metrics.get("pointing_game") or {}).get("rate"),
            "latency_s": latency(folder, spatial),
            "size_mb": folder_size_mb(folder),
            "confusion": metrics["confusion"],
        }
        rows[name] = row
        (folder / "METRICS.bench.json").write_text(json.dumps(metrics, indent=1))
        print(
            f"{name}: evaluated in {time.perf_counter() - start:.0f} s: {json.dumps({k: v for k, v in row.items() if k != 'confusion'})}",
            flush=True,
        )
        return row

    cnn = train_one("cnn", "resnet3d", 1e-3)
    evaluate("cnn_fp32", cnn, pointing=True)
    vit = train_one("vit", "vit_classifier", 3e-4)
    evaluate("vit_fp32", vit, pointing=True)

    # Exports with parity.
    parity = {}
    for fmt in ("onnx", "torchscript"):
        target = models / f"cnn-{fmt}"
        if target.exists():
            shutil.rmtree(target)
        start = time.perf_counter()
        report = export_folder(cnn, target, fmt=fmt, exporter="dynamo")
        parity[f"cnn_{fmt}"] = report["components"]["model"]
        print(
            f"export cnn {fmt}: {report['components']['model']} in {time.perf_counter() - start:.0f} s",
            flush=True,
        )
    target = models / "vit-onnx"
    if target.exists():
        shutil.rmtree(target)
    parity["vit_onnx"] = export_folder(vit, target, fmt="onnx", exporter="dynamo")["components"][
        "model"
    ]
    print(f"export vit onnx: {parity['vit_onnx']}", flush=True)
    evaluate("cnn_onnx_fp32", models / "cnn-onnx", pointing=False)

    # INT8.
    calib = grading_calibration_batches(cnn, datalist, "training", 16)
    for name, src, method in (("cnn_int8", cnn, "static"), ("vit_int8", vit, "dynamic")):
        target = models / name
        if target.exists():
            shutil.rmtree(target)
        quantize_folder(
            src, target, method=method, calibration_batches=calib if method == "static" else None
        )
        evaluate(name, target, pointing=False)

    # Distilled student of the CNN.
    student = models / "cnn-student"
    if not (student / "model.json").exists():
        start = time.perf_counter()
        summary = distill_grading(
            cnn, datalist, student,
            train_config=TrainConfig(
                epochs=args.epochs, lr=1e-3, warmup_steps=10, early_stopping_patience=8, seed=0, progress=False
            ),
        )  # fmt: skip
        print(
            f"student: distilled in {time.perf_counter() - start:.0f} s: {summary['distillation']}",
            flush=True,
        )
    evaluate("cnn_student", student, pointing=True)

    print("\n== Tumor grading on the held-out phantom set ==")
    print(
        f"test cases: {len(test_items)} (seeds 30000+), model grid {spatial}, threads {args.threads}"
    )
    header = f"{'model':<16}{'acc':>7}{'macroF1':>9}{'ECE pre':>9}{'ECE post':>9}{'pointing':>10}{'lat ms':>9}{'MB':>8}"
    print(header)
    for name, r in rows.items():
        pg = "-" if r["pointing_game"] is None else f"{r['pointing_game']:.3f}"
        print(
            f"{name:<16}{r['accuracy']:>7.3f}{r['macro_f1']:>9.3f}{r['ece_before']:>9.3f}{r['ece_after']:>9.3f}"
            f"{pg:>10}{1000 * r['latency_s']:>9.1f}{r['size_mb']:>8.2f}"
        )
    base = rows["cnn_fp32"]
    for name in ("cnn_onnx_fp32", "cnn_int8", "cnn_student"):
        r = rows[name]
        print(
            f"{name} vs cnn_fp32: macro-F1 change {r['macro_f1'] - base['macro_f1']:+.3f}, "
            f"speedup x{base['latency_s'] / r['latency_s']:.2f}, size x{r['size_mb'] / base['size_mb']:.2f}"
        )
    r = rows["vit_int8"]
    print(
        f"vit_int8 vs vit_fp32: macro-F1 change {r['macro_f1'] - rows['vit_fp32']['macro_f1']:+.3f}, "
        f"speedup x{rows['vit_fp32']['latency_s'] / r['latency_s']:.2f}, size x{r['size_mb'] / rows['vit_fp32']['size_mb']:.2f}"
    )
    print("parity (max abs diff):", json.dumps({k: v["max_abs_diff"] for k, v in parity.items()}))
    print(f"total {time.perf_counter() - t0:.0f} s")
    (out / "results.json").write_text(json.dumps({"rows": rows, "parity": parity}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
