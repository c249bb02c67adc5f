"""Class-activation heat maps for any classifier: Grad-CAM, Grad-CAM++ and occlusion.

Built on `monai.visualize`. The only model-specific part is the Grad-CAM target layer:
`find_target_layer` picks the last layer whose output is still a spatial feature map
(bigger than one voxel), which is `class_layers.relu` for MONAI's DenseNet, `layer4` for
MONAI's ResNet (the detection false-positive classifier included) and `token_grid` for the
grading ViT wrapper (`ai_engine.networks.vit_classifier`). A model may also name its layer
itself with a `cam_target_layer` attribute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from monai.visualize import GradCAM, GradCAMpp, OcclusionSensitivity

from ai_engine.networks.ensemble import MeanEnsemble
from ai_engine.networks.probe import probe_outputs

__all__ = [
    "METHODS",
    "explain",
    "explain_patch_in_volume",
    "find_target_layer",
    "minmax_normalizer",
]

Method = Literal["gradcam", "gradcampp", "occlusion"]
METHODS: tuple[str, ...] = ("gradcam", "gradcampp", "occlusion")


def _logits(output: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    # MONAI's ViT returns (logits, hidden_states); everything else returns logits.
    return output[0] if isinstance(output, (tuple, list)) else output


class _LogitsOnly(torch.nn.Module):
    """Wraps a model whose forward returns a tuple so that monai.visualize sees logits only."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _logits(self.model(x))


class _TokensAsGrid(torch.nn.Module):
    """Shows Grad-CAM a transformer block's tokens as a spatial feature map.

    A block of a vision transformer outputs `(B, N, D)` tokens (or a tuple starting with
    them); Grad-CAM needs `(B, D, *grid)`. A forward hook on the block passes the last
    `prod(grid)` tokens (the patch tokens: any leading class/register tokens are left out)
    through `grid_view`, an identity on the `(B, D, *grid)` view, and puts them back, so the
    model computes exactly what it did and `monai.visualize` can hook `grid_view`. Tokens
    are in the patch embedding's row-major order (`Conv3d(...).flatten(2)`), so the view is
    `tokens.transpose(1, 2).reshape(B, D, *grid)`.
    """

    def __init__(self, model: torch.nn.Module, layer: str, grid: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.grid = tuple(int(g) for g in grid)
        self.grid_view = torch.nn.Identity()
        self._handle = model.get_submodule(layer).register_forward_hook(self._hook)

    def _hook(self, _m: torch.nn.Module, _i: object, out: object) -> object:
        tokens = out[0] if isinstance(out, (tuple, list)) else out
        assert isinstance(tokens, torch.Tensor)
        n_patch = int(np.prod(self.grid))
        b, n, d = tokens.shape
        if n < n_patch:
            raise ValueError(f"{n} tokens cannot fill a token grid of {self.grid}")
        patches = tokens[:, n - n_patch :].transpose(1, 2).reshape(b, d, *self.grid)
        patches = self.grid_view(patches).reshape(b, d, n_patch).transpose(1, 2)
        new = torch.cat([tokens[:, : n - n_patch], patches], dim=1)
        if isinstance(out, (tuple, list)):
            return type(out)([new, *out[1:]])
        return new

    def remove(self) -> None:
        self._handle.remove()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _logits(self.model(x))


def _layer_output_ndim(model: torch.nn.Module, layer: str, x: torch.Tensor) -> int:
    def ndim(out: object) -> int:
        t = out[0] if isinstance(out, (tuple, list)) else out
        return t.ndim if isinstance(t, torch.Tensor) else -1

    seen = probe_outputs(model, x, [layer], ndim)
    return seen[-1][1] if seen else -1


def find_target_layer(model: torch.nn.Module, example: torch.Tensor) -> str:
    """Name of the Grad-CAM target layer of `model`.

    Uses `model.cam_target_layer` when set; otherwise runs `example` (1, C, *spatial)
    through the model and returns the last module, in execution order, whose output is a
    (B, F, *spatial) tensor with a spatial extent above one voxel.

    Raises:
        ValueError: the model has no such layer (e.g. its features collapse to one voxel
            for this input size).
    """
    named = getattr(model, "cam_target_layer", None)
    if isinstance(named, str) and named:
        return named
    spatial_ndim = example.ndim - 2

    def spatial(out: object) -> bool:
        return (
            isinstance(out, torch.Tensor)
            and out.ndim == spatial_ndim + 2
            and max(out.shape[2:]) > 1
        )

    order = [name for name, ok in probe_outputs(model, example, keep=spatial) if ok]
    if not order:
        raise ValueError(
            f"{type(model).__name__} has no layer with a spatial output larger than one voxel "
            f"for input shape {tuple(example.shape)}; use a larger input or name a target layer"
        )
    return order[-1]


def minmax_normalizer(x: torch.Tensor) -> torch.Tensor:
    """Scale each map of a (B, 1, *spatial) batch to [0, 1], highest evidence -> 1.

    Replaces `monai.visualize`'s `default_normalizer`, which maps (min, max) to (1, 0), i.e.
    flips the map so the most important voxels get the lowest value.
    """
    flat = x.reshape(x.shape[0], -1)
    low = flat.min(dim=1).values.view(-1, *([1] * (x.ndim - 1)))
    high = flat.max(dim=1).values.view(-1, *([1] * (x.ndim - 1)))
    return torch.where(high > low, (x - low) / (high - low).clamp_min(1e-12), torch.zeros_like(x))


def _prefix(model: torch.nn.Module, layer: str) -> str:
    return f"model.{layer}" if isinstance(model, _LogitsOnly) else layer


def explain(
    model: torch.nn.Module,
    image: np.ndarray | torch.Tensor,
    method: Method = "gradcam",
    class_idx: int | None = None,
    target_layer: str | None = None,
    occlusion_mask_size: int = 8,
    occlusion_n_batch: int = 8,
) -> tuple[np.ndarray, int]:
    """Heat map of one image for one class, on the image's own grid.

    Args:
        model: a classifier returning logits (or a tuple whose first item is logits).
        image: (C, *spatial) input exactly as the model takes it (already preprocessed).
        method: "gradcam", "gradcampp" or "occlusion" (slower: one forward per mask
            position, batched).
        class_idx: class to explain; the predicted class when None.
        target_layer: Grad-CAM layer name; found with `find_target_layer` when None.
        occlusion_mask_size: edge of the occluding cube in voxels.
        occlusion_n_batch: occluded images per forward pass.

    Returns:
        `(heat, class_idx)`: heat is a float32 array of shape `spatial` scaled to [0, 1]
        (higher = more evidence for the class); class_idx the explained class.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(model, MeanEnsemble) and method != "occlusion":
        return _ensemble_cam(model, image, method, class_idx, target_layer)
    x = torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image)
    x = x.float().unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    x = x.to(device)
    try:
        with torch.no_grad():
            probe = model(x)
        if class_idx is None:
            class_idx = int(_logits(probe).argmax(dim=1)[0])
        wrapped: torch.nn.Module = model if torch.is_tensor(probe) else _LogitsOnly(model)
        if method == "occlusion":
            heat = _occlusion(wrapped, x, class_idx, occlusion_mask_size, occlusion_n_batch)
        else:
            layer = target_layer or find_target_layer(model, x)
            cam_cls = GradCAM if method == "gradcam" else GradCAMpp
            token_view = None
            target = _prefix(wrapped, layer)
            if _layer_output_ndim(model, layer, x) == 3:  # (B, N, D) transformer tokens
                grid = getattr(model, "grid", None)
                if grid is None:
                    raise ValueError(
                        f"{layer} outputs tokens but {type(model).__name__} has no `grid` "
                        "(the patch-token grid shape) to lay them out"
                    )
                token_view = _TokensAsGrid(model, layer, grid)
                wrapped, target = token_view, "grid_view"
            cam = cam_cls(nn_module=wrapped, target_layers=target, postprocessing=minmax_normalizer)
            try:
                with torch.enable_grad():
                    heat = cam(x=x, class_idx=class_idx)[0, 0].detach().cpu().numpy()
            finally:
                if token_view is not None:
                    token_view.remove()
    finally:
        model.train(was_training)
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32))
    return heat, int(class_idx)


def _ensemble_cam(
    model: MeanEnsemble,
    image: np.ndarray | torch.Tensor,
    method: Method,
    class_idx: int | None,
    target_layer: str | None,
) -> tuple[np.ndarray, int]:
    """An ensemble's CAM: the mean of its members' maps for the ensemble's class (each member
    has its own layers; the ensemble's output is the mean of theirs), scaled to [0, 1]."""
    if class_idx is None:
        x = torch.as_tensor(np.asarray(image) if not torch.is_tensor(image) else image)
        device = next(model.parameters()).device
        was_training = model.training
        try:
            with torch.no_grad():
                probe = model.eval()(x.float().unsqueeze(0).to(device))
        finally:
            model.train(was_training)
        class_idx = int(probe.argmax(dim=1)[0])
    heats = [explain(m, image, method, class_idx, target_layer)[0] for m in model.members]
    heat = np.mean(heats, axis=0)
    peak = float(heat.max())
    return (heat / peak if peak > 0 else heat).astype(np.float32), int(class_idx)


def _occlusion(
    model: torch.nn.Module, x: torch.Tensor, class_idx: int, mask_size: int, n_batch: int
) -> np.ndarray:
    """Drop of the class probability when a cube around each voxel is occluded.

    Probabilities are softmax over classes, or the sigmoid of a single-logit classifier.
    """
    with torch.no_grad():
        single_logit = model(x).shape[1] == 1
    activate = torch.sigmoid if single_logit else (lambda z: torch.softmax(z, dim=1))
    occ = OcclusionSensitivity(
        nn_module=model,
        mask_size=mask_size,
        n_batch=n_batch,
        verbose=False,
        mode="gaussian",
        overlap=0.5,
        activate=activate,
    )
    with torch.no_grad():
        base = activate(model(x))[0, class_idx].item()
        occ_map, _ = occ(x)
    drop = base - occ_map[0, class_idx].cpu().numpy()
    drop = np.clip(drop, 0.0, None)
    peak = float(drop.max())
    return drop / peak if peak > 0 else drop


def explain_patch_in_volume(
    model: torch.nn.Module,
    volume_shape: Sequence[int],
    patch_origin_voxel: Sequence[int],
    patch: np.ndarray | torch.Tensor,
    method: Method = "gradcam",
    class_idx: int | None = None,
    target_layer: str | None = None,
) -> tuple[np.ndarray, int]:
    """Explain a classifier's decision on a patch and place the map back into the scan grid.

    For detection findings: the false-positive classifier sees a candidate patch cut from
    the scan at `patch_origin_voxel`; its heat map is written into a zero volume of the
    scan's shape at the same place (clipped at the borders), so it can be saved with the
    scan's affine and overlaid on the source series.

    Args:
        model: the patch classifier.
        volume_shape: spatial shape (X, Y, Z) of the source scan.
        patch_origin_voxel: voxel index (i, j, k) of the patch's first voxel in the scan;
            may be negative or run past the end when the patch was padded.
        patch: (C, px, py, pz) patch as the model takes it.
        method: see `explain`.
        class_idx: class to explain (e.g. 1 = "true nodule"); predicted class when None.
        target_layer: Grad-CAM layer, found automatically when None.

    Returns:
        `(heat_volume, class_idx)` with heat_volume float32 of shape `volume_shape`.
    """
    volume_shape = tuple(int(n) for n in volume_shape)
    origin = [int(o) for o in patch_origin_voxel]
    if len(origin) != len(volume_shape):
        raise ValueError(
            f"patch_origin_voxel has {len(origin)} values for a {len(volume_shape)}D volume"
        )
    heat, class_idx = explain(model, patch, method, class_idx, target_layer)
    out = np.zeros(volume_shape, dtype=np.float32)
    src, dst = [], []
    for o, p, n in zip(origin, heat.shape, volume_shape, strict=True):
        lo, hi = max(o, 0), min(o + p, n)
        if hi <= lo:
            return out, class_idx
        dst.append(slice(lo, hi))
        src.append(slice(lo - o, hi - o))
    out[tuple(dst)] = heat[tuple(src)]
    return out, class_idx
