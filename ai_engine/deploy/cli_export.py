"""`python -m ai_engine export`: a model folder with PyTorch weights -> TorchScript or ONNX folder.

Examples:
  python -m ai_engine export --model models/grading-cnn --out models/grading-cnn-onnx --format onnx
  python -m ai_engine export --model models/grading-cnn --out models/grading-cnn-ts --format torchscript
The export is checked against PyTorch on a random batch (max abs difference, --tolerance);
a failed check writes nothing and exits non-zero.
"""

from __future__ import annotations

import argparse
import json

from ai_engine.errors import InputError


def parse_input_shapes(values: list[str] | None) -> dict[str, list[int]]:
    """`["model=4,48,48,48", ...]` -> `{"model": [4, 48, 48, 48]}`."""
    out: dict[str, list[int]] = {}
    for value in values or []:
        name, _, shape = value.partition("=")
        if not shape:
            name, shape = "model", value
        try:
            out[name] = [int(v) for v in shape.split(",")]
        except ValueError:
            raise InputError(f"--input-shape {value!r}: expected NAME=C,X,Y,Z") from None
    return out


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="source model folder (PyTorch weights)")
    parser.add_argument("--out", required=True, help="exported model folder to write")
    parser.add_argument("--format", default="onnx", choices=["onnx", "torchscript"])
    parser.add_argument(
        "--exporter",
        default="dynamo",
        choices=["dynamo", "legacy"],
        help="ONNX exporter (default dynamo)",
    )
    parser.add_argument(
        "--tolerance", type=float, default=1e-4, help="max abs difference accepted (default 1e-4)"
    )
    parser.add_argument(
        "--input-shape", action="append", help="NAME=C,X,Y,Z when the folder does not say"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from ai_engine.deploy.folders import export_folder

    result = export_folder(
        args.model,
        args.out,
        fmt=args.format,
        exporter=args.exporter,
        tolerance=args.tolerance,
        input_shapes=parse_input_shapes(args.input_shape),
    )
    print(json.dumps(result, indent=2))
    return 0
