"""Configuration of the nodule detector: preprocessing, both networks, post-processing.

Defaults are chosen for a 2-thread CPU within a minute per CT: 1 mm isotropic resampling keeps
a 3 mm nodule at three voxels (1.5 mm, the default until session 9, left it two, and the 3-5 mm
nodules were where the CPM was lost: 0.821 against 0.860 at 1 mm on the bench's held-out
phantoms) while a 512 x 512 x 300 CT (about 358 x 358 x 375 mm) becomes 359 x 359 x 375 voxels;
the U-Net trains on 48^3 patches and infers with 64^3 windows overlapping by 1/8 on the body's
bounding box (about 20 s of preprocessing and 24 s for the U-Net with 8-16-32-64 channels on 2
quiet CPU threads; its flipped passes, `test_time_flips`, would take the scan past a minute).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ai_engine.detection.rescore import Rescorer

#: "rescored" needs `DetectionConfig.rescore` (fitted by training, `detection.rescore`)
COMBINE_MODES = ("geometric", "product", "mean", "classifier", "candidate", "rescored")


@dataclass
class DetectionConfig:
    """Everything `predict` needs besides the weights (stored in the model folder).

    Attributes:
        spacing_mm: resampling target (RAS axes), mm.
        hu_range: HU window mapped to [0, 1] (clipped).
        patch_size: U-Net training patch and sliding-window ROI (voxels, divisible by 8).
        unet_channels: feature maps per U-Net level.
        unet_res_units: residual units per U-Net block.
        unet_norm: U-Net normalisation, "instance" (nnU-Net's choice: the statistics of each
            window, so class-balanced training patches and whole-scan sliding windows are
            normalised alike) or "batch" (running statistics of the training patches; model
            folders written before this option rebuild with it from their network_kwargs).
        sw_roi_size: sliding-window ROI at inference (the U-Net is fully convolutional, so it
            may exceed the training patch; larger windows overlap less). None: `patch_size`.
        sw_overlap: sliding-window overlap.
        sw_batch_size: windows per forward pass.
        test_time_flips: average the U-Net's probability over the image and its flips along
            each axis (4 passes; training turns it on when it raises the validation CPM).
        candidate_threshold: foreground probability that makes a voxel part of a candidate.
        min_candidate_voxels: smaller candidate regions are dropped.
        candidate_peak_distance_mm: every local maximum of the probability map within
            +-this distance seeds its own candidate (a watershed splits the thresholded
            components between them, so a small nodule touching a vessel is not merged into
            it); 0: one candidate per connected component. Training picks it on validation.
        candidate_center_power: a candidate's center is its centroid weighted by
            prob ** this (4: the confident core; 1: the plain probability-weighted centroid;
            the hit radius of a 3-5 mm nodule is 1-1.7 voxels at 1.5 mm).
        max_candidates: at most this many candidates per scan (highest probability first).
        fp_patch_size: cube edge (voxels) of the classifier's patches (24 at 1.5 mm: 36 mm of
            context; the ResNet's last feature map is then 3^3 with its middle cell on the
            candidate, which lets its Grad-CAM point at the nodule).
        fp_channels: feature maps per ResNet stage.
        fp_gate: the classifier is a `GatedResNet` (`ai_engine.networks.resnet3d`): stages 1-3
            fused at the patch's resolution, weighted by a gate that training supervises with
            the nodule's sphere (positive patches), pooled into the logit. Its Grad-CAM on the
            gated map is each voxel's share of the score, so a finding's explanation points
            at the nodule (False: MONAI's ResNet, Grad-CAM on its last stage).
        fp_test_time_flips: the classifier's probability is the mean over the candidate's
            patch and its 7 flips (every combination of the three axes, as in training's
            augmentation; 8 passes, ~1.5 s more per scan on a CPU); training turns it on when it
            raises the validation CPM. Folders written before this option load with False.
        combine: final score from candidate prob p and classifier prob q: "geometric"
            sqrt(p q), "product" p q, "mean" (p + q) / 2, "classifier" q, "candidate" p, or
            "rescored": the logistic regression `rescore` over p, q and what the image says at
            and around the candidate (`ai_engine.detection.rescore`, `.context`; training fits
            it on the training scans' candidates and keeps it unless a fixed mode is clearly
            better on validation; otherwise it picks the fixed mode with the best validation
            CPM).
        finding_threshold: `predict` reports findings with a final score at least this.
        body_threshold_hu: voxels above this HU define the body box the U-Net runs on.
        blob_sigmas_mm: scales (mm) of the blob-enhancement channel given to both networks
            beside the windowed CT (`ai_engine.transforms.enhance`: the Hessian dot filter that
            tells a small nodule from a vessel cut across); () for the CT channel alone (model
            folders written before this option have no such key and load with ()).
        blob_candidates: besides the U-Net's, up to this many of the blob channel's strongest
            local maxima in the body become candidates (`candidates.add_blob_candidates`: small
            nodules touching a vessel that the U-Net scores low); the classifier is trained on
            them too, and training keeps the count (of `blob_candidate_counts`) that scores best
            on validation. 0: U-Net candidates only (model folders written before this option;
            always 0 without the blob channel).
        fine_blob_candidates: besides those, up to this many local maxima of a finer dot filter
            (Gaussian scale `fine_blob_sigma_mm`, computed on the windowed CT at inference)
            become candidates: the 3-4 mm nodules whose response at the blob channel's scales
            is lost among vessels (session 18: they lift the candidates' reach from 93 % to
            97 % of the nodules of 192 development phantoms). Only the rescoring scores them
            (its `from_fine` and `fine_max_2mm`): training adds them after the classifier, and
            sets 0 where no rescoring is fitted or kept. 0: none (model folders written
            before this option).
        fine_blob_sigma_mm: the fine dot filter's scale (mm).
        rescore: the fitted rescoring (`Rescorer.to_dict()`) that `combine` "rescored" uses;
            None where training fitted none (folders written before it).
    """

    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    hu_range: tuple[float, float] = (-1000.0, 400.0)
    patch_size: tuple[int, int, int] = (48, 48, 48)
    unet_channels: tuple[int, ...] = (8, 16, 32, 64)
    unet_res_units: int = 1
    unet_norm: str = "instance"
    sw_roi_size: tuple[int, int, int] | None = (64, 64, 64)
    sw_overlap: float = 0.125
    sw_batch_size: int = 2
    test_time_flips: bool = False
    candidate_threshold: float = 0.3
    min_candidate_voxels: int = 2
    candidate_peak_distance_mm: float = 0.0
    candidate_center_power: float = 4.0
    max_candidates: int = 64
    fp_patch_size: int = 24
    fp_channels: tuple[int, ...] = (16, 32, 64, 64)
    fp_gate: bool = True
    fp_test_time_flips: bool = False
    combine: str = "geometric"
    finding_threshold: float = 0.5
    body_threshold_hu: float = -500.0
    blob_sigmas_mm: tuple[float, ...] = (1.5, 2.25, 3.75, 6.0)
    blob_candidates: int = 16
    fine_blob_candidates: int = 8
    fine_blob_sigma_mm: float = 0.75
    rescore: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spacing_mm = tuple(float(v) for v in self.spacing_mm)  # type: ignore[assignment]
        self.hu_range = tuple(float(v) for v in self.hu_range)  # type: ignore[assignment]
        self.patch_size = tuple(int(v) for v in self.patch_size)  # type: ignore[assignment]
        if self.sw_roi_size is not None:
            self.sw_roi_size = tuple(int(v) for v in self.sw_roi_size)  # type: ignore[assignment]
        self.unet_channels = tuple(int(v) for v in self.unet_channels)
        self.fp_channels = tuple(int(v) for v in self.fp_channels)
        self.blob_sigmas_mm = tuple(float(v) for v in self.blob_sigmas_mm)
        if any(s <= 0 for s in self.blob_sigmas_mm):
            raise ValueError(f"blob_sigmas_mm must be positive, got {self.blob_sigmas_mm}")
        if self.blob_candidates < 0:
            raise ValueError(f"blob_candidates must be >= 0, got {self.blob_candidates}")
        if not self.blob_sigmas_mm:
            self.blob_candidates = 0  # they are the blob channel's maxima
        if self.fine_blob_candidates < 0:
            raise ValueError(f"fine_blob_candidates must be >= 0, got {self.fine_blob_candidates}")
        if self.fine_blob_sigma_mm <= 0:
            raise ValueError(f"fine_blob_sigma_mm must be positive, got {self.fine_blob_sigma_mm}")
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise ValueError(f"spacing_mm must be three positive numbers, got {self.spacing_mm}")
        if len(self.hu_range) != 2 or self.hu_range[0] >= self.hu_range[1]:
            raise ValueError(f"hu_range must be (low, high) with low < high, got {self.hu_range}")
        div = 2 ** (len(self.unet_channels) - 1)
        if len(self.patch_size) != 3 or any(p % div or p < div for p in self.patch_size):
            raise ValueError(f"patch_size must be three multiples of {div}, got {self.patch_size}")
        roi = self.sw_roi_size
        if roi is not None and (len(roi) != 3 or any(p % div or p < div for p in roi)):
            raise ValueError(f"sw_roi_size must be three multiples of {div}, got {roi}")
        if self.fp_patch_size % 8 or self.fp_patch_size < 16:
            raise ValueError(
                f"fp_patch_size must be a multiple of 8 and >= 16, got {self.fp_patch_size}"
            )
        if self.unet_norm not in {"instance", "batch"}:
            raise ValueError(f"unet_norm must be instance or batch, got {self.unet_norm!r}")
        if self.combine not in COMBINE_MODES:
            raise ValueError(
                f"combine must be one of {', '.join(COMBINE_MODES)}, got {self.combine!r}"
            )
        if self.combine == "rescored" and not self.rescore:
            raise ValueError('combine "rescored" needs a fitted rescore (train the detector)')
        if self.rescore is not None:
            Rescorer.from_dict(self.rescore)  # refuses a damaged or other version's rescoring
        if self.candidate_peak_distance_mm < 0:
            raise ValueError(
                "candidate_peak_distance_mm must be >= 0 (0: connected components), "
                f"got {self.candidate_peak_distance_mm}"
            )
        if self.candidate_center_power <= 0:
            raise ValueError(
                f"candidate_center_power must be > 0, got {self.candidate_center_power}"
            )

    def with_candidate_stage_of(self, other: DetectionConfig) -> DetectionConfig:
        """This configuration with `other`'s preprocessing and candidate stage
        (`CANDIDATE_STAGE_FIELDS`): the classifier settings stay this one's."""
        keep = {name: getattr(other, name) for name in CANDIDATE_STAGE_FIELDS}
        return DetectionConfig.from_dict({**self.to_dict(), **keep})

    @property
    def in_channels(self) -> int:
        """Input channels of both networks: the windowed CT (+ the blob channel)."""
        return 2 if self.blob_sigmas_mm else 1

    @property
    def unet_kwargs(self) -> dict[str, Any]:
        """Arguments of `build_network("unet3d", ...)`."""
        n = len(self.unet_channels)
        return {
            "in_channels": self.in_channels,
            "out_channels": 2,
            "channels": list(self.unet_channels),
            "strides": [2] * (n - 1),
            "num_res_units": self.unet_res_units,
            "norm": self.unet_norm,
        }

    @property
    def fp_kwargs(self) -> dict[str, Any]:
        """Arguments of `build_network("resnet3d", ...)`."""
        kwargs = {
            "in_channels": self.in_channels,
            "num_classes": 1,
            "block_inplanes": list(self.fp_channels),
        }
        if not self.fp_gate:
            return kwargs
        return {**kwargs, "tumor_gate": True, "centered_upsampling": True}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectionConfig:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs.setdefault("blob_sigmas_mm", ())  # written before the blob channel existed
        kwargs.setdefault("fp_gate", False)  # written before the gated classifier
        kwargs.setdefault("blob_candidates", 0)  # its classifier never saw blob candidates
        kwargs.setdefault("fine_blob_candidates", 0)  # its rescoring never saw them
        return cls(**kwargs)


#: what the U-Net stage fixes: its input (preprocessing, blob channel), network, sliding window
#: and the candidate post-processing chosen on validation after it was trained
CANDIDATE_STAGE_FIELDS = (
    "spacing_mm",
    "hu_range",
    "patch_size",
    "unet_channels",
    "unet_res_units",
    "unet_norm",
    "sw_roi_size",
    "sw_overlap",
    "sw_batch_size",
    "test_time_flips",
    "candidate_threshold",
    "min_candidate_voxels",
    "candidate_peak_distance_mm",
    "candidate_center_power",
    "max_candidates",
    "body_threshold_hu",
    "blob_sigmas_mm",
)
