"""What a grading model is: network, input grid, loss; presets to compare a CNN and a ViT."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ai_engine.grading.data import CHANNELS, GRADES

__all__ = ["CAM_LAYER_PRESETS", "NETWORK_PRESETS", "SEG_AUX_LAYER_PRESETS", "TASK", "GradingConfig"]

TASK = "tumor-grading"

#: Default network kwargs per registry name (the channel and class counts are filled in).
#: The ResNet uses a stride-2 stem without max-pool; with `tumor_gate` it is
#: `ai_engine.networks.resnet3d.GatedResNet` (stages 1-3 fused on the 16^3 grid of a 32^3
#: input, a tumor gate, gate-weighted pooling and a linear head, so Grad-CAM on the gated map
#: is the exact class activation map; gate offset 32 cells keeps a lesion-size cue: validation
#: macro-F1 0.933 vs 0.868 with offset 1, pointing game 1.0 vs 0.967). The ViT uses 4^3-voxel tokens (8^3 tokens on 32^3)
#: and a voxel-level tumor gate. Without masks in the datalist the gates are still trained,
#: by the grade alone.
NETWORK_PRESETS: dict[str, dict[str, Any]] = {
    "resnet3d": {
        "layers": [1, 1, 1, 1],
        "block_inplanes": [16, 32, 64, 128],
        "conv1_t_size": 3,
        "conv1_t_stride": 2,
        "no_max_pool": True,
        "tumor_gate": True,
        "gate_offset": 32.0,
    },
    "densenet121_3d": {"dropout_prob": 0.0},
    "vit_classifier": {
        "patch_size": 4,
        "tumor_gate": True,
        "gate_offset": 64.0,
        "hidden_size": 96,
        "mlp_dim": 192,
        "num_layers": 4,
        "num_heads": 4,
        "dropout_rate": 0.1,
    },
}


#: Grad-CAM target layer per network when the config names none, chosen by measurement
#: (pointing game on held-out phantoms, 32^3 grid, bench/bench_grading.py models): ResNet
#: Grad-CAM conv1 0.58, layer1 0.07-0.47 (two trainings), layer2 0.08, layer3 0.0, layer4 0.0
#: (2^3 voxels: its upsampled maximum sits between the tumor positions); ViT (8^3-voxel tokens)
#: last token grid 0.0, blocks 0/1/2 0.33/0.27/0.33 (the later block is the more
#: class-specific of the tied ones). Token layers are laid out on the patch grid by
#: `ai_engine.explain.explain`. Other networks use `ai_engine.explain.find_target_layer`.
CAM_LAYER_PRESETS: dict[str, str] = {"resnet3d": "conv1", "vit_classifier": "encoder.blocks.2"}

#: Feature layers that get an auxiliary tumor-fraction head in training when the datalist
#: has tumor masks (`ai_engine.training.seg_aux`).
SEG_AUX_LAYER_PRESETS: dict[str, tuple[str, ...]] = {
    "resnet3d": ("layer1", "layer2", "layer3"),
    "densenet121_3d": ("features.transition1", "features.transition2"),
    "vit_classifier": ("token_grid",),
}

#: The same for networks built with `tumor_gate=True`: Grad-CAM on the gated map, the gate's
#: logits supervised with the tumor mask.
GATED_CAM_LAYER_PRESETS: dict[str, str] = {
    "resnet3d": "gate.gated",
    "vit_classifier": "gated",
}
GATED_SEG_AUX_LAYER_PRESETS: dict[str, tuple[str, ...]] = {
    "resnet3d": ("gate.gate_logits",),
    "vit_classifier": ("gate_logits",),
}


@dataclass
class GradingConfig:
    """A grading model's definition (stored in the model folder).

    Attributes:
        network: registry name: "resnet3d", "densenet121_3d" or "vit_classifier".
        network_kwargs: builder kwargs overriding `NETWORK_PRESETS[network]`.
        spatial_size: model grid (X, Y, Z); the study's field of view is resampled onto it.
        channels: sequence names in channel order.
        focal_gamma: focusing parameter of the focal loss (0 = weighted cross-entropy).
        class_weights: per-class loss weights, or None to use inverse class frequencies of
            the training set (normalised to mean 1).
        channel_dropout_prob: probability of zeroing a random sequence in a training sample.
        augment: spatial + intensity augmentation during training.
        batch_size: training batch size.
        cam_target_layer: Grad-CAM layer (None: `CAM_LAYER_PRESETS`, else found automatically).
        seg_aux_weight: weight of the auxiliary tumor segmentation loss when training items
            have `tumor_mask` (0 = off); see `ai_engine.training.seg_aux`.
        seg_aux_layers: layers with a segmentation head (None: `SEG_AUX_LAYER_PRESETS`).
    """

    network: str = "resnet3d"
    network_kwargs: dict[str, Any] = field(default_factory=dict)
    spatial_size: tuple[int, int, int] = (32, 32, 32)
    channels: tuple[str, ...] = CHANNELS
    focal_gamma: float = 2.0
    class_weights: list[float] | None = None
    channel_dropout_prob: float = 0.2
    augment: bool = True
    batch_size: int = 4
    cam_target_layer: str | None = None
    seg_aux_weight: float = 1.0
    seg_aux_layers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.network not in NETWORK_PRESETS:
            raise ValueError(
                f"network must be one of {sorted(NETWORK_PRESETS)}, got {self.network!r}"
            )
        self.spatial_size = tuple(int(s) for s in self.spatial_size)  # type: ignore[assignment]
        self.channels = tuple(self.channels)
        if self.seg_aux_layers is not None:
            self.seg_aux_layers = tuple(self.seg_aux_layers)
        if self.seg_aux_weight < 0:
            raise ValueError(f"seg_aux_weight must be >= 0, got {self.seg_aux_weight}")
        if len(self.spatial_size) != 3 or min(self.spatial_size) < 8:
            raise ValueError(f"spatial_size must be three sizes >= 8, got {self.spatial_size}")
        if self.class_weights is not None and len(self.class_weights) != len(GRADES):
            raise ValueError(f"class_weights needs {len(GRADES)} values, got {self.class_weights}")
        if not 0.0 <= self.channel_dropout_prob <= 1.0:
            raise ValueError(
                f"channel_dropout_prob must be in [0, 1], got {self.channel_dropout_prob}"
            )

    @property
    def num_classes(self) -> int:
        return len(GRADES)

    def build_kwargs(self) -> dict[str, Any]:
        """Full kwargs of `ai_engine.networks.build_network(self.network, ...)`."""
        kw = dict(NETWORK_PRESETS[self.network])
        kw.update(self.network_kwargs)
        kw.update(in_channels=len(self.channels), num_classes=self.num_classes)
        if self.network == "vit_classifier":
            kw["img_size"] = list(self.spatial_size)
        return kw

    @property
    def gated(self) -> bool:
        """True when the network has a tumor gate (`ai_engine.networks.gate`)."""
        return bool(self.build_kwargs().get("tumor_gate"))

    @property
    def cam_layer(self) -> str | None:
        """The Grad-CAM target layer to use (None: `find_target_layer` decides)."""
        if self.cam_target_layer:
            return self.cam_target_layer
        if self.gated:
            return GATED_CAM_LAYER_PRESETS.get(self.network)
        return CAM_LAYER_PRESETS.get(self.network)

    @property
    def aux_layers(self) -> tuple[str, ...]:
        """Layers with an auxiliary segmentation head (empty when the network has no preset)."""
        if self.seg_aux_layers is not None:
            return self.seg_aux_layers
        if self.gated:
            return GATED_SEG_AUX_LAYER_PRESETS.get(self.network, ())
        return SEG_AUX_LAYER_PRESETS.get(self.network, ())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        d = asdict(self)
        d["spatial_size"] = list(self.spatial_size)
        d["channels"] = list(self.channels)
        if self.seg_aux_layers is not None:
            d["seg_aux_layers"] = list(self.seg_aux_layers)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GradingConfig:
        """Inverse of `to_dict` (unknown keys ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
