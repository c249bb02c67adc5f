"""INT8 quantization for CPU inference.

Two routes, chosen by what the network is made of:

* `quantize_dynamic_linear`: torch dynamic quantization (`torch.ao.quantization
  .quantize_dynamic`). Weights of `nn.Linear` layers become int8, activations are quantized
  on the fly. Only Linear layers are touched, so it helps transformers (the ViT) and does
  nothing for conv nets. The result is saved as TorchScript.
* `quantize_onnx_static`: ONNX Runtime static quantization in QDQ format with a
  calibration data reader (`onnxruntime.quantization.quantize_static`). Convolutions and
  MatMuls get int8 weights and activations with ranges calibrated on sample inputs. Whether
  this is faster depends on ORT's int8 kernels for the op (3D convolutions may run as
  dequantize -> float conv -> quantize); measure with `bench/bench_grading.py`.
* `quantize_torch_static`: PyTorch static quantization in FX graph mode
  (`torch.ao.quantization.quantize_fx`, x86 backend: fbgemm int8 kernels, 3D convolutions
  included): int8 weights (per-channel scales) and activations (ranges calibrated on sample
  inputs), traced and frozen to TorchScript. For the grading CNN this is the route that is
  faster than FP32 on 2 CPU threads (see docs/ai_engine.md for the measured figures).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "count_linear_layers",
    "quantize_dynamic_linear",
    "quantize_onnx_static",
    "quantize_torch_static",
]


def count_linear_layers(model: torch.nn.Module) -> int:
    """Number of `nn.Linear` modules (what dynamic quantization can convert)."""
    return sum(isinstance(m, torch.nn.Linear) for m in model.modules())


def quantize_dynamic_linear(model: torch.nn.Module) -> torch.nn.Module:
    """Int8 dynamic quantization of every `nn.Linear` (CPU only; returns a new module).

    Raises:
        ValueError: the model has no Linear layer worth quantizing.
    """
    if count_linear_layers(model) == 0:
        raise ValueError("the model has no nn.Linear layer; use ONNX Runtime static quantization")
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(model.cpu().eval(), {torch.nn.Linear}, dtype=torch.qint8)


class _BatchReader:
    """`onnxruntime.quantization.CalibrationDataReader` over a list of float32 batches."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]) -> None:
        self.input_name = input_name
        self._batches = [np.ascontiguousarray(b, dtype=np.float32) for b in batches]
        self._iter = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._iter = iter(self._batches)


def quantize_onnx_static(
    onnx_in: str | Path,
    onnx_out: str | Path,
    calibration_batches: Sequence[np.ndarray],
    per_channel: bool = True,
    op_types: Sequence[str] | None = None,
) -> Path:
    """ONNX Runtime static int8 quantization (QDQ format, MinMax calibration).

    Args:
        onnx_in: float ONNX model.
        onnx_out: where to write the quantized model.
        calibration_batches: float32 input batches (B, C, *spatial) run through the model to
            collect activation ranges; use real preprocessed studies (10-100 are enough).
        per_channel: per-output-channel weight scales (more accurate for convolutions).
        op_types: restrict quantization to these op types (default: all ORT supports).

    Returns:
        The written path.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration_batches:
        raise ValueError("calibration_batches is empty: static quantization needs sample inputs")
    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    prepared = onnx_out.with_name(onnx_out.stem + ".prep.onnx")
    import onnx

    input_name = onnx.load(str(onnx_in), load_external_data=False).graph.input[0].name
    try:
        try:
            quant_pre_process(str(onnx_in), str(prepared), skip_symbolic_shape=True)
            source = prepared
        except Exception:  # pre-processing is an optimisation; quantize the raw graph instead
            source = onnx_in
        quantize_static(
            str(source),
            str(onnx_out),
            _BatchReader(input_name, calibration_batches),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(op_types) if op_types else None,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": True},
        )
    finally:
        prepared.unlink(missing_ok=True)
    return onnx_out


def quantize_torch_static(
    model: torch.nn.Module, calibration_batches: Sequence[np.ndarray]
) -> torch.jit.ScriptModule:
    """PyTorch FX static int8 quantization (x86/fbgemm), returned as frozen TorchScript.

    Args:
        model: an FX-traceable float network (e.g. MONAI's ResNet); not modified.
        calibration_batches: float32 input batches (B, C, *spatial) of real preprocessed
            studies, run through the observed model to set the activation ranges.

    Raises:
        ValueError: no calibration batches.
    """
    import copy

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if not calibration_batches:
        raise ValueError("calibration_batches is empty: static quantization needs sample inputs")
    example = torch.as_tensor(np.asarray(calibration_batches[0], dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        float_model = copy.deepcopy(model).cpu().eval()
        prepared = prepare_fx(float_model, get_default_qconfig_mapping("x86"), (example,))
        with torch.no_grad():
            for batch in calibration_batches:
                prepared(torch.as_tensor(np.asarray(batch, dtype=np.float32)))
        quantized = convert_fx(prepared)
        with torch.no_grad():
            traced = torch.jit.trace(quantized, (example,))
        return torch.jit.freeze(traced.eval())
