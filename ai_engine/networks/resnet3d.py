"""3D ResNet classifier (MONAI `ResNet`), e.g. for false-positive reduction on patches, and
its tumor-gated variant for grading (`tumor_gate=True`, `GatedResNet`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import ResNet

from ai_engine.networks.gate import TumorGate
from ai_engine.networks.registry import register_network

__all__ = ["GatedResNet", "resnet3d"]


def _upsample_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Trilinear resampling of `x` onto `ref`'s spatial size (voxel edges aligned)."""
    return F.interpolate(x, size=ref.shape[2:], mode="trilinear", align_corners=False)


def _upsample_centers(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Trilinear resampling of stride-s features onto `ref`'s grid, sample centres aligned.

    A stride-s convolution (padding k // 2) centres its output cell i on input voxel s * i,
    not on the middle of the s voxels it replaces, which is what `_upsample_like` assumes:
    there a stage-2 feature lands 0.5 voxel and a stage-3 feature 1.5 voxels off (towards
    higher indices), which moves the gated map's maximum 1.5-2.5 mm off a small nodule.
    Here cell i lands on voxel s * i exactly (corner-aligned interpolation onto
    s * (n - 1) + 1 voxels), and the last s - 1 voxels repeat the edge.
    """
    out = []
    for n_coarse, n_fine in zip(x.shape[2:], ref.shape[2:], strict=True):
        stride = n_fine // n_coarse
        out.append((stride * (n_coarse - 1) + 1, n_fine - stride * (n_coarse - 1) - 1))
    up = F.interpolate(x, size=[n for n, _ in out], mode="trilinear", align_corners=True)
    pad = [p for _, extra in reversed(out) for p in (0, extra)]
    return F.pad(up, pad, mode="replicate")


# leaves for torch.fx (FX graph-mode INT8 quantization cannot trace a size taken from a shape)
torch.fx.wrap("_upsample_like")
torch.fx.wrap("_upsample_centers")


def _monai_resnet(
    in_channels: int,
    num_classes: int,
    layers: Sequence[int],
    block_inplanes: Sequence[int],
    block: str,
    conv1_t_size: int,
    conv1_t_stride: int,
    no_max_pool: bool,
) -> ResNet:
    return ResNet(
        block=block,
        layers=list(layers),
        block_inplanes=list(block_inplanes),
        spatial_dims=3,
        n_input_channels=in_channels,
        conv1_t_size=conv1_t_size,
        conv1_t_stride=conv1_t_stride,
        no_max_pool=no_max_pool,
        num_classes=num_classes,
    )


class GatedResNet(torch.nn.Module):
    """MONAI ResNet stages 1-3 fused on stage 1's grid, a tumor gate and a linear head.

    The features of stages 2 and 3 (coarser, larger receptive fields) are upsampled onto
    stage 1's grid (1/2 of the input with a stride-2 stem) and fused by a 1x1x1 convolution;
    a `TumorGate` (normalised) weights them, their mean is the gate-weighted mean of the
    fused features, and a linear head gives the logits. The class score is therefore a sum
    over voxels of the gated map: Grad-CAM on `gate.gated` (`cam_target_layer`) is exactly
    each voxel's share of the score (class activation mapping), at stage 1's resolution.
    The logits are centred over classes (softmax is unchanged), so the predicted class has
    a non-negative total and its map has positive evidence to show. With one output (a binary
    problem's logit, e.g. the nodule detector's false-positive classifier) nothing is centred.

    Args:
        in_channels: image channels.
        num_classes: outputs (1: one logit for a binary problem).
        layers: residual blocks per stage (the 4th stage of a MONAI ResNet is not built).
        block_inplanes: feature maps per stage (the 4th value is ignored).
        block: "basic" or "bottleneck".
        conv1_t_size: stem kernel.
        conv1_t_stride: stem stride.
        no_max_pool: skip the stem max-pool.
        fused: channels of the fused map (None: 4x stage 1's; the gate branch has 1/4 of it).
        normalize_gate: pool the gate-weighted mean (True) or the mean of the gated map over
            the whole grid (False: the pooled vector grows with the gated volume).
        gate_offset: `TumorGate`'s normalisation offset (voxels of the fused grid).
        centered_upsampling: put stages 2 and 3 back onto stage 1's grid with their sample
            centres aligned (`_upsample_centers`); False: edge-aligned (`_upsample_like`,
            half a coarse voxel off; what networks built before the option were trained with).
        head_dropout: dropout on the pooled features in front of the head, in [0, 1). With
            p > 0 the network trains with it, and MC-dropout scoring
            (`ai_engine.active_learning`) samples the network's own dropout instead of
            injecting some at scoring time (Gal et al. 2017). It has no weights: the state
            dict is the same for every p, and in eval mode the layer passes its input through.
    """

    cam_target_layer = "gate.gated"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        layers: Sequence[int] = (1, 1, 1, 1),
        block_inplanes: Sequence[int] = (16, 32, 64, 128),
        block: str = "basic",
        conv1_t_size: int = 3,
        conv1_t_stride: int = 2,
        no_max_pool: bool = True,
        fused: int | None = None,
        normalize_gate: bool = True,
        gate_offset: float = 1.0,
        centered_upsampling: bool = False,
        head_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.centered_upsampling = bool(centered_upsampling)
        if num_classes < 1:
            raise ValueError(f"GatedResNet needs num_classes >= 1, got {num_classes}")
        if not 0.0 <= float(head_dropout) < 1.0:
            raise ValueError(f"head_dropout must be in [0, 1), got {head_dropout}")
        base = _monai_resnet(
            in_channels, num_classes, layers, block_inplanes, block,
            conv1_t_size, conv1_t_stride, no_max_pool,
        )  # fmt: skip
        self.conv1, self.bn1, self.act = base.conv1, base.bn1, base.act
        self.maxpool = None if no_max_pool else base.maxpool
        self.layer1, self.layer2, self.layer3 = base.layer1, base.layer2, base.layer3
        expansion = 4 if block == "bottleneck" else 1
        channels = sum(int(c) * expansion for c in list(block_inplanes)[:3])
        fused = int(fused or 4 * int(block_inplanes[0]) * expansion)
        self.fuse = torch.nn.Sequential(
            torch.nn.Conv3d(channels, fused, 1, bias=False),
            torch.nn.BatchNorm3d(fused),
            torch.nn.ReLU(inplace=True),
        )
        self.gate = TumorGate(
            fused, hidden=max(8, fused // 4), normalize=normalize_gate, offset=gate_offset
        )
        self.head_dropout = torch.nn.Dropout(float(head_dropout))
        self.head = torch.nn.Linear(fused, num_classes)
        self.center_logits = num_classes > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        # the module-level names, looked up here, are what torch.fx's wrap patches when tracing
        up = _upsample_centers if self.centered_upsampling else _upsample_like
        fused = self.fuse(torch.cat([f1, up(f2, f1), up(f3, f1)], dim=1))
        gated = self.gate(fused)
        logits = self.head(self.head_dropout(gated.flatten(2).mean(dim=2)))
        if not self.center_logits:  # a Python bool fixed at build time: torch.fx traces it
            return logits
        return logits - logits.mean(dim=1, keepdim=True)


@register_network("resnet3d")
def resnet3d(
    in_channels: int = 1,
    num_classes: int = 1,
    layers: Sequence[int] = (1, 1, 1, 1),
    block_inplanes: Sequence[int] = (16, 32, 64, 128),
    block: str = "basic",
    conv1_t_size: int = 3,
    conv1_t_stride: int = 1,
    no_max_pool: bool = True,
    tumor_gate: bool = False,
    normalize_gate: bool = True,
    gate_offset: float = 1.0,
    centered_upsampling: bool = False,
    head_dropout: float = 0.0,
) -> torch.nn.Module:
    """A 3D ResNet; `layers=(1,1,1,1)` is ResNet-10-like, (2,2,2,2) ResNet-18.

    Args:
        in_channels: image channels.
        num_classes: outputs (1: a single logit for a binary problem).
        layers: residual blocks per stage.
        block_inplanes: feature maps per stage.
        block: "basic" or "bottleneck".
        conv1_t_size: kernel of the stem convolution (small patches want 3, not 7).
        conv1_t_stride: stride of the stem convolution.
        no_max_pool: skip the stem max-pool (for small patches).
        tumor_gate: build the tumor-gated variant `GatedResNet` (Grad-CAM layer
            `gate.gated`, gate logits `gate.gate_logits` to supervise with a mask).
        normalize_gate, gate_offset, centered_upsampling, head_dropout: see `GatedResNet`
            (`head_dropout` only there: MONAI's ResNet has no dropout to set).
    """
    if head_dropout and not tumor_gate:
        raise ValueError("head_dropout needs tumor_gate=True (the plain MONAI ResNet has none)")
    if tumor_gate:
        return GatedResNet(
            in_channels,
            num_classes,
            layers=layers,
            block_inplanes=block_inplanes,
            block=block,
            conv1_t_size=conv1_t_size,
            conv1_t_stride=conv1_t_stride,
            no_max_pool=no_max_pool,
            normalize_gate=normalize_gate,
            gate_offset=gate_offset,
            centered_upsampling=centered_upsampling,
            head_dropout=head_dropout,
        )
    return _monai_resnet(
        in_channels, num_classes, layers, block_inplanes, block,
        conv1_t_size, conv1_t_stride, no_max_pool,
    )  # fmt: skip
