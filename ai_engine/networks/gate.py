"""Tumor attention gate: a learned soft mask on a feature map, for classifiers whose
explanations must point at the lesion.

A grading network that sees the whole head can lean on structures away from the lesion
(scalp, field-of-view border); its Grad-CAM maps then point there. `TumorGate` predicts, at
each feature voxel, a gate logit `s` (a small conv branch) and passes on `features *
sigmoid(s)`, so what follows sees mostly the gated region (attention-gated classifiers,
Schlemper et al., Med. Image Anal. 2019). Training supervises `s` with the tumor mask when
the datalist has one (`ai_engine.training.seg_aux`, hook point `gate_logits`); at inference
the gate is the network's own prediction, no mask is used. `gated` is the hook point for
Grad-CAM: the class score depends on the features only through it.
"""

from __future__ import annotations

import torch

__all__ = ["TumorGate"]


class TumorGate(torch.nn.Module):
    """`x -> x * sigmoid(s(x))` with `s` = conv3 -> ReLU -> conv1 (one gate map).

    Args:
        channels: feature channels of `x` (B, C, *spatial).
        hidden: channels of the gate branch.
        spatial_dims: 3 (or 2).
        normalize: scale the output by `N / (sum(gate) + offset)` (N = voxels) so that its
            mean over space is the gate-weighted mean of the features (for a classifier that
            mean-pools the gated map straight into its linear head).
        offset: the normalisation's offset in voxels: a gated volume well below it is
            shrunk towards zero, so the pooled vector keeps a cue of the lesion's size.
    """

    def __init__(
        self,
        channels: int,
        hidden: int = 16,
        spatial_dims: int = 3,
        normalize: bool = False,
        offset: float = 1.0,
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.offset = float(offset)
        self._dims = tuple(range(1, spatial_dims + 2))
        conv = torch.nn.Conv3d if spatial_dims == 3 else torch.nn.Conv2d
        self.branch = torch.nn.Sequential(
            conv(channels, hidden, 3, padding=1),
            torch.nn.ReLU(inplace=True),
            conv(hidden, 1, 1),
        )
        self.gate_logits = torch.nn.Identity()  # (B, 1, *spatial): supervised by the mask
        self.gated = torch.nn.Identity()  # (B, C, *spatial): Grad-CAM target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate_logits(self.branch(x))
        g = torch.sigmoid(s)
        if self.normalize:  # mean pooling of the output = gate-weighted mean of the features
            # shapes from tensors, not Python ints, so that torch.fx can trace it (INT8 export)
            n = torch.ones_like(g).sum(dim=self._dims, keepdim=True)
            g = g * (n / (g.sum(dim=self._dims, keepdim=True) + self.offset))
        return self.gated(x * g)
