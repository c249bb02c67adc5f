"""Model folder -> exported / quantized model folder, for any task.

The derived folder keeps the parent's task, preprocessing, postprocessing, training data
and metrics, records how it was made (`made_by` + `made_by_params`) and points to its
parent, so `predict` of the task loads it like the original.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai_engine.deploy.export import (
    export_onnx,
    export_torchscript,
    load_torchscript,
    max_abs_diff,
    onnx_session,
    run_onnx,
)
from ai_engine.deploy.quantize import (
    count_linear_layers,
    quantize_dynamic_linear,
    quantize_onnx_static,
    quantize_torch_static,
)
from ai_engine.errors import InputError, ModelFolderError
from ai_engine.modelfolder import (
    Component,
    load_model_folder,
    manifest_digest,
    read_manifest,
    save_model_folder,
)

__all__ = [
    "QUANTIZE_METHODS",
    "component_input_shape",
    "export_folder",
    "quantize_folder",
    "torch_components",
]

#: `quantize_folder` methods.
QUANTIZE_METHODS: tuple[str, ...] = ("auto", "dynamic", "static", "torch-static")


def torch_components(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.nn.Module]]:
    """The manifest and the PyTorch modules (state-dict components) of a model folder.

    Raises:
        ModelFolderError: no folder, or a component that is not a state dict.
    """
    manifest = read_manifest(path)
    bad = [n for n, c in manifest["components"].items() if c.get("format") != "state_dict"]
    if bad:
        raise ModelFolderError(
            f"{path}: components {bad} are already {manifest['made_by']} "
            f"({', '.join(manifest['components'][n]['format'] for n in bad)}); export and "
            "quantize start from a folder with PyTorch weights (a trained or distilled one)"
        )
    folder = load_model_folder(path, device="cpu")
    return manifest, {n: m for n, m in folder.components.items()}  # type: ignore[misc]


def component_input_shape(
    manifest: Mapping[str, Any], name: str, override: Mapping[str, Sequence[int]] | None = None
) -> tuple[int, ...]:
    """Input shape (C, *spatial) of a component, without the batch axis.

    Taken from `override[name]`, else the component's `extra["input_shape"]`, else the
    folder's `preprocessing` (`channels` + `spatial_size`, or `patch_size` + `in_channels`).

    Raises:
        InputError: no shape can be found (give `--input-shape NAME=C,X,Y,Z`).
    """
    if override and name in override:
        return tuple(int(v) for v in override[name])
    comp = manifest["components"][name]
    extra = comp.get("extra") or {}
    if extra.get("input_shape"):
        return tuple(int(v) for v in extra["input_shape"])
    pre = manifest.get("preprocessing") or {}
    kwargs = ((comp.get("network") or {}).get("kwargs")) or {}
    channels = len(pre["channels"]) if pre.get("channels") else kwargs.get("in_channels")
    spatial = pre.get("spatial_size") or pre.get("patch_size")
    if channels and spatial and len(manifest["components"]) == 1:
        return (int(channels), *(int(s) for s in spatial))
    raise InputError(
        f"cannot tell the input shape of component {name!r}; give --input-shape {name}=C,X,Y,Z"
    )


def _derived(
    src: Path,
    out: Path,
    manifest: Mapping[str, Any],
    components: dict[str, Component],
    made_by: str,
    params: dict,
) -> Path:
    return save_model_folder(
        out,
        task=manifest.get("task", ""),
        components=components,
        made_by=made_by,
        made_by_params=params,
        preprocessing=manifest.get("preprocessing"),
        postprocessing=manifest.get("postprocessing"),
        training_data=manifest.get("training_data"),
        metrics=manifest.get("metrics"),
        parent={
            "path": str(src.resolve()),
            "sha256": manifest_digest(src),
            "made_by": manifest["made_by"],
        },
        extra=manifest.get("extra"),
    )


def export_folder(
    src: str | Path,
    out: str | Path,
    fmt: str = "onnx",
    exporter: str = "dynamo",
    tolerance: float = 1e-4,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Export every component of a model folder to TorchScript or ONNX, with a parity check.

    The parity check runs the PyTorch module and the export (TorchScript, or ONNX Runtime)
    on the same random batch of 2 and records the max abs difference per component.

    Args:
        src: a model folder with PyTorch weights.
        out: the exported model folder to write.
        fmt: "onnx" or "torchscript".
        exporter: ONNX exporter, "dynamo" or "legacy" (falls back to the other on failure).
        tolerance: largest accepted max abs difference.
        input_shapes: per-component input shape overrides (C, *spatial).
        seed: seed of the parity batch.

    Returns:
        `{"format", "components": {name: {"max_abs_diff", "exporter"}}, "folder"}`.

    Raises:
        ModelFolderError: the parity check fails (nothing is written then).
    """
    if fmt not in {"onnx", "torchscript"}:
        raise InputError(f"format must be 'onnx' or 'torchscript', got {fmt!r}")
    src, out = Path(src), Path(out)
    manifest, modules = torch_components(src)
    report: dict[str, Any] = {}
    components: dict[str, Component] = {}
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        for name, module in modules.items():
            shape = component_input_shape(manifest, name, input_shapes)
            gen = torch.Generator().manual_seed(seed)
            example = torch.randn(1, *shape, generator=gen)
            batch = torch.randn(2, *shape, generator=gen)
            with torch.no_grad():
                reference = module(batch)
            if fmt == "torchscript":
                path = export_torchscript(module, example, Path(tmp) / f"{name}.ts")
                with torch.no_grad():
                    got = load_torchscript(path)(batch)
                used = "torch.jit.trace"
            else:
                path, used = export_onnx(
                    module, example, Path(tmp) / f"{name}.onnx", exporter=exporter
                )  # type: ignore[arg-type]
                got = run_onnx(onnx_session(path), batch.numpy())
            diff = max_abs_diff(reference, got)
            report[name] = {"max_abs_diff": diff, "exporter": used, "input_shape": list(shape)}
            if not diff <= tolerance:
                raise ModelFolderError(
                    f"{fmt} export of {name!r} differs from PyTorch by {diff:.3g} > {tolerance:g}; "
                    "nothing written"
                )
            spec = manifest["components"][name]
            net = spec.get("network") or {}
            components[name] = Component(
                format=fmt,
                network=net.get("name"),
                network_kwargs=net.get("kwargs") or {},
                source_file=path,
                extra={**(spec.get("extra") or {}), "input_shape": list(shape)},
            )
        params = {"format": fmt, "tolerance": tolerance, "parity": report}
        _derived(src, out, manifest, components, "exported", params)
    return {"folder": str(out), "format": fmt, "components": report}


def _is_transformer(module: torch.nn.Module) -> bool:
    """True when the module holds attention blocks (MONAI `SABlock`/`TransformerBlock`, torch MHA)."""
    names = {"SABlock", "TransformerBlock", "MultiheadAttention", "CrossAttentionBlock"}
    return any(type(m).__name__ in names for m in module.modules())


def _linear_share(module: torch.nn.Module) -> float:
    linear = sum(
        p.numel()
        for m in module.modules()
        if isinstance(m, torch.nn.Linear)
        for p in m.parameters()
    )
    total = sum(p.numel() for p in module.parameters())
    return linear / max(total, 1)


def quantize_folder(
    src: str | Path,
    out: str | Path,
    method: str = "auto",
    calibration_batches: Sequence[np.ndarray] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    exporter: str = "legacy",
) -> dict[str, Any]:
    """INT8-quantize every component of a model folder for CPU inference.

    Args:
        src: a model folder with PyTorch weights.
        out: the quantized model folder to write.
        method: "dynamic" (torch dynamic quantization of Linear layers -> TorchScript),
            "static" (ONNX Runtime QDQ static quantization -> ONNX), "torch-static" (PyTorch
            FX static quantization, fbgemm kernels -> TorchScript) or "auto" (dynamic when
            Linear layers hold most parameters, as in a ViT; static otherwise).
        calibration_batches: float32 input batches (B, C, *spatial) for "static" and
            "torch-static"; one list used for a single-component folder.
        input_shapes: per-component input shape overrides.
        exporter: ONNX exporter used before static quantization.

    Returns:
        `{"folder", "components": {name: {"method", ...}}}`.
    """
    if method not in QUANTIZE_METHODS:
        raise InputError(f"method must be one of {', '.join(QUANTIZE_METHODS)}, got {method!r}")
    src, out = Path(src), Path(out)
    manifest, modules = torch_components(src)
    report: dict[str, Any] = {}
    components: dict[str, Component] = {}
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        for name, module in modules.items():
            shape = component_input_shape(manifest, name, input_shapes)
            example = torch.zeros(1, *shape)
            chosen = method
            if chosen == "auto":
                transformer = _is_transformer(module) or _linear_share(module) > 0.5
                chosen = "dynamic" if transformer else "static"
            spec = manifest["components"][name]
            net = spec.get("network") or {}
            extra = {**(spec.get("extra") or {}), "input_shape": list(shape)}
            if chosen == "dynamic":
                if count_linear_layers(module) == 0:
                    raise InputError(f"component {name!r} has no Linear layer: use --method static")
                qmodule = quantize_dynamic_linear(module)
                path = export_torchscript(qmodule, example, Path(tmp) / f"{name}.ts")
                fmt = "torchscript"
            elif chosen == "torch-static":
                if not calibration_batches:
                    raise InputError(
                        "static quantization needs calibration data (--calibration-datalist or --calibration-npz)"
                    )
                try:
                    qscript = quantize_torch_static(module, calibration_batches)
                except Exception as exc:  # FX tracing is not possible for every network
                    raise InputError(
                        f"component {name!r} cannot be quantized with torch FX ({exc}); "
                        "use --method static (ONNX Runtime)"
                    ) from exc
                path = Path(tmp) / f"{name}.ts"
                torch.jit.save(qscript, str(path))
                fmt = "torchscript"
            else:
                if not calibration_batches:
                    raise InputError(
                        "static quantization needs calibration data (--calibration-datalist or --calibration-npz)"
                    )
                fp32, _ = export_onnx(
                    module, example, Path(tmp) / f"{name}.fp32.onnx", exporter=exporter
                )  # type: ignore[arg-type]
                path = quantize_onnx_static(fp32, Path(tmp) / f"{name}.onnx", calibration_batches)
                fmt = "onnx"
            report[name] = {
                "method": chosen,
                "format": fmt,
                "linear_parameter_share": round(_linear_share(module), 4),
                "calibration_batches": len(calibration_batches or [])
                if chosen in {"static", "torch-static"}
                else 0,
            }
            components[name] = Component(
                format=fmt,
                network=net.get("name"),
                network_kwargs=net.get("kwargs") or {},
                source_file=path,
                extra=extra,
            )
        _derived(
            src, out, manifest, components, "quantized", {"dtype": "int8", "components": report}
        )
    return {"folder": str(out), "components": report}
