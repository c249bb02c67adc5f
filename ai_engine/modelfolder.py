"""Model folders: a trained (or exported, quantized, distilled) model that describes itself.

Layout::

    MODEL_DIR/
      model.json            manifest (written last: a folder without it is incomplete)
      weights.pt | model.ts | model.onnx          the component "model"
      <name>.weights.pt | <name>.ts | <name>.onnx other components (e.g. a detector has
                                                  "candidates" and "fp_reduction")
      log.jsonl, ...        anything else the producer keeps (listed in "files")

`model.json`::

    {"format_version": 1, "task": "nodule-detection", "made_by": "trained",
     "made_by_params": {...}, "created_at": "...", "versions": {"ai_engine", "torch", "monai"},
     "components": {"model": {"format": "state_dict" | "torchscript" | "onnx", "file": ...,
                              "network": {"name": "resnet3d", "kwargs": {...}} | null,
                              "sha256": ...}},
     "preprocessing": {...}, "postprocessing": {...}, "training_data": {...},
     "metrics": {...}, "parent": {...} | null, "extra": {...}}

`load_model_folder(path)` gives back a `ModelFolder` whose components are runnable:
a `torch.nn.Module` (state dict + network from `ai_engine.networks`), a TorchScript module,
or an `OnnxRunner`; each is called as `runner(tensor) -> tensor`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai_engine.errors import ModelFolderError

FORMAT_VERSION = 1
MANIFEST = "model.json"
MADE_BY = ("trained", "exported", "quantized", "distilled")
FORMATS = {"state_dict": "weights.pt", "torchscript": "model.ts", "onnx": "model.onnx"}
_SUFFIX = {"state_dict": ".weights.pt", "torchscript": ".ts", "onnx": ".onnx"}


def component_file_name(component: str, fmt: str) -> str:
    """File name of a component: `weights.pt`/`model.ts`/`model.onnx` for "model",
    `<component>.weights.pt` etc. otherwise."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    return FORMATS[fmt] if component == "model" else f"{component}{_SUFFIX[fmt]}"


@dataclass
class Component:
    """One network of a model folder, to be written by `save_model_folder`.

    Give `module` for a state dict (with `network`/`network_kwargs` naming its builder in
    `ai_engine.networks`), or `source_file` for a ready TorchScript/ONNX file (the network is
    then optional, kept for the record).

    Attributes:
        format: "state_dict", "torchscript" or "onnx".
        network: registry name of the network (required for "state_dict").
        network_kwargs: keyword arguments of the builder.
        module: the module whose `state_dict()` is saved ("state_dict"), or which is saved with
            `torch.jit.save` when it is a ScriptModule ("torchscript").
        source_file: an existing file copied into the folder.
        extra: anything the consumer needs about this component (input size, output meaning).
    """

    format: str = "state_dict"
    network: str | None = None
    network_kwargs: dict[str, Any] = field(default_factory=dict)
    module: torch.nn.Module | None = None
    source_file: str | Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {sorted(FORMATS)}, got {self.format!r}")
        if self.format == "state_dict" and (
            self.network is None or (self.module is None and self.source_file is None)
        ):
            raise ValueError(
                "a state_dict component needs `network` and `module` (or `source_file`)"
            )
        if self.format != "state_dict" and self.source_file is None and self.module is None:
            raise ValueError(f"a {self.format} component needs `source_file` (or a ScriptModule)")
        if self.format == "onnx" and self.source_file is None:
            raise ValueError("an onnx component needs `source_file`")


class OnnxRunner:
    """Run an ONNX file with onnxruntime (CPU): `runner(tensor) -> tensor` (first output)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort  # heavy, optional: only when an ONNX component is loaded

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().cpu().numpy().astype(np.float32)
        out = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(np.asarray(out))

    def eval(self) -> OnnxRunner:
        """No-op for symmetry with torch modules."""
        return self


Runner = torch.nn.Module | OnnxRunner | Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ModelFolder:
    """A loaded model folder.

    Attributes:
        path: the folder.
        manifest: the parsed `model.json`.
        components: runnable components by name (modules are in eval mode on `device`).
        device: where torch components live.
    """

    path: Path
    manifest: dict[str, Any]
    components: dict[str, Runner]
    device: torch.device

    @property
    def task(self) -> str:
        return str(self.manifest.get("task", ""))

    @property
    def made_by(self) -> str:
        return str(self.manifest["made_by"])

    @property
    def preprocessing(self) -> dict[str, Any]:
        return dict(self.manifest.get("preprocessing") or {})

    @property
    def postprocessing(self) -> dict[str, Any]:
        return dict(self.manifest.get("postprocessing") or {})

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.manifest.get("metrics") or {})

    @property
    def model(self) -> Runner:
        """The component named "model" (single-network folders)."""
        return self.component("model")

    def component(self, name: str = "model") -> Runner:
        """A runnable component by name."""
        if name not in self.components:
            raise ModelFolderError(
                f"model folder {self.path} has no component {name!r} (has {sorted(self.components)})"
            )
        return self.components[name]

    def predict(self, x: torch.Tensor, component: str = "model") -> torch.Tensor:
        """Run a component on a batch without gradients; returns a CPU tensor."""
        runner = self.component(component)
        with torch.no_grad():
            if isinstance(runner, torch.nn.Module | torch.jit.ScriptModule):
                x = x.to(self.device)
            return runner(x).detach().cpu()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import monai

    try:
        platform_version = version("imaging-platform")
    except PackageNotFoundError:
        platform_version = "0.1.0"
    return {"ai_engine": platform_version, "torch": torch.__version__, "monai": monai.__version__}


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON (tuples -> lists, numpy scalars -> numbers) or fail clearly."""
    return json.loads(
        json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    )


def save_model_folder(
    path: str | Path,
    *,
    task: str,
    components: Mapping[str, Component],
    made_by: str = "trained",
    made_by_params: Mapping[str, Any] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    postprocessing: Mapping[str, Any] | None = None,
    training_data: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    parent: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, str | Path] | None = None,
) -> Path:
    """Write a model folder (component files first, `model.json` last).

    Args:
        path: the folder (created; existing component files and manifest are replaced).
        task: what the model does ("nodule-detection", "tumor-grading", ...).
        components: name -> `Component`; single-network models use the name "model".
        made_by: "trained", "exported", "quantized" or "distilled".
        made_by_params: how it was made (training config, export options, teacher folder...).
        preprocessing: everything `predict` must do to an image before the network.
        postprocessing: everything after it (thresholds, score combination...).
        training_data: e.g. `ai_engine.training.training_data_hash(...)`.
        metrics: validation/test metrics.
        parent: the folder this one was derived from (`{"path", "sha256"}` of its manifest).
        extra: anything else (kept verbatim under "extra").
        extra_files: name in folder -> file to copy (logs, curves).

    Returns:
        The folder path.
    """
    if made_by not in MADE_BY:
        raise ValueError(f"made_by must be one of {MADE_BY}, got {made_by!r}")
    if not components:
        raise ValueError("a model folder needs at least one component")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    comp_manifest: dict[str, Any] = {}
    for name, comp in components.items():
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"bad component name {name!r}")
        file_name = component_file_name(name, comp.format)
        dest = path / file_name
        if comp.source_file is not None:
            src = Path(comp.source_file)
            if not src.is_file():
                raise FileNotFoundError(src)
            if src.resolve() != dest.resolve():
                shutil.copyfile(src, dest)
        elif comp.format == "state_dict":
            assert comp.module is not None
            state = {k: v.detach().cpu() for k, v in comp.module.state_dict().items()}
            torch.save(state, dest)
        else:  # torchscript from a ScriptModule
            if not isinstance(comp.module, torch.jit.ScriptModule):
                raise ValueError(
                    f"component {name!r}: torchscript needs a ScriptModule or source_file"
                )
            torch.jit.save(comp.module, str(dest))
        comp_manifest[name] = {
            "format": comp.format,
            "file": file_name,
            "network": {"name": comp.network, "kwargs": _jsonable(comp.network_kwargs)}
            if comp.network
            else None,
            "sha256": _sha256(dest),
            "extra": _jsonable(comp.extra),
        }
    copied = []
    for name, src in (extra_files or {}).items():
        src = Path(src)
        if src.is_file() and src.resolve() != (path / name).resolve():
            shutil.copyfile(src, path / name)
        if (path / name).is_file():
            copied.append(name)
    manifest = {
        "format_version": FORMAT_VERSION,
        "task": task,
        "made_by": made_by,
        "made_by_params": _jsonable(dict(made_by_params or {})),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        "components": comp_manifest,
        "preprocessing": _jsonable(dict(preprocessing or {})),
        "postprocessing": _jsonable(dict(postprocessing or {})),
        "training_data": _jsonable(dict(training_data or {})),
        "metrics": _jsonable(dict(metrics or {})),
        "parent": _jsonable(dict(parent)) if parent else None,
        "extra": _jsonable(dict(extra or {})),
        "files": sorted(copied),
    }
    _write_json_atomic(path / MANIFEST, manifest)
    return path


def _write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".model.", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The validated `model.json` of a folder.

    Raises:
        ModelFolderError: no folder, no manifest, unreadable or incompatible manifest.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(f"model folder not found: {path}")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ModelFolderError(f"{path} is not a model folder: {MANIFEST} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{manifest_path} is not valid JSON: {exc}") from exc
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise ModelFolderError(
            f"{manifest_path}: format_version {version!r} is not supported (this ai_engine reads "
            f"{FORMAT_VERSION}); re-export the model with this version"
        )
    for key in ("made_by", "components"):
        if key not in manifest:
            raise ModelFolderError(f"{manifest_path} lacks {key!r}")
    if manifest["made_by"] not in MADE_BY:
        raise ModelFolderError(f"{manifest_path}: made_by {manifest['made_by']!r} not in {MADE_BY}")
    if not isinstance(manifest["components"], dict) or not manifest["components"]:
        raise ModelFolderError(f"{manifest_path} lists no components")
    return manifest


def _load_component(
    folder: Path, name: str, spec: Mapping[str, Any], device: torch.device, verify: bool
) -> Runner:
    fmt = spec.get("format")
    file = folder / str(spec.get("file", ""))
    if not file.is_file():
        raise ModelFolderError(
            f"model folder {folder}: component {name!r} file {file.name} is missing"
        )
    if verify and spec.get("sha256") and _sha256(file) != spec["sha256"]:
        raise ModelFolderError(
            f"model folder {folder}: {file.name} does not match its sha256 in {MANIFEST}"
        )
    if fmt == "state_dict":
        from ai_engine.networks import build_network

        net = spec.get("network") or {}
        try:
            module = build_network(net["name"], **net.get("kwargs", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFolderError(
                f"model folder {folder}: cannot build network of {name!r}: {exc}"
            ) from exc
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
            module.load_state_dict(state)
        except Exception as exc:  # corrupt file or weights of another network
            raise ModelFolderError(
                f"model folder {folder}: cannot load {file.name}: {exc}"
            ) from exc
        return module.to(device).eval()
    if fmt == "torchscript":
        try:
            return torch.jit.load(str(file), map_location=device).eval()
        except Exception as exc:
            raise ModelFolderError(
                f"model folder {folder}: cannot load {file.name}: {exc}"
            ) from exc
    if fmt == "onnx":
        try:
            return OnnxRunner(file)
        except Exception as exc:
            raise ModelFolderError(
                f"model folder {folder}: cannot load {file.name}: {exc}"
            ) from exc
    raise ModelFolderError(f"model folder {folder}: component {name!r} has unknown format {fmt!r}")


def load_model_folder(
    path: str | Path, device: str | torch.device = "cpu", *, verify: bool = True
) -> ModelFolder:
    """Load every component of a model folder, ready to run.

    Args:
        path: the folder.
        device: where torch components go (ONNX components run on the CPU).
        verify: check each component file against the sha256 in the manifest.

    Raises:
        ModelFolderError: missing or incomplete folder, corrupt or mismatched weights.
    """
    path = Path(path)
    manifest = read_manifest(path)
    device = torch.device(device)
    components = {
        name: _load_component(path, name, spec, device, verify)
        for name, spec in manifest["components"].items()
    }
    return ModelFolder(path=path, manifest=manifest, components=components, device=device)


def update_manifest(path: str | Path, **fields: Any) -> dict[str, Any]:
    """Set top-level manifest fields (e.g. `metrics=...` after an evaluation) and rewrite it."""
    manifest = read_manifest(path)
    for key, value in fields.items():
        if key in {"format_version", "components"}:
            raise ValueError(f"{key} cannot be updated")
        manifest[key] = _jsonable(value)
    _write_json_atomic(Path(path) / MANIFEST, manifest)
    return manifest


def manifest_digest(path: str | Path) -> str:
    """sha256 of a folder's `model.json` (to record as `parent` of a derived folder)."""
    read_manifest(path)
    return _sha256(Path(path) / MANIFEST)
