"""`python -m ai_engine quantize`: INT8 model folder for CPU inference.

Examples:
  python -m ai_engine quantize --model models/grading-cnn --out models/grading-cnn-int8 \
      --calibration-datalist DL.json --eval-datalist DL.json
  python -m ai_engine quantize --model models/grading-vit --out models/grading-vit-int8 --method dynamic
Methods: "dynamic" (torch, Linear layers only: for transformers), "static" (ONNX Runtime QDQ
with calibration data: for conv nets), "torch-static" (PyTorch FX static int8 with fbgemm
kernels, calibration data: the faster route for 3D CNNs on CPU), "auto" (by the share of
Linear parameters: dynamic or static).
Calibration data: a grading datalist (its training split is preprocessed as the model
expects) or an .npz of input arrays (B, C, *spatial) for any model. With --eval-datalist the
FP32 and INT8 folders are both evaluated and the change is stored in the INT8 folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ai_engine.deploy.cli_export import parse_input_shapes
from ai_engine.deploy.folders import QUANTIZE_METHODS
from ai_engine.errors import InputError


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="source model folder (PyTorch weights)")
    parser.add_argument("--out", required=True, help="quantized model folder to write")
    parser.add_argument("--method", default="auto", choices=list(QUANTIZE_METHODS))
    parser.add_argument(
        "--calibration-datalist", help="grading datalist whose training items calibrate"
    )
    parser.add_argument("--calibration-split", default="training")
    parser.add_argument(
        "--calibration-count", type=int, default=16, help="studies used for calibration"
    )
    parser.add_argument("--calibration-npz", help=".npz with float32 input arrays (B, C, *spatial)")
    parser.add_argument(
        "--eval-datalist", help="measure the metric change on this datalist (grading)"
    )
    parser.add_argument("--eval-split", default="testing")
    parser.add_argument(
        "--input-shape", action="append", help="NAME=C,X,Y,Z when the folder does not say"
    )
    return parser


def _calibration(args: argparse.Namespace) -> list[np.ndarray] | None:
    if args.calibration_npz:
        path = Path(args.calibration_npz)
        if not path.is_file():
            raise InputError(f"--calibration-npz {path} does not exist")
        with np.load(path) as data:
            return [np.asarray(data[k], dtype=np.float32) for k in data.files]
    if args.calibration_datalist:
        from ai_engine.grading.evaluate import grading_calibration_batches

        return grading_calibration_batches(
            args.model, args.calibration_datalist, args.calibration_split, args.calibration_count
        )
    return None


def run(args: argparse.Namespace) -> int:
    from ai_engine.deploy.folders import quantize_folder
    from ai_engine.modelfolder import read_manifest, update_manifest

    read_manifest(args.model)  # a clear error before any work
    result = quantize_folder(
        args.model,
        args.out,
        method=args.method,
        calibration_batches=_calibration(args),
        input_shapes=parse_input_shapes(args.input_shape),
    )
    if args.eval_datalist:
        from ai_engine.grading.evaluate import compare_folders

        comparison = compare_folders(args.model, args.out, args.eval_datalist, args.eval_split)
        manifest = read_manifest(args.out)
        update_manifest(
            args.out, metrics={**manifest.get("metrics", {}), "quantization": comparison}
        )
        result["comparison"] = comparison
    print(json.dumps(result, indent=2))
    return 0
