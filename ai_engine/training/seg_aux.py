"""Auxiliary lesion segmentation for classifiers (training only): the grading networks'
tumour, the nodule detector's false-positive classifier's nodule.

A grading network trained on the grade alone may find shortcuts away from the lesion (the
scalp and the field-of-view border are the brightest structures of the phantoms and of real
MRI), and its Grad-CAM maps then point there. When the datalist gives `tumor_mask`, training
adds small 1x1x1 convolution heads on some of the network's feature maps that predict, at
each feature voxel, the fraction of tumor it covers (deep supervision on the mask, as in
multi-task grading networks). The heads make those feature maps encode where the lesion is;
the classifier itself is unchanged, the heads are dropped when the model folder is written,
and explanations never see a mask.

A one-channel layer (the logits of a `ai_engine.networks.gate.TumorGate`) is supervised
directly, so the gate that decides what the classifier sees learns to find the tumor. The
detector's gated false-positive classifier (`ai_engine.detection.train`) uses the same
wrapper and loss with the nodule's sphere as the mask.

`TumorSegAux` wraps the network for the shared `Trainer`: forward hooks on the named layers
capture their outputs (a transformer's `(B, N, D)` tokens are laid out on the model's `grid`),
and `forward` returns `(logits, [segmentation logits per layer])`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from ai_engine.networks.probe import probe_outputs

__all__ = ["SegAuxLoss", "TumorSegAux", "layer_channels"]


def _as_grid(out: object, grid: Sequence[int] | None) -> torch.Tensor:
    t = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"layer output is {type(t).__name__}, not a tensor")
    if t.ndim == 3:  # (B, N, D) tokens: the last prod(grid) are the patch tokens
        if grid is None:
            raise ValueError("a token layer needs the model's `grid` to be laid out")
        n_patch = int(np.prod(grid))
        b, _, d = t.shape
        t = t[:, -n_patch:].transpose(1, 2).reshape(b, d, *grid)
    return t


def layer_channels(
    model: torch.nn.Module, layers: Sequence[str], example: torch.Tensor
) -> list[int]:
    """Feature channels of each named layer's output for an example input."""
    grid = getattr(model, "grid", None)
    seen = dict(
        probe_outputs(model, example, layers, lambda out: int(_as_grid(out, grid).shape[1]))
    )
    return [seen[name] for name in layers]


class TumorSegAux(torch.nn.Module):
    """A grading network plus 1x1x1 tumor-fraction heads on named feature layers.

    Args:
        net: the grading network (returns logits).
        layers: module names of `net` whose outputs get a head (spatial maps, or tokens when
            `net` has a `grid`).
        channels: feature channels of each layer (see `layer_channels`).
    """

    def __init__(self, net: torch.nn.Module, layers: Sequence[str], channels: Sequence[int]):
        super().__init__()
        if len(layers) != len(channels) or not layers:
            raise ValueError("give one channel count per auxiliary layer (at least one layer)")
        self.net = net
        self.layers = list(layers)
        # A one-channel layer (a gate's logits) is supervised as it is; others get a head.
        self.heads = torch.nn.ModuleList(
            torch.nn.Identity() if int(c) == 1 else torch.nn.Conv3d(int(c), 1, 1) for c in channels
        )
        self._features: dict[str, torch.Tensor] = {}
        grid = getattr(net, "grid", None)
        self._handles = []
        for name in self.layers:

            def hook(_m: torch.nn.Module, _i: object, out: object, name: str = name) -> None:
                self._features[name] = _as_grid(out, grid)

            self._handles.append(net.get_submodule(name).register_forward_hook(hook))

    def remove_hooks(self) -> None:
        """Detach the feature hooks from `net` (call before using `net` on its own)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self._features.clear()
        logits = self.net(x)
        segs = [
            head(self._features[name]) for name, head in zip(self.layers, self.heads, strict=True)
        ]
        self._features.clear()
        return logits, segs


class SegAuxLoss(torch.nn.Module):
    """Soft Dice + BCE between each head's logits and the tumor fraction at its resolution.

    The target is the model-grid tumor fraction (B, 1, *spatial) average-pooled onto each
    head's grid; samples without a mask (`weight` 0) do not count.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dice = DiceLoss(sigmoid=True, reduction="none")

    def forward(
        self, segs: Sequence[torch.Tensor], mask: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        weight = weight.float().view(-1)
        if float(weight.sum()) <= 0:
            return segs[0].sum() * 0.0
        total = segs[0].new_zeros(())
        for seg in segs:
            target = F.adaptive_avg_pool3d(mask.float(), seg.shape[2:]).clamp(0.0, 1.0)
            bce = F.binary_cross_entropy_with_logits(seg, target, reduction="none")
            bce = bce.flatten(1).mean(dim=1)
            dice = self.dice(seg, target).flatten(1).mean(dim=1)
            total = total + ((bce + dice) * weight).sum() / weight.sum()
        return total / len(segs)
