"""Export any torch classifier to TorchScript and ONNX, and check the exports reproduce it.

Findings with torch 2.13 + onnxscript 0.7 (see docs/ai_engine.md): `torch.onnx.export`
defaults to the dynamo (torch.export) exporter; it handles MONAI's DenseNet, ResNet and
ViT but takes ~25 s for a small 3D DenseNet on 2 cores, while the legacy TorchScript-based
exporter (`dynamo=False`, deprecated) takes ~1.5 s and gives the same outputs. Both are
offered; "dynamo" is the default and falls back to "legacy" if it fails. TorchScript is
written with `torch.jit.trace` (scripting fails on MONAI blocks with dynamic Python).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

__all__ = [
    "EXPORTERS",
    "export_onnx",
    "export_torchscript",
    "file_size_mb",
    "load_torchscript",
    "max_abs_diff",
    "onnx_session",
    "run_onnx",
    "time_per_call",
]

EXPORTERS: tuple[str, ...] = ("dynamo", "legacy")
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Trace `model` (in eval mode) on `example` (B, C, *spatial) and save it.

    Returns:
        The written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(model, example, check_trace=False)
        traced = torch.jit.freeze(traced) if _freezable(traced) else traced
        torch.jit.save(traced, str(path))
    return path


def _freezable(module: torch.jit.ScriptModule) -> bool:
    # Freezing folds weights into constants (faster CPU inference); quantized modules refuse it.
    return not any("quantized" in type(m).__module__ for m in module.modules())


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """Load a TorchScript file on the CPU (eval mode)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu").eval()


def export_onnx(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: str | Path,
    exporter: Literal["dynamo", "legacy"] = "dynamo",
    opset: int = 18,
    fallback: bool = True,
) -> tuple[Path, str]:
    """Export `model` to ONNX with a dynamic batch axis (input "image", output "logits").

    Args:
        model: the classifier (put in eval mode).
        example: (B, C, *spatial) example input; the spatial size is fixed in the graph.
        path: output .onnx path.
        exporter: "dynamo" (torch.export based, the default of torch 2.13) or "legacy".
        opset: ONNX opset.
        fallback: try the other exporter when the chosen one fails.

    Returns:
        `(path, exporter_used)`.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    order = [exporter] + ([e for e in EXPORTERS if e != exporter] if fallback else [])
    errors: list[str] = []
    for name in order:
        try:
            _export(model, example, path, name, opset)
            return path, name
        except Exception as exc:  # the exporters raise many unrelated types
            errors.append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
    raise RuntimeError("ONNX export failed: " + " | ".join(errors))


def _export(
    model: torch.nn.Module, example: torch.Tensor, path: Path, name: str, opset: int
) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if name == "dynamo":
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
                opset_version=opset,
                verbose=False,
            )
            program.save(str(path))
        else:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
            )


def onnx_session(path: str | Path, threads: int | None = None) -> object:
    """An ONNX Runtime CPU inference session for `path`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: object, batch: np.ndarray) -> np.ndarray:
    """Run an ONNX Runtime session on one float32 batch; returns its first output."""
    name = session.get_inputs()[0].name  # type: ignore[attr-defined]
    return session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0]  # type: ignore[attr-defined]


def max_abs_diff(reference: np.ndarray | torch.Tensor, other: np.ndarray | torch.Tensor) -> float:
    """Largest absolute element-wise difference of two equally shaped outputs."""
    a = reference.detach().cpu().numpy() if torch.is_tensor(reference) else np.asarray(reference)
    b = other.detach().cpu().numpy() if torch.is_tensor(other) else np.asarray(other)
    if a.shape != b.shape:
        raise ValueError(f"outputs differ in shape: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def time_per_call(fn: object, batch: object, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of `fn(batch)` over `repeats` calls after `warmup` calls."""
    times: list[float] = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        fn(batch)  # type: ignore[operator]
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def file_size_mb(paths: Sequence[str | Path] | str | Path) -> float:
    """Total size in MB (10^6 bytes) of one or more files."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    return sum(Path(p).stat().st_size for p in items) / 1e6
