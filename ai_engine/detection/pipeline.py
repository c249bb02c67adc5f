"""The nodule detector: preprocessing -> U-Net candidates -> ResNet false-positive reduction ->
score combination -> merging -> findings in patient space (+ masks on the source grid)."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer

from ai_engine.detection.candidates import (
    Candidate,
    add_blob_candidates,
    combine_scores,
    extract_candidates,
    merge_close,
)
from ai_engine.detection.config import DetectionConfig
from ai_engine.detection.context import context_features
from ai_engine.detection.patches import extract_patches
from ai_engine.detection.rescore import Rescorer
from ai_engine.detection.transforms import preprocessing
from ai_engine.errors import ModelFolderError
from ai_engine.io.multimodal import resample_to_grid
from ai_engine.io.volume import LPS_TO_RAS, Volume
from ai_engine.transforms import voxel_to_lps_mm
from ai_engine.transforms.enhance import blob_response

TASK = "nodule-detection"


@dataclass
class Detection:
    """One detection on the resampled grid of a scan.

    Attributes:
        center_voxel: fractional voxel indices on the resampled grid.
        center_lps_mm: patient position (LPS mm).
        diameter_mm: equivalent-sphere diameter.
        score: final score.
        prob_candidate: U-Net probability (peak of the component).
        prob_classifier: false-positive-reduction probability (None without a classifier).
        components: candidate components merged into this detection (labels of `label_map`).
    """

    center_voxel: np.ndarray
    center_lps_mm: np.ndarray
    diameter_mm: float
    score: float
    prob_candidate: float
    prob_classifier: float | None
    components: list[int] = field(default_factory=list)

    def as_point(self) -> dict[str, Any]:
        """The `{"center_lps_mm", "score"}` form FROC takes."""
        return {"center_lps_mm": self.center_lps_mm.tolist(), "score": self.score}


@dataclass
class ScanResult:
    """Detections of one scan plus what is needed to draw their masks."""

    detections: list[Detection]
    label_map: np.ndarray
    image: MetaTensor
    timings: dict[str, float] = field(default_factory=dict)


class NoduleDetector:
    """Runs the two networks of a detection model.

    Args:
        config: the detector's `DetectionConfig`.
        unet: candidate network (2-class softmax output).
        classifier: false-positive classifier (one logit) or None (candidates only).
        device: where the networks run.
    """

    def __init__(
        self,
        config: DetectionConfig,
        unet: torch.nn.Module,
        classifier: torch.nn.Module | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        self.unet = unet.to(self.device).eval()
        self.classifier = classifier.to(self.device).eval() if classifier is not None else None
        self._preprocess = preprocessing(
            config.spacing_mm, config.hu_range, blob_sigmas_mm=config.blob_sigmas_mm
        )
        self.inferer = SlidingWindowInferer(
            roi_size=config.sw_roi_size or config.patch_size,
            sw_batch_size=config.sw_batch_size,
            overlap=config.sw_overlap,
            mode="gaussian",
        )

    @classmethod
    def from_model_folder(
        cls, path: str | Path, device: str | torch.device = "cpu"
    ) -> NoduleDetector:
        """Load a detector from a model folder written by `train_detector`."""
        from ai_engine.modelfolder import load_model_folder

        folder = load_model_folder(path, device=device)
        if folder.task != TASK:
            raise ModelFolderError(f"{path} holds a {folder.task!r} model, not {TASK!r}")
        try:
            config = DetectionConfig.from_dict({**folder.preprocessing, **folder.postprocessing})
        except ValueError as exc:  # e.g. a damaged rescoring: say so at load, not at predict
            raise ModelFolderError(f"{path}: {exc}") from None
        unet = folder.component("candidates")
        classifier = folder.components.get("fp_reduction")
        if not isinstance(unet, torch.nn.Module):
            raise ModelFolderError(f"{path}: the candidates component must be a torch module")
        return cls(config, unet, classifier, device=device)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ stages
    def preprocess(self, image: str | Path | Volume) -> MetaTensor:
        """Load (path) or take a Volume, orient RAS, resample, window: a (1, X, Y, Z) MetaTensor."""
        return self._preprocess({"image": image})["image"]

    def body_level(self) -> float:
        """`body_threshold_hu` on the windowed image's [0, 1] scale."""
        lo_hu, hi_hu = self.config.hu_range
        return (self.config.body_threshold_hu - lo_hu) / (hi_hu - lo_hu)

    def body_box(self, image: torch.Tensor) -> tuple[slice, slice, slice]:
        """Bounding box of the body (voxels above `body_threshold_hu`), 4 voxels of margin."""
        arr = image[0] > self.body_level()
        shape = arr.shape
        box = []
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            hits = torch.nonzero(arr.any(dim=other[1]).any(dim=other[0])).flatten()
            if hits.numel() == 0:
                return (slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
            box.append(slice(max(int(hits[0]) - 4, 0), min(int(hits[-1]) + 5, shape[axis])))
        return tuple(box)  # type: ignore[return-value]

    @torch.no_grad()
    def probability(self, image: torch.Tensor) -> np.ndarray:
        """Foreground probability (X, Y, Z) by sliding-window U-Net inference on the body box
        (averaged over the flips of the three axes when `config.test_time_flips`)."""
        plain = image.as_subclass(torch.Tensor) if isinstance(image, MetaTensor) else image
        box = self.body_box(plain)
        crop = plain[(slice(None), *box)][None].to(self.device)
        use_amp = self.device.type == "cuda"
        flips: list[tuple[int, ...]] = [()]
        if self.config.test_time_flips:
            flips += [(2,), (3,), (4,)]
        total = None
        for dims in flips:
            x = torch.flip(crop, dims) if dims else crop
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=use_amp):
                logits = self.inferer(x, self.unet)
            p = torch.softmax(logits.float(), dim=1)[:, 1:2]
            p = torch.flip(p, dims) if dims else p
            total = p if total is None else total + p
        prob = (total / len(flips))[0, 0].cpu().numpy()
        full = np.zeros(tuple(plain.shape[-3:]), dtype=np.float32)
        full[box] = prob
        return full

    @torch.no_grad()
    def classify(
        self, image: torch.Tensor, centers_voxel: np.ndarray, batch_size: int = 32
    ) -> np.ndarray:
        """Classifier probability of each candidate center (N,), the mean over the patch's 8
        flips when `config.fp_test_time_flips`."""
        if self.classifier is None or len(centers_voxel) == 0:
            return np.ones(len(centers_voxel))
        patches = extract_patches(image, centers_voxel, self.config.fp_patch_size)
        flips: list[tuple[int, ...]] = [()]
        if self.config.fp_test_time_flips:
            flips = [dims for n in range(4) for dims in itertools.combinations((2, 3, 4), n)]
        out = []
        for start in range(0, len(patches), batch_size):
            x = torch.from_numpy(patches[start : start + batch_size]).to(self.device)
            q = sum(
                torch.sigmoid(self.classifier(torch.flip(x, dims) if dims else x).float())
                for dims in flips
            )
            out.append((q / len(flips)).reshape(-1).cpu().numpy())
        return np.concatenate(out)

    def candidates(self, image: MetaTensor) -> tuple[list[Candidate], np.ndarray, np.ndarray]:
        """U-Net candidates of a preprocessed image: (candidates, label map, centers in LPS mm)."""
        return self.candidates_from_probability(image, self.probability(image))

    def candidates_from_probability(
        self, image: MetaTensor, prob: np.ndarray
    ) -> tuple[list[Candidate], np.ndarray, np.ndarray]:
        """Candidates of a foreground probability map on `image`'s grid (the U-Net's, or any
        other, e.g. a reference mask to check the post-processing)."""
        cfg = self.config
        prob = np.asarray(prob, dtype=np.float32)
        if prob.shape != tuple(image.shape[-3:]):
            raise ValueError(
                f"probability map {prob.shape} is not on the image grid {tuple(image.shape[-3:])}"
            )
        spacing = np.linalg.norm(np.asarray(image.affine, dtype=np.float64)[:3, :3], axis=0)
        cands, labels = extract_candidates(
            prob,
            spacing,
            cfg.candidate_threshold,
            cfg.min_candidate_voxels,
            cfg.max_candidates,
            cfg.candidate_peak_distance_mm,
            cfg.candidate_center_power,
        )
        plain = image.as_subclass(torch.Tensor) if isinstance(image, MetaTensor) else image
        arrays = plain.detach().cpu().numpy()
        if cfg.blob_candidates and image.shape[0] > 1:
            cands, labels = add_blob_candidates(
                cands,
                labels,
                arrays[1],
                arrays[0] > self.body_level(),  # a nodule centre is dense
                prob,
                spacing,
                cfg.blob_candidates,
            )
        fine = None  # the finer dot filter's maxima: 3-4 mm nodules (the rescoring scores them)
        if cfg.fine_blob_candidates:
            fine = blob_response(arrays[0], [tuple(cfg.fine_blob_sigma_mm / s for s in spacing)])
            cands, labels = add_blob_candidates(
                cands,
                labels,
                fine,
                arrays[0] > self.body_level(),
                prob,
                spacing,
                cfg.fine_blob_candidates,
                source="fine",
            )
        lo_hu, hi_hu = cfg.hu_range
        centers = np.array([c.center_voxel for c in cands]).reshape(-1, 3)
        at = np.clip(np.round(centers).astype(int), 0, np.array(arrays.shape[1:]) - 1)
        blob = arrays[1] if arrays.shape[0] > 1 else None
        for c, (i, j, k) in zip(cands, at, strict=True):
            c.center_hu = float(arrays[0, i, j, k]) * (hi_hu - lo_hu) + lo_hu
            c.center_blob = float(blob[i, j, k]) if blob is not None else 0.0
            c.context = context_features(
                arrays[0], blob, prob, c.center_voxel, c.diameter_mm, spacing, cfg.hu_range, fine
            )
        centers_mm = voxel_to_lps_mm(image, centers) if len(cands) else np.zeros((0, 3))
        return cands, labels, centers_mm

    def finish(
        self, cands: list[Candidate], centers_mm: np.ndarray, q: np.ndarray | None
    ) -> list[Detection]:
        """Combine scores (q: classifier probabilities, None for candidates only) and merge."""
        p_cand = np.array([c.prob for c in cands])
        if q is None:
            scores = p_cand
        elif self.config.combine == "rescored":
            scores = Rescorer.from_dict(self.config.rescore).score(cands, q)
        else:
            scores = combine_scores(p_cand, q, self.config.combine)
        radii = np.array([c.diameter_mm / 2.0 for c in cands])
        detections = []
        for group in merge_close(centers_mm, radii, scores):
            lead = cands[group[0]]
            detections.append(
                Detection(
                    center_voxel=lead.center_voxel,
                    center_lps_mm=np.asarray(centers_mm[group[0]]),
                    diameter_mm=float(sum(cands[i].diameter_mm ** 3 for i in group) ** (1.0 / 3.0)),
                    score=float(scores[group[0]]),
                    prob_candidate=float(p_cand[group[0]]),
                    prob_classifier=None if q is None else float(q[group[0]]),
                    components=[cands[i].component for i in group],
                )
            )
        detections.sort(key=lambda d: -d.score)
        return detections

    def detect_image(self, image: MetaTensor, use_classifier: bool = True) -> ScanResult:
        """Detections on a preprocessed image (see `preprocess`)."""
        t0 = time.perf_counter()
        cands, labels, centers_mm = self.candidates(image)
        t1 = time.perf_counter()
        q = None
        if use_classifier and self.classifier is not None:
            q = self.classify(image, np.array([c.center_voxel for c in cands]).reshape(-1, 3))
        t2 = time.perf_counter()
        detections = self.finish(cands, centers_mm, q)
        timings = {"unet_s": t1 - t0, "fp_reduction_s": t2 - t1}
        return ScanResult(detections=detections, label_map=labels, image=image, timings=timings)

    def detect(self, image: str | Path | Volume, use_classifier: bool = True) -> ScanResult:
        """Preprocess and detect."""
        t0 = time.perf_counter()
        pre = self.preprocess(image)
        t1 = time.perf_counter()
        result = self.detect_image(pre, use_classifier)
        result.timings = {"preprocess_s": t1 - t0, **result.timings}
        return result


def findings_on_source(
    result: ScanResult, source: Volume, threshold: float | None = None
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """FINDINGS entries and a uint16 label map on the SOURCE grid (label k = finding k).

    Args:
        result: `NoduleDetector.detect` output for `source`.
        source: the original volume (its grid and affine define the output).
        threshold: keep detections with score >= threshold (None: all).

    Returns:
        (list of `{"center_lps_mm", "center_voxel", "diameter_mm", "score", "mask_label", ...}`,
        (X, Y, Z) uint16 label map).
    """
    kept = [d for d in result.detections if threshold is None or d.score >= threshold]
    label_src = np.zeros(source.spatial_shape, dtype=np.uint16)
    res_affine_lps = LPS_TO_RAS @ np.asarray(result.image.affine, dtype=np.float64)
    src_inv = np.linalg.inv(source.affine)
    findings = []
    for k, det in enumerate(kept, start=1):
        mask_res = np.isin(result.label_map, det.components)
        nz = np.argwhere(mask_res)
        if len(nz):
            lo, hi = nz.min(0), nz.max(0) + 1
            sub = mask_res[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))].astype(
                np.float32
            )
            sub_affine = res_affine_lps.copy()
            sub_affine[:3, 3] = res_affine_lps[:3, :3] @ lo + res_affine_lps[:3, 3]
            corners = np.array(
                [
                    [x, y, z]
                    for x in (lo[0] - 1, hi[0])
                    for y in (lo[1] - 1, hi[1])
                    for z in (lo[2] - 1, hi[2])
                ],
                float,
            )
            src_c = (corners @ res_affine_lps[:3, :3].T + res_affine_lps[:3, 3]) @ src_inv[
                :3, :3
            ].T + src_inv[:3, 3]
            s_lo = np.clip(np.floor(src_c.min(0)).astype(int), 0, source.spatial_shape)
            s_hi = np.clip(np.ceil(src_c.max(0)).astype(int) + 1, 0, source.spatial_shape)
            if np.all(s_hi > s_lo):
                grid_affine = source.affine.copy()
                grid_affine[:3, 3] = source.affine[:3, :3] @ s_lo + source.affine[:3, 3]
                shape = tuple(int(v) for v in s_hi - s_lo)
                on_src = (
                    resample_to_grid(Volume(sub, sub_affine), grid_affine, shape, order=0) > 0.5
                )
                box = tuple(slice(int(a), int(b)) for a, b in zip(s_lo, s_hi, strict=True))
                region = label_src[box]
                region[on_src & (region == 0)] = k
        center_src = source.lps_to_voxel(det.center_lps_mm[None])[0]
        findings.append(
            {
                "center_lps_mm": [round(float(v), 3) for v in det.center_lps_mm],
                "center_voxel": [round(float(v), 2) for v in center_src],
                "diameter_mm": round(det.diameter_mm, 2),
                "score": round(det.score, 4),
                "prob_candidate": round(det.prob_candidate, 4),
                "prob_classifier": None
                if det.prob_classifier is None
                else round(det.prob_classifier, 4),
                "mask_label": k,
                "mask_voxels": int((label_src == k).sum()),
            }
        )
    return findings, label_src
