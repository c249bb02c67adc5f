"""Benchmark of tumor grading, explanations and deployable models on brain-MRI phantoms.

Prints, on a held-out phantom set (its own seeds):
  * accuracy and macro-F1 of the CNN (MONAI ResNet) and the transformer (MONAI ViT)
    (goal: macro-F1 >= 0.90), ECE before/after temperature scaling, Grad-CAM pointing game
    (goal >= 90%);
  * for the CNN in FP32 (PyTorch, ONNX Runtime), INT8 (PyTorch FX static with fbgemm
    kernels; ONNX Runtime static QDQ per-channel) and a distilled student, and the ViT in FP32
    and INT8 (torch dynamic): macro-F1, latency per study on the CPU
    (network only, median of repeated single-study calls) and model size in MB;
  * ONNX / TorchScript parity (max abs difference).

Phantoms (`ai_engine.data.phantoms.make_brain_mri`) are cached in `--work/phantoms` as one
NIfTI file per sequence (the same integer voxels and geometry the DICOM writer stores; reading
them is ~7x faster than the DICOM series), so a rerun only retrains what `--fresh` deleted.

Usage (the whole bench took ~45 minutes from scratch on 2 busy CPU threads):
  nohup .venv/bin/python bench/bench_grading.py --work var/bench/grading --fresh \
      > /tmp/bench_grading.log 2>&1 &
Parts: `--only cnn` or `--only vit` trains/evaluates one model (`--skip-deploy` leaves out
export, INT8 and the student, which need both); a model folder already in `--work/models`
is evaluated, not retrained (`--fresh` deletes them).
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

from ai_engine.data.phantoms import make_brain_mri
from ai_engine.deploy.cli_distill import distill_grading
from ai_engine.deploy.export import file_size_mb
from ai_engine.deploy.folders import export_folder, quantize_folder
from ai_engine.grading.config import GradingConfig
from ai_engine.grading.data import CHANNELS
from ai_engine.grading.evaluate import evaluate_grading, grading_calibration_batches
from ai_engine.grading.model import load_grading_model
from ai_engine.grading.train import train_grading
from ai_engine.io import Volume, save_nifti
from ai_engine.training import TrainConfig


def write_case(case_dir: Path, seed: int, grade: int, shape: tuple[int, int, int]) -> None:
    """One phantom study as NIfTI: `T1.nii.gz` ... `FLAIR.nii.gz` and `tumor_mask.nii.gz`."""
    volume, _, mask = make_brain_mri(seed, grade=grade, shape=shape)
    tmp = case_dir.with_name(case_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for index, name in enumerate(CHANNELS):
        save_nifti(Volume(volume.array[index], volume.affine), tmp / f"{name}.nii.gz", np.uint16)
    save_nifti(Volume(mask.astype(np.float32), volume.affine), tmp / "tumor_mask.nii.gz", np.uint8)
    tmp.rename(case_dir)  # a case folder is complete or absent


def write_split(root: Path, first_seed: int, count: int, shape: tuple[int, int, int]) -> list[dict]:
    items = []
    tag = "x".join(str(s) for s in shape)
    for i in range(count):
        seed = first_seed + i
        grade = i % 3 + 1
        case = f"{tag}/case{seed}"
        if not (root / case).is_dir():
            write_case(root / case, seed, grade, shape)
        items.append(
            {
                "images": {n: f"{case}/{n}.nii.gz" for n in CHANNELS},
                "grade": grade,
                "tumor_mask": f"{case}/tumor_mask.nii.gz",
            }
        )
    return items


def folder_size_mb(path: Path) -> float:
    manifest = json.loads((path / "model.json").read_text())
    return file_size_mb([path / c["file"] for c in manifest["components"].values()])


def latency(model_dir: Path, spatial: tuple[int, int, int], repeats: int = 10) -> float:
    """Median seconds of one single-study forward, a fresh input per call.

    A repeated identical input made some runtimes look 10-100x faster than they are (the
    quantized TorchScript and ONNX Runtime models measured 0.5-2 ms with one repeated array
    and 15-340 ms with fresh ones), so every call gets its own array.
    """
    model = load_grading_model(model_dir)
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(1, 4, *spatial)).astype(np.float32) for _ in range(repeats + 2)]
    times = []
    for index, x in enumerate(inputs):
        start = time.perf_counter()
        model.logits(x)
        if index >= 2:  # warm-up calls
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def pointing_by_grade(metrics: dict) -> dict[str, str]:
    """Pointing-game hits per true grade, e.g. {"1": "3/10", ...} (empty without masks)."""
    out: dict[str, list[bool]] = {}
    for case in metrics["per_case"]:
        if "pointing_hit" in case:
            out.setdefault(str(case["grade"]), []).append(bool(case["pointing_hit"]))
    return {g: f"{sum(v)}/{len(v)}" for g, v in sorted(out.items())}


def parse_size(text: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in text.split(","))
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected X,Y,Z, got {text!r}")
    return values  # type: ignore[return-value]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", "--out", dest="work", default="var/bench/grading")
    parser.add_argument("--train", type=int, default=96, help="training phantoms")
    parser.add_argument("--val", type=int, default=30, help="validation phantoms")
    parser.add_argument("--test", type=int, default=30, help="held-out test phantoms")
    parser.add_argument("--shape", type=parse_size, default=(64, 64, 48), help="phantom matrix")
    parser.add_argument("--spatial-size", type=parse_size, default=(32, 32, 32), help="model grid")
    parser.add_argument("--cnn-epochs", type=int, default=30)
    parser.add_argument("--vit-epochs", type=int, default=30)
    parser.add_argument("--student-epochs", type=int, default=30)
    parser.add_argument("--cnn-lr", type=float, default=1e-3)
    parser.add_argument("--vit-lr", type=float, default=3e-4)
    parser.add_argument("--vit-warmup", type=int, default=24, help="ViT warm-up steps")
    parser.add_argument(
        "--cnn-kwargs", default="{}", help="JSON overriding the CNN preset's network kwargs"
    )
    parser.add_argument(
        "--vit-kwargs", default="{}", help="JSON overriding the ViT preset's network kwargs"
    )
    parser.add_argument(
        "--seg-aux-weight",
        type=float,
        default=None,
        help="auxiliary tumor segmentation weight (default: GradingConfig's; 0 = off)",
    )
    parser.add_argument(
        "--patience", type=int, default=15, help="early-stopping patience (CNN, student)"
    )
    parser.add_argument("--vit-patience", type=int, default=12, help="ViT early-stopping patience")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--models",
        "--only",
        dest="models",
        default="cnn,vit",
        help="comma list of cnn, vit (what to train/evaluate; deploy rows need both)",
    )
    parser.add_argument(
        "--skip-deploy", action="store_true", help="no export / INT8 / student (quality only)"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="delete earlier models (phantoms are kept)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape, spatial = args.shape, args.spatial_size
    wanted = {m.strip() for m in args.models.split(",") if m.strip()}
    out = Path(args.work)
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
        f"phantoms: {len(train)} train / {len(val)} val / {len(test)} test, {shape}, "
        f"{time.perf_counter() - t0:.0f} s",
        flush=True,
    )

    from ai_engine.data.datalist import load_datalist

    test_items = load_datalist(datalist)["testing"]
    rows: dict[str, dict] = {}

    def train_one(
        name: str,
        network: str,
        lr: float,
        epochs: int,
        kwargs: str,
        warmup: int = 24,
        patience: int | None = None,
    ) -> Path:
        folder = models / name
        if not (folder / "model.json").exists():
            start = time.perf_counter()
            extra = {} if args.seg_aux_weight is None else {"seg_aux_weight": args.seg_aux_weight}
            config = GradingConfig(
                network=network, network_kwargs=json.loads(kwargs), spatial_size=spatial,
                batch_size=4, **extra,
            )  # fmt: skip
            tc = TrainConfig(
                epochs=epochs, lr=lr, warmup_steps=warmup,
                early_stopping_patience=patience or args.patience,
                monitor="val_loss", monitor_mode="min", seed=0, progress=False,
            )  # fmt: skip
            summary = train_grading(datalist, folder, config, tc)
            print(
                f"{name}: trained in {time.perf_counter() - start:.0f} s, best epoch "
                f"{summary['best_epoch']} of {len(summary['train_losses'])}, "
                f"T={summary['temperature']:.3f} ({summary['calibration']}), val ECE "
                f"{summary['validation_ece_before']:.3f} -> {summary['validation_ece_after']:.3f}",
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
            "temperature": metrics["temperature"],
            "pointing_game": (metrics.get("pointing_game") or {}).get("rate"),
            "latency_s": latency(folder, spatial),
            "size_mb": folder_size_mb(folder),
            "confusion": metrics["confusion"],
        }
        if pointing:  # the same maps with Grad-CAM++
            pp = evaluate_grading(
                load_grading_model(folder), test_items, pointing=True, method="gradcampp"
            )
            row["pointing_game_pp"] = pp["pointing_game"]["rate"]
            metrics["pointing_game_gradcampp"] = pp["pointing_game"]
        row["pointing_by_grade"] = pointing_by_grade(metrics)
        rows[name] = row
        (folder / "METRICS.bench.json").write_text(json.dumps(metrics, indent=1))
        shown = {k: v for k, v in row.items() if k != "confusion"}
        print(
            f"{name}: evaluated in {time.perf_counter() - start:.0f} s: {json.dumps(shown)}, "
            f"confusion {row['confusion']}",
            flush=True,
        )
        return row

    cnn = vit = None
    if "cnn" in wanted:
        cnn = train_one("cnn", "resnet3d", args.cnn_lr, args.cnn_epochs, args.cnn_kwargs)
        evaluate("cnn_fp32", cnn, pointing=True)
    if "vit" in wanted:
        vit = train_one(
            "vit", "vit_classifier", args.vit_lr, args.vit_epochs, args.vit_kwargs,
            args.vit_warmup, args.vit_patience,
        )  # fmt: skip
        evaluate("vit_fp32", vit, pointing=True)

    parity = {}
    if not args.skip_deploy and cnn is not None and vit is not None:
        for fmt in ("onnx", "torchscript"):
            target = models / f"cnn-{fmt}"
            if target.exists():
                shutil.rmtree(target)
            start = time.perf_counter()
            report = export_folder(cnn, target, fmt=fmt, exporter="dynamo")
            parity[f"cnn_{fmt}"] = report["components"]["model"]
            print(
                f"export cnn {fmt}: {report['components']['model']} in "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )
        target = models / "vit-onnx"
        if target.exists():
            shutil.rmtree(target)
        parity["vit_onnx"] = export_folder(vit, target, fmt="onnx", exporter="dynamo")[
            "components"
        ]["model"]
        print(f"export vit onnx: {parity['vit_onnx']}", flush=True)
        evaluate("cnn_onnx_fp32", models / "cnn-onnx", pointing=False)

        # INT8: the CNN with torch FX static (fbgemm) and with ORT static QDQ per-channel,
        # the ViT with torch dynamic (Linear layers).
        calib = grading_calibration_batches(cnn, datalist, "training", 16)
        for name, src, method in (
            ("cnn_int8", cnn, "torch-static"),
            ("cnn_int8_ort", cnn, "static"),
            ("vit_int8", vit, "dynamic"),
        ):
            target = models / name
            if target.exists():
                shutil.rmtree(target)
            quantize_folder(
                src,
                target,
                method=method,
                calibration_batches=calib if method != "dynamic" else None,
            )
            evaluate(name, target, pointing=False)

        # Distilled student of the CNN.
        student = models / "cnn-student"
        if not (student / "model.json").exists():
            start = time.perf_counter()
            summary = distill_grading(
                cnn, datalist, student,
                train_config=TrainConfig(
                    epochs=args.student_epochs, lr=args.cnn_lr, warmup_steps=24,
                    early_stopping_patience=args.patience, seed=0, progress=False,
                ),
            )  # fmt: skip
            print(
                f"student: distilled in {time.perf_counter() - start:.0f} s: "
                f"{summary['distillation']}",
                flush=True,
            )
        evaluate("cnn_student", student, pointing=True)

    print("\n== Tumor grading on the held-out phantom set ==")
    print(
        f"test cases: {len(test_items)} (seeds 30000+), phantom {shape}, model grid {spatial}, "
        f"threads {args.threads}"
    )
    header = (
        f"{'model':<16}{'acc':>7}{'macroF1':>9}{'ECE pre':>9}{'ECE post':>9}{'T':>7}"
        f"{'pointing':>10}{'pt GC++':>9}{'lat ms':>9}{'MB':>8}"
    )
    print(header)
    for name, r in rows.items():
        pg = "-" if r["pointing_game"] is None else f"{r['pointing_game']:.3f}"
        pp = f"{r['pointing_game_pp']:.3f}" if "pointing_game_pp" in r else "-"
        print(
            f"{name:<16}{r['accuracy']:>7.3f}{r['macro_f1']:>9.3f}{r['ece_before']:>9.3f}"
            f"{r['ece_after']:>9.3f}{r['temperature']:>7.2f}{pg:>10}{pp:>9}"
            f"{1000 * r['latency_s']:>9.1f}{r['size_mb']:>8.2f}"
        )
    for name, r in rows.items():
        if r["pointing_by_grade"]:
            print(f"{name}: Grad-CAM pointing hits by true grade {r['pointing_by_grade']}")
    if "cnn_int8" in rows:
        base = rows["cnn_fp32"]
        for name in ("cnn_onnx_fp32", "cnn_int8", "cnn_student"):
            r = rows[name]
            print(
                f"{name} vs cnn_fp32: macro-F1 change {r['macro_f1'] - base['macro_f1']:+.3f}, "
                f"speedup x{base['latency_s'] / r['latency_s']:.2f}, "
                f"size x{r['size_mb'] / base['size_mb']:.2f}"
            )
        r, o = rows["cnn_int8_ort"], rows["cnn_onnx_fp32"]
        print(
            f"cnn_int8_ort vs cnn_onnx_fp32 (both ONNX Runtime): macro-F1 change "
            f"{r['macro_f1'] - o['macro_f1']:+.3f}, speedup x{o['latency_s'] / r['latency_s']:.2f}"
        )
        r = rows["cnn_int8"]
        print(
            f"cnn_int8 (torch FX) vs cnn_onnx_fp32 (fastest FP32): speedup "
            f"x{o['latency_s'] / r['latency_s']:.2f}"
        )
        r = rows["vit_int8"]
        print(
            f"vit_int8 vs vit_fp32: macro-F1 change {r['macro_f1'] - rows['vit_fp32']['macro_f1']:+.3f}, "
            f"speedup x{rows['vit_fp32']['latency_s'] / r['latency_s']:.2f}, "
            f"size x{r['size_mb'] / rows['vit_fp32']['size_mb']:.2f}"
        )
        print(
            "parity (max abs diff):",
            json.dumps({k: v["max_abs_diff"] for k, v in parity.items()}),
        )
    print(f"total {time.perf_counter() - t0:.0f} s")
    (out / "results.json").write_text(json.dumps({"rows": rows, "parity": parity}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
