"""Nodule detection end to end on tiny phantoms: both stages train (loss falls), the model
folder predicts on a DICOM series through the CLI, evaluation writes METRICS + PNG, and bad
input exits with a message."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from ai_engine.cli import main
from ai_engine.data.datalist import write_datalist
from ai_engine.data.phantoms import write_brain_mri
from ai_engine.detection.candidates import add_blob_candidates, extract_candidates, merge_close
from ai_engine.detection.config import DetectionConfig
from ai_engine.detection.train import DetectionTrainOptions, train_detector
from ai_engine.detection.transforms import preprocessing
from ai_engine.modelfolder import load_model_folder
from tests.ai_engine.detection_support import SHAPE, TINY, tiny_chest_datalist, tiny_train_options

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("detection")
    return root, tiny_chest_datalist(root)


@pytest.fixture(scope="module")
def model(data):
    from ai_engine.data.datalist import load_datalist

    root, datalist = data
    return train_detector(load_datalist(datalist), root / "model", TINY, tiny_train_options())


def _losses(path: Path) -> list[float]:
    return [json.loads(x)["train_loss"] for x in path.read_text().splitlines()]


def test_both_stages_train_and_loss_falls(model):
    folder = load_model_folder(model)
    assert folder.task == "nodule-detection" and folder.made_by == "trained"
    assert set(folder.components) == {"candidates", "fp_reduction"}
    assert folder.manifest["training_data"]["n_items"] == {"training": 2, "validation": 1}
    assert len(folder.manifest["training_data"]["sha256"]) == 64
    assert folder.manifest["preprocessing"]["spacing_mm"] == [1.5, 1.5, 1.5]
    assert "validation" in folder.metrics
    for name in ("log_candidates.jsonl", "log_fp_reduction.jsonl"):
        losses = _losses(model / name)
        assert len(losses) == 3
        assert losses[-1] < losses[0], (name, losses)


def test_predict_cli_on_dicom_series(data, model, tmp_path):
    root, _ = data
    out = tmp_path / "findings.json"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ai_engine",
            "detection",
            "predict",
            "--model",
            str(model),
            "--image",
            str(root / "ct_13"),
            "--out",
            str(out),
            "--threshold",
            "0",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["source_geometry"]["shape"] == list(SHAPE)
    mask = nib.load(out.parent / doc["mask"])
    assert mask.shape == SHAPE
    labels = np.asarray(mask.dataobj)
    for k, finding in enumerate(doc["findings"], start=1):
        assert {"center_lps_mm", "center_voxel", "diameter_mm", "score", "mask_label"} <= set(
            finding
        )
        assert finding["mask_label"] == k and finding["mask_voxels"] == int((labels == k).sum())
    assert set(np.unique(labels)) <= set(range(len(doc["findings"]) + 1))
    scores = [f["score"] for f in doc["findings"]]
    assert scores == sorted(scores, reverse=True)


def test_evaluate_cli_writes_metrics_and_curve(data, model, tmp_path):
    _, datalist = data
    out = tmp_path / "metrics.json"
    assert (
        main(
            [
                "detection",
                "evaluate",
                "--model",
                str(model),
                "--data",
                str(datalist),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads(out.read_text())
    assert set(metrics["sensitivity"]) == {"0.125", "0.25", "0.5", "1", "2", "4", "8"}
    assert metrics["cpm"] == pytest.approx(np.mean(list(metrics["sensitivity"].values())))
    assert metrics["n_images"] == 1
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    # each nodule counted in the bin of its own diameter, and the bins add up to the CPM
    by_size = metrics["by_size"]
    with open(datalist) as f:
        nodules = [n for item in json.load(f)["testing"] for n in item["nodules"]]
    assert sum(b["n_nodules"] for b in by_size.values()) == metrics["n_nodules"] == len(nodules)
    assert sum(b["n_hit"] for b in by_size.values()) == metrics["n_hit"]
    weighted = sum(b["cpm"] * b["n_nodules"] for b in by_size.values()) / metrics["n_nodules"]
    assert weighted == pytest.approx(metrics["cpm"])


def test_sphere_labels_sit_on_the_nodules(data):
    root, datalist = data
    item = json.loads(Path(datalist).read_text())["training"][0]
    item = {"image": str(root / item["image"]), "nodules": item["nodules"]}
    out = preprocessing((1.5, 1.5, 1.5), (-1000, 400), with_label=True)(item)
    label = out["label"][0].numpy()
    spacing = np.linalg.norm(np.asarray(out["image"].affine)[:3, :3], axis=0)
    cands, _ = extract_candidates(label, spacing, threshold=0.5)
    assert len(cands) == len(item["nodules"])
    from ai_engine.transforms import voxel_to_lps_mm

    for nodule in item["nodules"]:
        centers = voxel_to_lps_mm(out["image"], np.array([c.center_voxel for c in cands]))
        dist = np.linalg.norm(centers - np.asarray(nodule["center_lps_mm"]), axis=1).min()
        assert dist < 1.5  # within one resampled voxel


def test_merge_close_keeps_the_best_of_overlapping_detections():
    groups = merge_close(
        np.array([[0, 0, 0], [2, 0, 0], [20, 0, 0]]),
        np.array([3.0, 1.0, 3.0]),
        np.array([0.5, 0.9, 0.7]),
    )
    assert groups == [[1, 0], [2]]


@pytest.fixture(scope="module")
def bad_inputs(data, tmp_path_factory):
    root, datalist = data
    bad = tmp_path_factory.mktemp("bad")
    write_brain_mri(bad / "mr", seed=1, grade=2, shape=(64, 64, 24))
    (bad / "nokeys.json").write_text(json.dumps({"training": [{"nodules": []}]}))
    (bad / "notjson.json").write_text("{")
    (bad / "mr.json").write_text(json.dumps({"testing": [{"image": "mr/T1", "nodules": []}]}))
    good = json.loads(Path(datalist).read_text())
    train = [{**it, "image": str(Path(datalist).parent / it["image"])} for it in good["training"]]
    mr_item = {"images": {"T1": str(bad / "mr" / "T1")}, "grade": 2}
    for name, calibration in (("cal_mr.json", [mr_item]), ("cal_train.json", train[:1])):
        (bad / name).write_text(json.dumps({"training": train, "calibration": calibration}))
    return {"root": root, "datalist": datalist, "bad": bad}


def _damaged_rescoring(model: str, bad: Path) -> str:
    """A copy of the fixture model whose stored rescoring lost its weights."""
    import shutil

    from ai_engine.detection.rescore import FEATURES

    copy = bad / "damaged-rescore"
    if not copy.exists():
        shutil.copytree(model, copy, ignore=shutil.ignore_patterns("work"))
        manifest = json.loads((copy / "model.json").read_text())
        manifest["postprocessing"]["combine"] = "rescored"
        manifest["postprocessing"]["rescore"] = {
            "features": list(FEATURES[:12]), "mean": [0.0] * 12, "scale": [1.0] * 12, "coef": [0.5],
            "intercept": 0.0,
        }  # fmt: skip
        (copy / "model.json").write_text(json.dumps(manifest))
    return str(copy)


def _train_argv(p: dict, out: str, *flags: str, data: str | None = None) -> list[str]:
    """`train` on the bad-input fixture's datalist (or `p["bad"] / data`) into
    `p["bad"] / out`, plus `flags`."""
    datalist = p["bad"] / data if data else p["datalist"]
    return ["train", "--data", str(datalist), "--out", str(p["bad"] / out), *flags]


BAD_CASES = [
    # (name, argv builder, expected message fragment)
    (
        "missing image",
        lambda p, m: ["predict", "--model", m, "--image", str(p["bad"] / "nope")],
        "does not exist",
    ),
    (
        "MR instead of CT",
        lambda p, m: ["predict", "--model", m, "--image", str(p["bad"] / "mr" / "T1")],
        "needs a CT",
    ),
    (
        "datalist missing keys",
        lambda p, m: [
            "evaluate",
            "--model",
            m,
            "--data",
            str(p["bad"] / "nokeys.json"),
            "--out",
            str(p["bad"] / "m.json"),
        ],
        "'image'",
    ),
    (
        "MR series in a datalist",
        lambda p, m: [
            "evaluate",
            "--model",
            m,
            "--data",
            str(p["bad"] / "mr.json"),
            "--out",
            str(p["bad"] / "m.json"),
        ],
        "needs a CT",
    ),
    (
        "datalist not JSON",
        lambda p, m: [
            "train",
            "--data",
            str(p["bad"] / "notjson.json"),
            "--out",
            str(p["bad"] / "o"),
        ],
        "not valid JSON",
    ),
    (
        "--pos-neg with no patch of either kind",
        lambda p, m: [
            "train",
            "--data",
            str(p["bad"] / "notjson.json"),
            "--out",
            str(p["bad"] / "o3"),
            "--pos-neg",
            "0,0",
        ],
        "--pos-neg must be two counts",
    ),
    (
        "classifier-only training on a folder that is no model",
        lambda p, m: _train_argv(p, "o_kept", "--candidates-from", str(p["bad"])),
        "candidates_from",
    ),
    (
        "a moving average that never moves",
        lambda p, m: _train_argv(p, "o_ema", "--ema-decay", "1"),
        "ema_decay must be in (0, 1), got 1.0",
    ),
    (
        "nodule copy-paste with nothing small enough to copy",
        lambda p, m: _train_argv(
            p, "o_paste", "--paste-copies", "1", "--paste-max-diameter", "0.5"
        ),
        "no training nodule is at most 0.5 mm across to paste",
    ),
    (
        "a negative number of pasted copies",
        lambda p, m: _train_argv(p, "o_paste2", "--paste-copies", "-1"),
        "paste_copies must be >= 0 and paste_per_scan >= 1, got -1 and 4",
    ),
    (
        "a negative rescoring margin",
        lambda p, m: _train_argv(p, "o_rescore", "--rescore-margin", "-0.1"),
        "rescore_l2 and rescore_margin must be >= 0, got 1.0 and -0.1",
    ),
    (
        "CutMix on more than every batch",
        lambda p, m: _train_argv(p, "o_cutmix", "--fp-cutmix", "1.5"),
        "fp_cutmix_prob must be in [0, 1], got 1.5",
    ),
    (
        "mining with a share of background patches of 1",
        lambda p, m: _train_argv(
            p, "o_mined", "--mine-negatives-from", "0", "--mined-negative-fraction", "1"
        ),
        "mined_negative_fraction must be in [0, 1), got 1.0",
    ),
    (
        "blob candidates without the blob channel",
        lambda p, m: _train_argv(p, "o4", "--blob-sigmas", "none", "--blob-candidates", "8"),
        "needs the blob channel",
    ),
    (
        "a blob scale that is not positive",
        lambda p, m: _train_argv(p, "o5", "--blob-sigmas", "1.5,0"),
        "blob_sigmas_mm must be positive",
    ),
    (
        "a negative count of fine candidates",
        lambda p, m: _train_argv(p, "o_fine", "--fine-blob-candidates", "-1"),
        "fine_blob_candidates must be >= 0",
    ),
    (
        "a calibration item that is not a CT",
        lambda p, m: _train_argv(p, "o_cal", data="cal_mr.json"),
        "calibration[0] is not a CT item (it has no 'image')",
    ),
    (
        "a calibration scan that is also a training scan",
        lambda p, m: _train_argv(p, "o_cal2", data="cal_train.json"),
        "is also a training scan: the rescoring needs scans the networks do not train on",
    ),
    (
        "a rescoring degree other than 1 or 2",
        lambda p, m: _train_argv(p, "o_degree", "--rescore-degree", "3"),
        "rescore_degree must be one of (1, 2), got 3",
    ),
    (
        "train with neither --data nor --demo",
        lambda p, m: ["train", "--out", str(p["bad"] / "o2")],
        "needs --data",
    ),
    (
        "model folder missing",
        lambda p, m: [
            "predict",
            "--model",
            str(p["bad"] / "no-model"),
            "--image",
            str(p["root"] / "ct_11"),
        ],
        "model folder not found",
    ),
    (
        "not a model folder",
        lambda p, m: ["predict", "--model", str(p["bad"]), "--image", str(p["root"] / "ct_11")],
        "model.json is missing",
    ),
    (
        "a model folder whose rescoring is damaged",
        lambda p, m: [
            "predict",
            "--model",
            _damaged_rescoring(m, p["bad"]),
            "--image",
            str(p["root"] / "ct_11"),
        ],
        "rescorer of degree 1 on 12 features needs 12 means, scales and weights",
    ),
]


@pytest.mark.parametrize(("name", "argv", "message"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_exits_2_with_a_message(bad_inputs, model, capsys, name, argv, message):
    code = main(["detection", *argv(bad_inputs, str(model))])
    err = capsys.readouterr().err
    assert code == 2, (name, err)
    assert err.startswith("error: ") and message in err, err
    assert not any(bad_inputs["bad"].glob("o*"))  # refused before anything is written


def test_cuda_request_without_cuda_is_refused(bad_inputs, model, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    code = main(
        [
            "detection",
            "predict",
            "--model",
            str(model),
            "--image",
            str(bad_inputs["root"] / "ct_11"),
            "--device",
            "cuda",
        ]
    )
    assert code == 2 and "CUDA is not available" in capsys.readouterr().err


def test_demo_training_writes_a_model_folder_predict_can_use(tmp_path, capsys):
    """`detection train --demo` (what `make demo` runs) gives a loadable two-stage detector."""
    from ai_engine.detection.pipeline import NoduleDetector

    out = tmp_path / "demo-model"
    assert main(["detection", "train", "--demo", "--out", str(out), "--no-progress"]) == 0
    assert "demo model folder written" in capsys.readouterr().out
    detector = NoduleDetector.from_model_folder(out)
    assert detector.classifier is not None
    assert (out / "demo_data" / "datalist.json").exists()


def _flipped_x(volume):
    """The same physical image stored with the x axis reversed (negative x direction)."""
    from ai_engine.io.volume import Volume

    nx = volume.array.shape[0]
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, nx - 1
    return Volume(np.ascontiguousarray(volume.array[::-1]), volume.affine @ flip, volume.meta)


def test_a_perfect_probability_map_gives_cpm_1_and_findings_on_the_nodules():
    """The post-processing on ground truth: the reference spheres as the U-Net's map must give
    one detection per nodule at its center (voxel <-> LPS through orientation, resampling and
    back to a source stored with a flipped axis), its diameter, and CPM 1."""
    from ai_engine.data.phantoms import make_chest_ct
    from ai_engine.detection.pipeline import NoduleDetector, ScanResult, findings_on_source
    from ai_engine.evaluation.froc import froc
    from ai_engine.networks import build_network

    config = replace(TINY, fine_blob_candidates=0)  # the map's candidates alone
    detector = NoduleDetector(config, build_network("unet3d", **TINY.unet_kwargs))
    pre = preprocessing(TINY.spacing_mm, TINY.hu_range, with_label=True)
    points, references = [], []
    for seed in (21, 22, 23):
        volume, nodules = make_chest_ct(seed, shape=(96, 96, 32), n_nodules=3)
        assert len(nodules) >= 2, "the seeds must give nodules"
        source = _flipped_x(volume)
        out = pre({"image": source, "nodules": nodules})
        cands, labels, centers_mm = detector.candidates_from_probability(
            out["image"], out["label"][0].numpy()
        )
        detections = detector.finish(cands, centers_mm, None)
        assert len(detections) == len(nodules)
        # what the rescoring reads at each centre: the nodule's HU (solid, or a part-solid
        # one's solid core); this image has no blob channel, so its response reads 0
        assert [c.source for c in cands] == ["unet"] * len(cands)
        assert all(c.center_hu > -300 and c.center_blob == 0.0 for c in cands), [
            (c.center_hu, c.center_blob) for c in cands
        ]
        points.append([d.as_point() for d in detections])
        references.append(nodules)
        result = ScanResult(detections=detections, label_map=labels, image=out["image"])
        findings, label_src = findings_on_source(result, source)
        assert label_src.shape == source.spatial_shape
        for nodule in nodules:
            center = np.asarray(nodule["center_lps_mm"])
            dist = [np.linalg.norm(np.asarray(f["center_lps_mm"]) - center) for f in findings]
            k = int(np.argmin(dist))
            assert dist[k] < 0.75, (seed, nodule, findings[k])  # half a resampled voxel
            finding = findings[k]
            assert finding["diameter_mm"] == pytest.approx(nodule["diameter_mm"], abs=1.0, rel=0.15)
            # the finding's source voxel is the nodule center's, and its mask covers it
            vox = source.lps_to_voxel(center[None])[0]
            assert np.allclose(finding["center_voxel"], vox, atol=1.0)
            assert label_src[tuple(np.rint(vox).astype(int))] == finding["mask_label"]
    result = froc(points, references)
    assert result.cpm == 1.0 and result.n_false_positives == 0


# ---------------------------------------------------------------- explanations of findings
EXPLAIN_CFG = replace(
    TINY,
    spacing_mm=(1.0, 1.0, 1.0),
    fp_patch_size=24,
    blob_sigmas_mm=(),  # CenterWeightedEvidence reads the CT channel alone
)


class CenterWeightedEvidence(torch.nn.Module):
    """A patch "classifier" whose evidence is known: its Grad-CAM layer outputs the patch
    weighted by a Gaussian centred on it, and its logit is that layer's mean, so the CAM's
    maximum is the brightest near-centre voxel (a solid nodule in lung). It checks where the
    maps land (patch origin, resampled grid -> flipped source grid); how faithful a trained
    classifier's maps are is what the bench's pointing game measures."""

    cam_target_layer = "features"

    def __init__(self, size: int) -> None:
        super().__init__()
        axis = torch.arange(size, dtype=torch.float32) - (size // 2)
        g = torch.exp(-(axis**2) / (2 * (size / 6) ** 2))
        self.register_buffer("weight", g[:, None, None] * g[None, :, None] * g[None, None, :])
        self.features = torch.nn.Conv3d(1, 1, 1, bias=False)
        torch.nn.init.ones_(self.features.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x * self.weight).mean(dim=(2, 3, 4))


@pytest.fixture(scope="module")
def explained():
    """A detector whose classifier is `CenterWeightedEvidence`, and a phantom stored with a
    flipped axis (so the source grid differs from the detector's RAS grid)."""
    from ai_engine.data.phantoms import make_chest_ct
    from ai_engine.detection.pipeline import NoduleDetector
    from ai_engine.networks import build_network

    cfg = EXPLAIN_CFG
    classifier = CenterWeightedEvidence(cfg.fp_patch_size).eval()
    detector = NoduleDetector(cfg, build_network("unet3d", **cfg.unet_kwargs), classifier)
    volume, nodules = make_chest_ct(77, shape=(96, 96, 32), n_nodules=4)
    assert len(nodules) >= 2, "the seed must give nodules"
    return detector, _flipped_x(volume), nodules


def test_finding_heat_map_has_the_source_geometry_and_points_at_the_nodule(explained, tmp_path):
    from ai_engine.detection.explain import explain_findings, pointing_game_detection
    from ai_engine.explain import save_heatmap

    detector, source, nodules = explained
    findings = [{"center_lps_mm": n["center_lps_mm"], "score": 1.0} for n in nodules]
    heat = explain_findings(detector, source, findings)
    assert heat.array.shape == source.spatial_shape
    assert np.array_equal(heat.affine, source.affine)
    assert heat.array.dtype == np.float32 and heat.array.min() >= 0.0 and heat.array.max() <= 1.0
    saved = nib.load(save_heatmap(heat, tmp_path / "heat.nii.gz"))
    assert saved.shape == source.spatial_shape
    # one nodule at a time: the map's maximum lies on the nodule (within its radius, give or
    # take half a voxel diagonal of the 1.5 mm grid the map is computed on)
    half_voxel = 0.5 * np.sqrt(3) * EXPLAIN_CFG.spacing_mm[0]
    inside = 0
    for nodule in nodules:
        one = explain_findings(detector, source, [{"center_lps_mm": nodule["center_lps_mm"]}])
        peak = np.array(np.unravel_index(int(np.argmax(one.array)), one.array.shape))
        peak_mm = source.voxel_to_lps(peak[None].astype(float))[0]
        dist = np.linalg.norm(peak_mm - np.asarray(nodule["center_lps_mm"]))
        assert dist <= nodule["diameter_mm"] / 2.0 + half_voxel, (nodule, dist)
        inside += int(dist <= nodule["diameter_mm"] / 2.0)
        # the combined map is the maximum of the per-finding maps
        assert heat.array[tuple(peak)] >= one.array[tuple(peak)] - 1e-6
    game = pointing_game_detection(detector, source, findings, nodules)
    assert game == {"n_true_positive": len(nodules), "n_hit": inside}
    assert inside >= len(nodules) - 1
    # a finding on no nodule is not a true positive
    far = [{"center_lps_mm": list(source.voxel_to_lps(np.array([[2.0, 2.0, 2.0]]))[0])}]
    assert pointing_game_detection(detector, source, far, nodules)["n_true_positive"] == 0


def test_no_findings_give_an_all_zero_heat_map_of_the_source_shape(explained):
    from ai_engine.detection.explain import explain_findings

    detector, source, _ = explained
    heat = explain_findings(detector, source, [])
    assert heat.array.shape == source.spatial_shape and not heat.array.any()
    assert np.array_equal(heat.affine, source.affine)


def test_explaining_needs_a_classifier_and_centers(explained):
    from ai_engine.detection.explain import explain_findings
    from ai_engine.detection.pipeline import NoduleDetector

    detector, source, _ = explained
    with pytest.raises(ValueError, match="no false-positive classifier"):
        explain_findings(NoduleDetector(detector.config, detector.unet, None), source, [{}])
    with pytest.raises(ValueError, match="center_lps_mm"):
        explain_findings(detector, source, [{"score": 0.9}])


# ---------------------------------------------------------------- U-Net options (issue #4)
def test_unet_norm_is_recorded_and_old_network_kwargs_still_build_batch_norm():
    """The norm goes into the network kwargs the model folder stores (so `predict` rebuilds the
    same net); kwargs written before the option (no "norm") still build the BatchNorm U-Net."""
    from ai_engine.networks import build_network

    cfg = DetectionConfig(unet_channels=(4, 8, 16), patch_size=(32, 32, 32))
    assert cfg.unet_norm == "instance" and cfg.unet_kwargs["norm"] == "instance"
    kinds = {type(m).__name__ for m in build_network("unet3d", **cfg.unet_kwargs).modules()}
    assert "InstanceNorm3d" in kinds and "BatchNorm3d" not in kinds
    old = {k: v for k, v in cfg.unet_kwargs.items() if k != "norm"}
    kinds = {type(m).__name__ for m in build_network("unet3d", **old).modules()}
    assert "BatchNorm3d" in kinds and "InstanceNorm3d" not in kinds
    assert (
        DetectionConfig.from_dict({**cfg.to_dict(), "unet_norm": "batch"}).unet_kwargs["norm"]
        == "batch"
    )
    with pytest.raises(ValueError, match="unet_norm"):
        DetectionConfig(unet_norm="layer")
    with pytest.raises(ValueError, match="combine"):
        DetectionConfig(combine="max")
    with pytest.raises(ValueError, match="candidate_peak_distance_mm must be >= 0"):
        DetectionConfig(candidate_peak_distance_mm=-1.0)
    with pytest.raises(ValueError, match="candidate_center_power must be > 0"):
        DetectionConfig(candidate_center_power=0.0)


def test_combine_candidate_ignores_the_classifier():
    from ai_engine.detection.candidates import combine_scores

    p, q = np.array([0.9, 0.2]), np.array([0.1, 0.8])
    assert np.allclose(combine_scores(p, q, "candidate"), p)
    assert np.allclose(combine_scores(p, q, "geometric"), np.sqrt(p * q))


def test_label_min_diameter_widens_small_nodule_targets_only():
    """A 3 mm nodule drawn with a 6 mm minimum covers about a 6 mm sphere; a 9 mm one is
    unchanged; both stay centred on the nodule."""
    from monai.data import MetaTensor

    from ai_engine.detection.transforms import sphere_mask

    ref = MetaTensor(torch.zeros(1, 40, 40, 40), affine=torch.diag(torch.tensor([1.0, 1, 1, 1])))
    small = [{"center_lps_mm": [-20.0, -20.0, 20.0], "diameter_mm": 3.0}]
    large = [{"center_lps_mm": [-20.0, -20.0, 20.0], "diameter_mm": 9.0}]
    sphere = np.pi / 6.0
    assert sphere_mask(ref, small).sum() == pytest.approx(sphere * 27, rel=0.35)
    widened = sphere_mask(ref, small, min_diameter_mm=6.0)
    assert widened.sum() == pytest.approx(sphere * 216, rel=0.15)
    idx = np.argwhere(widened > 0).mean(axis=0)
    assert np.allclose(idx, np.argwhere(sphere_mask(ref, small) > 0).mean(axis=0), atol=0.5)
    assert np.array_equal(sphere_mask(ref, large, 6.0), sphere_mask(ref, large))


def test_unknown_unet_loss_is_refused(data, tmp_path):
    from ai_engine.data.datalist import load_datalist
    from ai_engine.errors import InputError

    _root, datalist = data
    opts = DetectionTrainOptions(loss="mse", max_steps=1, progress=False)
    with pytest.raises(InputError, match="loss must be dicece or dicefocal"):
        train_detector(load_datalist(datalist), tmp_path / "m", TINY, opts)
    assert not (tmp_path / "m" / "model.json").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"fp_crop_jitter": -1}, "fp_crop_jitter must be >= 0 voxels, got -1"),
        ({"fp_gate_weight": -0.5}, "fp_gate_weight must be >= 0, got -0.5"),
        ({"fp_focal_gamma": -1.0}, "fp_focal_gamma must be >= 0, got -1.0"),
        ({"fp_cutmix_prob": 1.5}, "fp_cutmix_prob must be in [0, 1], got 1.5"),
        ({"fp_hard_fraction": 1.0}, "fp_hard_fraction must be in [0, 1), got 1.0"),
        ({"fp_hard_prob": 1.2}, "fp_hard_prob is a U-Net probability in [0, 1], got 1.2"),
        ({"mining_threshold": 0.0}, "mining_threshold is a U-Net probability in (0, 1), got 0.0"),
        (
            {"mined_negative_threshold": 1.0},
            "mined_negative_threshold is a U-Net probability in (0, 1), got 1.0",
        ),
        ({"random_negatives": -2}, "random_negatives must be >= 0, got -2"),
        ({"ema_decay": 1.0}, "ema_decay must be in (0, 1), got 1.0"),
        ({"small_nodule_weight": 0}, "small_nodule_weight must be >= 1, got 0"),
        (
            {"paste_copies": -1},
            "paste_copies must be >= 0 and paste_per_scan >= 1, got -1 and 4",
        ),
        (
            {"paste_copies": 1, "paste_per_scan": 0},
            "paste_copies must be >= 0 and paste_per_scan >= 1, got 1 and 0",
        ),
        ({"paste_max_diameter_mm": 0.0}, "paste_max_diameter_mm must be > 0, got 0.0"),
        ({"paste_attached_share": 1.5}, "paste_attached_share must be in [0, 1], got 1.5"),
        (
            {"rescore_l2": -1.0},
            "rescore_l2 and rescore_margin must be >= 0, got -1.0 and 0.02",
        ),
        (
            {"rescore_margin": -0.1},
            "rescore_l2 and rescore_margin must be >= 0, got 1.0 and -0.1",
        ),
        ({"rescore_degree": 3}, "rescore_degree must be one of (1, 2), got 3"),
        ({"rescore_degree": True}, "rescore_degree must be one of (1, 2), got True"),
    ],
)
def test_classifier_options_outside_their_range_are_refused(data, tmp_path, option, message):
    from ai_engine.data.datalist import load_datalist
    from ai_engine.errors import InputError

    _root, datalist = data
    opts = DetectionTrainOptions(max_steps=1, progress=False, **option)
    with pytest.raises(InputError, match=re.escape(message)):
        train_detector(load_datalist(datalist), tmp_path / "m", TINY, opts)
    assert not (tmp_path / "m").exists()  # refused before anything is written


def test_local_maxima_split_a_small_blob_from_a_large_one_it_touches():
    """Two touching blobs (a 10 mm one at p 0.9 and a 4 mm one at p 0.6 next to it) form one
    connected component; the peak extraction gives each its own candidate at its own centre."""
    grid = np.indices((40, 40, 40)).transpose(1, 2, 3, 0).astype(np.float64)
    big, small = np.array([15.0, 20, 20]), np.array([21.0, 20, 20])
    d_big = np.linalg.norm(grid - big, axis=-1)
    d_small = np.linalg.norm(grid - small, axis=-1)
    prob = np.maximum(0.9 * np.exp(-((d_big / 4.0) ** 2)), 0.6 * np.exp(-((d_small / 1.5) ** 2)))
    spacing = np.ones(3)
    merged, _ = extract_candidates(prob, spacing, threshold=0.2)
    assert len(merged) == 1
    split, labels = extract_candidates(prob, spacing, threshold=0.2, peak_distance_mm=2.0)
    assert len(split) == 2
    assert np.allclose(split[0].center_voxel, big, atol=0.6)
    assert np.allclose(split[1].center_voxel, small, atol=0.6)
    assert split[0].prob == pytest.approx(0.9, abs=0.01)
    assert split[1].prob == pytest.approx(0.6, abs=0.01)
    # the label map partitions the thresholded voxels between the candidates
    assert set(np.unique(labels)) == {0, split[0].component, split[1].component}
    assert np.array_equal(labels > 0, prob >= 0.2)


@pytest.mark.parametrize(("peak_distance", "power"), [(0.0, 1.0), (2.0, 1.0), (2.0, 3.0)])
def test_candidate_sizes_peaks_and_centres_are_scipys(peak_distance, power):
    """The per-region figures, read from the labelled voxels alone, are what `scipy.ndimage`
    gives over the whole grid (which took ~20 s of a CT-sized scan's inference)."""
    rng = np.random.default_rng(3)
    prob = ndimage.gaussian_filter(rng.random((40, 36, 30)), 2.0)
    prob = (prob - prob.min()) / (prob.max() - prob.min())
    cands, labels = extract_candidates(
        prob, np.ones(3), threshold=0.55, peak_distance_mm=peak_distance, center_power=power
    )
    assert len(cands) > 3
    index = [c.component for c in cands]
    assert [c.n_voxels for c in cands] == [int((labels == k).sum()) for k in index]
    assert [c.prob for c in cands] == pytest.approx(ndimage.maximum(prob, labels, index))
    expected = ndimage.center_of_mass(prob**power, labels, index)
    assert np.allclose([c.center_voxel for c in cands], expected, atol=1e-9)
    # a threshold of 0 makes regions of probability 0: their centre is the plain centroid
    flat = np.zeros((10, 10, 10))
    (zero,), _ = extract_candidates(flat, np.ones(3), threshold=0.0)
    assert np.allclose(zero.center_voxel, 4.5) and zero.prob == 0.0


def test_a_weak_blob_beside_a_stronger_peak_still_gets_a_candidate():
    """A separate component whose maximum is not a local maximum of the window (a higher peak
    lies within the distance, outside it) is seeded at its own highest voxel."""
    prob = np.zeros((20, 20, 20), np.float32)
    prob[5, 10, 10], prob[7, 10, 10] = 0.9, 0.5
    cands, _ = extract_candidates(prob, np.ones(3), threshold=0.3, peak_distance_mm=3.0)
    assert sorted(c.prob for c in cands) == pytest.approx([0.5, 0.9])


def test_blob_maxima_join_the_unet_candidates_where_it_has_none():
    """The blob channel's maxima become candidates unless a U-Net candidate already covers them
    (its radius, or the minimum separation); each new one gets its own region in the label map,
    the U-Net's probability there, a size from its half-maximum region, and at most n are
    added, strongest first; maxima outside `inside` are ignored."""
    grid = np.indices((40, 40, 40)).transpose(1, 2, 3, 0).astype(np.float64)

    def bump(center, width, height):
        return height * np.exp(-((np.linalg.norm(grid - np.array(center), axis=-1) / width) ** 2))

    found, missed, weak, outside = [10.0, 10, 10], [30.0, 10, 10], [10.0, 30, 30], [30.0, 30, 30]
    prob = bump(found, 2.0, 0.9) + bump(missed, 1.5, 0.08)
    blob = bump(found, 2.0, 1.0) + bump(missed, 1.5, 0.8) + bump(weak, 1.5, 0.3)
    blob += bump(outside, 1.5, 2.0)
    inside = np.ones(blob.shape, bool)
    inside[25:, 25:, 25:] = False
    spacing = np.ones(3)
    cands, labels = extract_candidates(prob, spacing, threshold=0.5)
    assert len(cands) == 1
    both, with_blobs = add_blob_candidates(cands, labels, blob, inside, prob, spacing, n=1)
    assert len(both) == 2 and both[0] is cands[0]  # the U-Net's own is kept first
    new = both[1]
    assert np.allclose(new.center_voxel, missed, atol=0.3)
    assert new.prob == pytest.approx(0.08, abs=0.01)  # what the U-Net gave it
    assert 1.5 < new.diameter_mm < 4.0
    assert new.n_voxels == int((with_blobs == new.component).sum()) > 0
    assert np.array_equal(with_blobs[labels > 0], labels[labels > 0])  # U-Net regions untouched
    assert labels.max() == cands[0].component  # the input map is not changed
    three, _ = add_blob_candidates(cands, labels, blob, inside, prob, spacing, n=10)
    centres = sorted(tuple(np.round(c.center_voxel).astype(int)) for c in three)
    assert centres == sorted([(10, 10, 10), (30, 10, 10), (10, 30, 30)])  # not `outside`
    none, same = add_blob_candidates(cands, labels, blob, inside, prob, spacing, n=0)
    assert none == cands and same is labels


def test_train_flags_set_the_blob_channel_blob_candidates_and_the_classifier():
    """`detection train`'s flags reach the config it trains; left out, the defaults hold."""
    from ai_engine.detection.cli import build_parser, config_from_args
    from ai_engine.errors import InputError

    parser = build_parser("detection")
    base = ["train", "--data", "d.json", "--out", "m"]
    default = config_from_args(parser.parse_args(base))
    assert default.spacing_mm == DetectionConfig().spacing_mm == (1.0, 1.0, 1.0)
    assert default.blob_sigmas_mm == DetectionConfig().blob_sigmas_mm
    assert default.blob_candidates == DetectionConfig().blob_candidates > 0
    assert default.fine_blob_candidates == DetectionConfig().fine_blob_candidates > 0
    assert default.fp_gate is True
    changed = config_from_args(
        parser.parse_args(
            [*base, "--blob-sigmas", "1,3", "--blob-candidates", "4", "--plain-classifier"]
        )
    )
    assert changed.blob_sigmas_mm == (1.0, 3.0) and changed.in_channels == 2
    assert changed.blob_candidates == 4 and changed.fp_gate is False
    assert "tumor_gate" not in changed.fp_kwargs
    ct_only = config_from_args(parser.parse_args([*base, "--blob-sigmas", "none"]))
    assert ct_only.blob_sigmas_mm == () and ct_only.in_channels == 1
    assert ct_only.blob_candidates == 0
    with pytest.raises(InputError, match="blob_candidates must be >= 0"):
        config_from_args(parser.parse_args([*base, "--blob-candidates", "-1"]))
    none = config_from_args(parser.parse_args([*base, "--fine-blob-candidates", "0"]))
    assert none.fine_blob_candidates == 0
    with pytest.raises(InputError, match="fine_blob_candidates must be >= 0"):
        config_from_args(parser.parse_args([*base, "--fine-blob-candidates", "-2"]))


def test_train_flip_flags_search_on_validation_or_fix_the_flips():
    """`--test-time-flips` / `--fp-test-time-flips`: 'search' (default) lets training choose
    on validation; 'on' / 'off' fix the config and skip the search."""
    from ai_engine.detection.cli import build_parser, config_from_args, train_options_from_args

    parser = build_parser("detection")
    base = ["train", "--data", "d.json", "--out", "m"]
    args = parser.parse_args(base)
    config, options = config_from_args(args), train_options_from_args(args)
    assert options.try_test_time_flips and options.try_fp_test_time_flips
    assert not config.test_time_flips and not config.fp_test_time_flips
    args = parser.parse_args([*base, "--test-time-flips", "off", "--fp-test-time-flips", "on"])
    config, options = config_from_args(args), train_options_from_args(args)
    assert not options.try_test_time_flips and not options.try_fp_test_time_flips
    assert config.test_time_flips is False and config.fp_test_time_flips is True
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--test-time-flips", "maybe"])


def test_train_mining_and_classifier_loss_flags_map_onto_the_options():
    """Left out, the flags give the library's defaults; given, they reach the options."""
    from ai_engine.detection.cli import build_parser, train_options_from_args

    parser = build_parser("detection")
    base = ["train", "--data", "d.json", "--out", "m"]
    default, library = train_options_from_args(parser.parse_args(base)), DetectionTrainOptions()
    assert default.mine_negatives_from is None
    for name in ("mined_negative_fraction", "fp_focal_gamma", "fp_cutmix_prob", "epochs", "lr",
                 "paste_copies", "paste_per_scan", "paste_max_diameter_mm",
                 "paste_attached_share", "rescore", "rescore_margin", "rescore_degree"):  # fmt: skip
        assert getattr(default, name) == getattr(library, name), name
    argv = [*base, "--mine-negatives-from", "8", "--mine-negatives-every", "2",
            "--mined-negative-fraction", "0.25", "--fp-focal-gamma", "0",
            "--fp-cutmix", "0", "--paste-copies", "2", "--paste-per-scan", "3",
            "--paste-max-diameter", "6", "--paste-attached-share", "0.5",
            "--no-rescore", "--rescore-margin", "0.05", "--rescore-degree", "1"]  # fmt: skip
    options = train_options_from_args(parser.parse_args(argv))
    assert (options.rescore, options.rescore_margin, options.rescore_degree) == (False, 0.05, 1)
    assert (options.paste_copies, options.paste_per_scan) == (2, 3)
    assert (options.paste_max_diameter_mm, options.paste_attached_share) == (6.0, 0.5)
    assert (options.mine_negatives_from, options.mine_negatives_every) == (8, 2)
    assert options.mined_negative_fraction == 0.25
    assert (options.fp_focal_gamma, options.fp_cutmix_prob) == (0.0, 0.0)


def test_train_with_fixed_flips_keeps_them_and_does_not_search(data, tmp_path, capsys):
    """`train --test-time-flips on --fp-test-time-flips off`: the folder holds exactly that,
    and validation tried the U-Net only with its flips and the classifier only without
    (`--ema-decay` rides along: both stages record that they kept the moving average; so does
    `--paste-copies`: both stages train on the pasted copies too, and the folder's training
    data hash is still that of the datalist's scans)."""
    from ai_engine.data.datalist import load_datalist
    from ai_engine.training import training_data_hash

    _, datalist = data
    out = tmp_path / "fixed"
    argv = ["detection", "train", "--data", str(datalist), "--out", str(out),
            "--patch-size", "32", "--roi-size", "32", "--epochs", "1", "--steps-per-epoch", "2",
            "--fp-epochs", "1", "--fp-steps-per-epoch", "2", "--batch-size", "2",
            "--fp-batch-size", "8", "--max-steps", "2", "--no-progress",
            "--test-time-flips", "on", "--fp-test-time-flips", "off",
            "--ema-decay", "0.9", "--paste-copies", "1", "--paste-per-scan", "2",
            "--paste-max-diameter", "30"]  # fmt: skip
    assert main(argv) == 0
    assert re.search(
        r"pasted [1-4] nodules into 2 copies of the 2 training scans", capsys.readouterr().out
    )
    folder = load_model_folder(out)
    given = load_datalist(datalist)
    assert folder.manifest["training_data"] == training_data_hash(
        {"training": given["training"], "validation": given["validation"]}
    )
    params = folder.manifest["made_by_params"]
    assert params["options"]["paste_copies"] == 1 and params["options"]["paste_per_scan"] == 2
    assert params["candidates"]["train_config"]["ema_decay"] == 0.9
    assert params["fp_reduction"]["train_config"]["ema_decay"] == 0.9
    assert folder.postprocessing["test_time_flips"] is True
    assert folder.postprocessing["fp_test_time_flips"] is False
    params = folder.manifest["made_by_params"]
    tried = {k for k in params["candidates"]["candidate_threshold"] if k.startswith("flips=")}
    assert tried == {"flips=True"}
    assert not any(
        k.endswith("+flips") for k in params["fp_reduction"]["combine"]["validation_cpm"]
    )


def test_blob_candidates_need_the_blob_channel():
    assert DetectionConfig(blob_sigmas_mm=(), blob_candidates=8).blob_candidates == 0
    with pytest.raises(ValueError, match="blob_candidates must be >= 0"):
        DetectionConfig(blob_candidates=-1)
    assert DetectionConfig.from_dict({"blob_sigmas_mm": [1.5]}).blob_candidates == 0


def test_fine_blob_candidates_are_checked_and_off_in_folders_written_before_them():
    with pytest.raises(ValueError, match="fine_blob_candidates must be >= 0"):
        DetectionConfig(fine_blob_candidates=-1)
    with pytest.raises(ValueError, match="fine_blob_sigma_mm must be positive"):
        DetectionConfig(fine_blob_sigma_mm=0.0)
    assert DetectionConfig().fine_blob_candidates > 0
    assert DetectionConfig.from_dict({"blob_sigmas_mm": [1.5]}).fine_blob_candidates == 0


def test_crop_centres_give_every_nodule_the_same_share():
    """`CropCentersd`: a 3-voxel and a 500-voxel nodule get the same number of positive crop
    centres, all on nodule voxels; background centres lie in the body outside the nodules, and
    about `hard_fraction` of them on soft tissue beside the lung."""
    from ai_engine.detection.transforms import CropCentersd

    image = np.full((1, 40, 40, 40), 0.1, np.float32)  # lung
    image[0, :, :, :4] = 0.75  # chest wall (soft tissue)
    label = np.zeros((1, 40, 40, 40), np.float32)
    label[0, 10:18, 10:18, 10:18] = 1  # 512 voxels
    label[0, 30, 30, 30:33] = 1  # 3 voxels
    image[label > 0] = 0.75
    out = CropCentersd(per_nodule=32, body_threshold=0.05, hard_fraction=0.5)(
        {"image": image, "label": label}
    )
    fg = np.unravel_index(out["fg_indices"], label.shape[1:])
    assert len(out["fg_indices"]) == 64
    assert label[0][fg].all()
    assert (np.asarray(fg[0]) == 30).sum() == 32
    bg = np.unravel_index(out["bg_indices"], label.shape[1:])
    assert not label[0][bg].any()
    hard = (image[0][bg] > 0.5).mean()
    assert 0.45 < hard < 0.6  # half hard by design, plus the body's own soft-tissue share


def test_crop_centres_draw_small_nodules_more_often_when_asked():
    """`small_weight` 3: a component smaller than a `small_diameter_mm` sphere (on the label's
    own voxel size) gets 3x the positive centres of a larger one; 1 (the default) keeps them
    equal."""
    from monai.data import MetaTensor

    from ai_engine.detection.transforms import CropCentersd

    label = np.zeros((1, 40, 40, 40), np.float32)
    label[0, 10:18, 10:18, 10:18] = 1  # 512 voxels
    label[0, 30, 30, 30:33] = 1  # 3 voxels
    image = np.where(label > 0, 0.75, 0.1).astype(np.float32)

    def small_share(lab, **kwargs):
        out = CropCentersd(per_nodule=32, body_threshold=0.05, **kwargs)(
            {"image": image, "label": lab}
        )
        fg = np.unravel_index(out["fg_indices"], label.shape[1:])
        assert label[0][fg].all()
        return int((np.asarray(fg[0]) == 30).sum()), len(out["fg_indices"])

    assert small_share(label) == (32, 64)
    # 1 mm voxels (no affine): a 7 mm sphere is 180 voxels; 3 are under it, 512 are not
    assert small_share(label, small_weight=3) == (96, 128)
    # 2 mm voxels: the 512-voxel cube is 4,096 mm3, 10 mm sphere's 524 mm3 does not cover it
    wide = MetaTensor(label, affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    assert small_share(wide, small_weight=3, small_diameter_mm=10.0) == (96, 128)
    # and at 0.5 mm voxels the cube is 64 mm3: both small, both weighted alike
    fine = MetaTensor(label, affine=torch.diag(torch.tensor([0.5, 0.5, 0.5, 1.0])))
    assert small_share(fine, small_weight=3) == (96, 192)


class _SpyUNet(torch.nn.Module):
    """Background everywhere (no U-Net candidate), counting its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = torch.zeros(x.shape[0], 2, *x.shape[2:]) + self.anchor
        out[:, 0] = 10.0
        return out


class _SpyClassifier(torch.nn.Module):
    """A one-channel `gate` (for `TumorSegAux`) and a constant logit, counting its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.gate = torch.nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.gate(x[:, :1])
        return torch.zeros(x.shape[0], 1)


def test_stage_validations_score_the_module_the_trainer_hands_them(data):
    """With `ema_decay` the trainer validates the moving average, not the network being
    trained: each stage's validation must run the module it is given (for the classifier,
    the one inside the gated classifier's training wrappers), not one it closed over."""
    from ai_engine.data.datalist import load_datalist
    from ai_engine.detection.train import (
        _classifier_validation,
        _MaskChannelAux,
        _preprocess_items,
        _unet_validation,
    )
    from ai_engine.training.seg_aux import TumorSegAux

    _root, datalist = data
    scans = _preprocess_items(load_datalist(datalist)["training"][:1], TINY)
    assert _unet_validation(TINY, [], "cpu") is None
    assert _classifier_validation(TINY, _SpyUNet(), [], "cpu") is None
    handed = _SpyUNet()
    result = _unet_validation(TINY, scans, "cpu")(handed)
    assert handed.calls > 0 and 0.0 <= result["cpm"] <= 1.0
    fixed = _SpyUNet()
    validate = _classifier_validation(TINY, fixed, scans, "cpu")
    candidates_found = fixed.calls
    classifier = _SpyClassifier()
    validate(_MaskChannelAux(TumorSegAux(classifier, ["gate"], [1])))
    assert classifier.calls > 0  # the blob candidates were scored by the handed classifier
    assert fixed.calls == candidates_found  # the U-Net's candidates were found once, up front
    plain = _SpyClassifier()
    validate(plain)
    assert plain.calls > 0


def test_training_options_set_the_unet_crop_centres():
    """The small nodules' weight, the hard-negative share and the body level of
    `DetectionTrainOptions` reach the `CropCentersd` the U-Net trains with."""
    from ai_engine.detection.train import _crop_centres

    config = DetectionConfig(hu_range=(-1000.0, 400.0))
    default = _crop_centres(config, DetectionTrainOptions())
    assert (default.small_weight, default.small_diameter_mm) == (1, 7.0)
    opts = DetectionTrainOptions(
        small_nodule_weight=3, small_nodule_mm=9.0, hard_negative_fraction=0.25,
        negative_min_hu=-930.0,
    )  # fmt: skip
    centres = _crop_centres(config, opts)
    assert (centres.small_weight, centres.small_diameter_mm) == (3, 9.0)
    assert centres.hard_fraction == 0.25
    assert centres.body_threshold == pytest.approx(70.0 / 1400.0)
    assert centres.lung_threshold == pytest.approx(500.0 / 1400.0)
    anywhere = _crop_centres(config, DetectionTrainOptions(negative_min_hu=None))
    assert anywhere.body_threshold == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"small_weight": 0}, "small_weight must be >= 1"),
        ({"hard_fraction": 1.0}, r"hard_fraction must be in \[0, 1\)"),
        ({"hard_fraction": -0.1}, r"hard_fraction must be in \[0, 1\)"),
        ({"per_nodule": 0}, "per_nodule must be >= 1"),
    ],
)
def test_crop_centres_refuse_settings_outside_their_range(kwargs, message):
    from ai_engine.detection.transforms import CropCentersd

    with pytest.raises(ValueError, match=message):
        CropCentersd(**kwargs)


def test_mined_negatives_put_their_share_of_background_centres_on_the_mined_regions():
    """`MinedNegativesd`: with fraction 1/4, 30 background centres become 40, the 10 added
    ones on the bank's voxels (shifted by half the padding added since mining); a scan the
    bank has nothing for keeps its centres; the case key is gone either way."""
    from ai_engine.detection.transforms import MinedNegativesd

    ijk = np.array([[3, 4, 5], [6, 7, 8]])
    bank = {0: (ijk, (10, 10, 10))}
    mined = MinedNegativesd(bank, fraction=0.25)
    bg = np.arange(30, dtype=np.int64)
    for shape, shift in (((10, 10, 10), 0), ((14, 12, 10), np.array([2, 1, 0]))):
        out = mined({"case": 0, "image": np.zeros((1, *shape)), "bg_indices": bg})
        assert "case" not in out and len(out["bg_indices"]) == 40
        np.testing.assert_array_equal(out["bg_indices"][:30], bg)
        added = np.stack(np.unravel_index(out["bg_indices"][30:], shape), axis=1)
        assert {tuple(v) for v in added} == {tuple(v) for v in ijk + shift}
    out = mined({"case": 1, "image": np.zeros((1, 10, 10, 10)), "bg_indices": bg})
    assert "case" not in out
    np.testing.assert_array_equal(out["bg_indices"], bg)
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\)"):
        MinedNegativesd(bank, fraction=1.0)


def test_mining_keeps_the_false_positive_regions_away_from_the_nodules():
    """`mine_false_positives`: a confident blob far from the nodule is mined (16 voxels, all
    inside it); one on the nodule's rim and a weak one (below the threshold) are not; the
    network is back in training mode afterwards."""
    from ai_engine.detection.pipeline import NoduleDetector
    from ai_engine.detection.train import mine_false_positives

    prob = np.zeros((40, 40, 40), np.float32)
    prob[4:7, 4:7, 4:7] = 0.9  # a false positive
    prob[20, 20, 26:28] = 0.9  # just outside the nodule (sphere r 5 at the centre): 1-2 voxels
    prob[30:33, 5:8, 30:33] = 0.3  # weak
    zz, yy, xx = np.mgrid[:40, :40, :40]
    label = (((zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2) <= 25)[None].astype(np.float32)
    net = torch.nn.Conv3d(1, 2, 1)
    detector = NoduleDetector(TINY, net)
    detector.probability = lambda image: prob  # the post-processing only, on a known map
    net.train()
    bank = mine_false_positives(detector, [{"image": None, "label": label}], threshold=0.5)
    assert net.training
    ijk, shape = bank[0]
    assert shape == (40, 40, 40) and len(ijk) == 16
    assert ((ijk >= 4) & (ijk < 7)).all()


def test_mined_bank_survives_a_round_trip_through_its_file(tmp_path):
    from ai_engine.detection.train import _load_bank, _save_bank

    bank = {0: (np.array([[1, 2, 3]]), (5, 6, 7)), 3: (np.zeros((0, 3), np.int64), (8, 8, 8))}
    _save_bank(bank, tmp_path / "bank.npz")
    back = _load_bank(tmp_path / "bank.npz")
    assert set(back) == {0, 3}
    for k in bank:
        np.testing.assert_array_equal(back[k][0], bank[k][0])
        assert back[k][1] == bank[k][1]


def _mining_options(**kw):
    return DetectionTrainOptions(
        epochs=4, steps_per_epoch=2, batch_size=2, fp_epochs=1, fp_steps_per_epoch=2,
        fp_batch_size=8, warmup_steps=1, early_stopping_patience=None, random_negatives=4,
        elastic_prob=0.0, progress=False, mine_negatives_from=1, mine_negatives_every=2,
        mined_negative_threshold=0.3, candidate_thresholds=(), combine_modes=(), **kw,
    )  # fmt: skip


def test_training_with_mining_resumed_between_two_minings_repeats_the_same_steps(
    data, tmp_path, monkeypatch
):
    """Mining at epochs 1 and 3; a run stopped after epoch 1 and resumed reloads the bank
    mined at epoch 1 for epoch 2 and ends with the same U-Net as a run never stopped."""
    from ai_engine.data.datalist import load_datalist
    from ai_engine.detection import train as train_module

    _, datalist = data
    items = load_datalist(datalist)
    full = train_detector(items, tmp_path / "full", TINY, _mining_options())
    params = load_model_folder(full).manifest["made_by_params"]["candidates"]
    assert [m["epoch"] for m in params["mined_negatives"]] == [1, 3]
    assert (full / "work" / "candidates" / "mined_negatives.npz").is_file()

    log = train_module._log

    def crash_after_epoch_1(message):
        log(message)
        if message.startswith("[candidates] epoch 2 "):  # the line of epoch index 1
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(train_module, "_log", crash_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train_detector(items, tmp_path / "part", TINY, _mining_options())
    monkeypatch.setattr(train_module, "_log", log)
    part = train_detector(items, tmp_path / "part", TINY, _mining_options(resume=True))
    a = load_model_folder(full).component("candidates").state_dict()
    b = load_model_folder(part).component("candidates").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"mined_negative_fraction": 1.0}, r"mined_negative_fraction must be in \[0, 1\)"),
        ({"mine_negatives_every": 0}, "mine_negatives_every >= 1"),
        ({"mine_negatives_from": -1}, "mine_negatives_from must be >= 0"),
        ({"balanced_nodules": False}, "hard-negative mining needs balanced_nodules"),
    ],
)
def test_mining_options_outside_their_range_are_refused(data, tmp_path, option, message):
    from ai_engine.data.datalist import load_datalist
    from ai_engine.errors import InputError

    _root, datalist = data
    opts = DetectionTrainOptions(
        max_steps=1, progress=False, **{"mine_negatives_from": 0, **option}
    )
    with pytest.raises(InputError, match=message):
        train_detector(load_datalist(datalist), tmp_path / "m", TINY, opts)
    assert not (tmp_path / "m").exists()


def test_classifier_only_training_keeps_the_unet_and_its_candidate_settings(data, model, tmp_path):
    """`candidates_from`: the new folder's U-Net is the given folder's, weight for weight, with
    its preprocessing and candidate settings; the classifier is trained anew with the settings
    passed (here 8 blob candidates instead of the 16 it was trained with)."""
    from ai_engine.data.datalist import load_datalist
    from ai_engine.detection.config import CANDIDATE_STAGE_FIELDS

    _, datalist = data
    opts = DetectionTrainOptions(
        fp_epochs=1, fp_steps_per_epoch=2, fp_batch_size=8, random_negatives=4,
        elastic_prob=0.0, progress=False, candidates_from=str(model), combine_modes=(),
    )  # fmt: skip
    other = DetectionConfig.from_dict(
        {**TINY.to_dict(), "candidate_threshold": 0.99, "blob_candidates": 8}
    )
    out = train_detector(load_datalist(datalist), tmp_path / "cls", other, opts)
    old, new = load_model_folder(model), load_model_folder(out)
    for key, value in old.component("candidates").state_dict().items():
        torch.testing.assert_close(new.component("candidates").state_dict()[key], value)
    old_cls = old.component("fp_reduction").state_dict()
    new_cls = new.component("fp_reduction").state_dict()
    assert any(not torch.equal(old_cls[k], new_cls[k]) for k in old_cls)
    old_cfg = {**old.preprocessing, **old.postprocessing}
    new_cfg = {**new.preprocessing, **new.postprocessing}
    for name in CANDIDATE_STAGE_FIELDS:
        assert new_cfg[name] == old_cfg[name], name
    assert new_cfg["blob_candidates"] == 8
    assert new.manifest["made_by_params"]["candidates"] == {"candidates_from": str(model)}
    assert not (out / "work" / "candidates").exists()  # no U-Net training


def test_every_config_field_belongs_to_the_candidate_stage_or_the_classifier():
    """`CANDIDATE_STAGE_FIELDS` is what classifier-only training keeps: a new field must be
    placed on one side on purpose, or a kept U-Net would run with settings it was not made for."""
    from dataclasses import fields

    from ai_engine.detection.config import CANDIDATE_STAGE_FIELDS

    classifier_side = {
        "fp_patch_size", "fp_channels", "fp_gate", "fp_test_time_flips", "combine",
        "finding_threshold", "blob_candidates", "fine_blob_candidates", "fine_blob_sigma_mm",
        "rescore", "extra",
    }  # fmt: skip
    names = {f.name for f in fields(DetectionConfig)}
    assert set(CANDIDATE_STAGE_FIELDS) <= names
    assert names - set(CANDIDATE_STAGE_FIELDS) == classifier_side


@pytest.mark.parametrize("where", ["missing", "itself"])
def test_classifier_only_training_needs_another_detection_folder(data, tmp_path, where):
    from ai_engine.data.datalist import load_datalist
    from ai_engine.errors import InputError

    _, datalist = data
    out = tmp_path / "m"
    source = tmp_path / "nowhere" if where == "missing" else out
    opts = DetectionTrainOptions(max_steps=1, progress=False, candidates_from=str(source))
    message = "candidates_from .*nowhere" if where == "missing" else "is the output folder"
    with pytest.raises(InputError, match=message):
        train_detector(load_datalist(datalist), out, TINY, opts)
    assert not out.exists()


def test_test_time_flips_average_the_flipped_passes():
    """With `test_time_flips` the map is the mean of four passes (the image and its flips
    along each axis, flipped back): for a network that marks its input's left half, the
    x-flipped pass marks the right half and the other two the left."""
    from monai.data import MetaTensor

    from ai_engine.detection.pipeline import NoduleDetector

    class LeftHalf(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 2, *x.shape[2:])
            out[:, 0] = 5.0
            out[:, 1, : x.shape[2] // 2] = 10.0
            return out

    cfg = DetectionConfig(
        patch_size=(16, 16, 16), sw_roi_size=(32, 32, 32), unet_channels=(4, 8), sw_overlap=0.0
    )
    image = MetaTensor(torch.ones(1, 32, 32, 32))
    plain = NoduleDetector(cfg, LeftHalf()).probability(image)
    assert plain[:16].min() > 0.99 and plain[16:].max() < 0.01
    cfg.test_time_flips = True
    flipped = NoduleDetector(cfg, LeftHalf()).probability(image)
    assert np.allclose(flipped, (3 * plain + plain[::-1]) / 4, atol=1e-6)


def test_the_fine_candidates_join_after_the_networks_for_the_rescoring(data, model, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    """The classifier's samples are mined from the networks' own candidates; the fine dot
    filter's maxima join them only when the rescoring is fitted (the real functions, watched)."""
    import ai_engine.detection.train as train_module
    from ai_engine.data.datalist import load_datalist

    seen: dict[str, int] = {}
    mine, fit = train_module.mine_classifier_samples, train_module.fit_rescorer

    def watched_mine(detector, *args, **kwargs):
        seen["mining"] = detector.config.fine_blob_candidates
        return mine(detector, *args, **kwargs)

    def watched_fit(detector, *args, **kwargs):
        seen["rescoring"] = detector.config.fine_blob_candidates
        return fit(detector, *args, **kwargs)

    monkeypatch.setattr(train_module, "mine_classifier_samples", watched_mine)
    monkeypatch.setattr(train_module, "fit_rescorer", watched_fit)
    train_detector(
        load_datalist(data[1]),
        tmp_path / "fine",
        replace(TINY, fine_blob_candidates=3),
        tiny_train_options(candidates_from=str(model)),
    )
    assert seen == {"mining": 0, "rescoring": 3}


def test_the_rescoring_is_fitted_on_the_training_and_the_calibration_scans(data, model, tmp_path,
                                                                         monkeypatch):  # fmt: skip
    """A datalist's "calibration" scans join the training scans' candidates in the rescoring's
    fit (preprocessed one at a time), of degree 2 by default; they count in the folder's data
    hash and its record (the real fit, watched)."""
    import ai_engine.detection.train as train_module
    from ai_engine.data.datalist import load_datalist

    datalist = load_datalist(data[1])
    calibration = datalist["testing"] * 2  # the tiny set has no other scan: twice the same one
    seen: dict[str, object] = {}
    fit = train_module.fit_rescorer

    def watched_fit(detector, scans, l2, degree):
        scans = list(scans)
        seen.update(n=len(scans), degree=degree, nodules=[s["nodules"] for s in scans])
        return fit(detector, scans, l2, degree)

    monkeypatch.setattr(train_module, "fit_rescorer", watched_fit)
    out = train_detector(
        {**datalist, "calibration": calibration},
        tmp_path / "calibrated",
        TINY,
        tiny_train_options(candidates_from=str(model)),
    )
    assert seen["n"] == len(datalist["training"]) + 2 and seen["degree"] == 2
    expected = [it["nodules"] for it in [*datalist["training"], *calibration]]
    assert seen["nodules"] == expected
    folder = load_model_folder(out)
    assert folder.manifest["training_data"]["n_items"] == {
        "calibration": 2, "training": 2, "validation": 1
    }  # fmt: skip
    info = folder.manifest["made_by_params"]["fp_reduction"]["rescore"]
    if "fitted" in info:  # the tiny networks' candidates may hold no hit to fit on
        assert info["calibration_scans"] == 2 and info["training_scans"] == 2
    seen.clear()
    train_detector(
        datalist,
        tmp_path / "plain",
        TINY,
        tiny_train_options(candidates_from=str(model), rescore_degree=1),
    )
    assert seen["n"] == len(datalist["training"]) and seen["degree"] == 1


# ---------------------------------------------------------------- gated classifier (issue #5)
def test_training_records_the_rescoring_fitted_or_why_not(model):
    """After stage 2 the rescoring is fitted on the training scans' candidates and stored, or,
    where those hold no hit (this tiny model's), the folder says so and keeps a fixed mode
    (the fit itself: tests/ai_engine/test_detection_rescore.py)."""
    from ai_engine.detection.rescore import Rescorer

    folder = load_model_folder(model)
    info = folder.manifest["made_by_params"]["fp_reduction"]["rescore"]
    if "fitted" in info:
        assert folder.postprocessing["rescore"] == info["fitted"]
        assert Rescorer.from_dict(info["fitted"]).n_positive > 0
    else:
        assert info == {"skipped": "rescoring needs positive and negative candidates"}
        assert folder.postprocessing["rescore"] is None
        assert folder.postprocessing["combine"] != "rescored"
    # the fine filter's candidates stay only where the rescoring scores them
    fine = folder.postprocessing["fine_blob_candidates"]
    assert (fine > 0) == (folder.postprocessing["combine"] == "rescored")


def _known_rescorer(*_args, **_kwargs):
    """A rescoring fitted on samples whose nodules have the stronger blob response: what
    `fit_rescorer` returns in the tests below, where the tiny U-Net's training candidates hold
    no hit to fit on."""
    from ai_engine.detection.rescore import FEATURES, Rescorer

    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.2).astype(float)
    x = rng.normal(size=(300, len(FEATURES)))
    x[:, FEATURES.index("blob_max_3mm")] += 2.0 * y
    return Rescorer.fit(x, y)


def test_a_fitted_rescoring_within_the_margin_is_the_folders_score(
    data, model, tmp_path, monkeypatch
):
    """Kept on validation: the folder scores "rescored", with the blob candidates the
    classifier was trained on and the classifier unflipped (as it was fitted), and its
    validation CPM sits in the table beside the fixed modes'."""
    from ai_engine.data.datalist import load_datalist
    from ai_engine.detection.pipeline import NoduleDetector

    monkeypatch.setattr("ai_engine.detection.train.fit_rescorer", _known_rescorer)
    opts = replace(_one_classifier_step(model), combine_modes=("mean",), rescore_margin=1.0)
    out = train_detector(load_datalist(data[1]), tmp_path / "m", TINY, opts)
    folder = load_model_folder(out)
    info = folder.manifest["made_by_params"]["fp_reduction"]
    assert folder.postprocessing["rescore"] == info["rescore"]["fitted"]
    assert folder.postprocessing["rescore"] == _known_rescorer().to_dict()
    assert info["combine"]["chosen"] == folder.postprocessing["combine"] == "rescored"
    assert "rescored" in info["combine"]["validation_cpm"]
    assert folder.postprocessing["blob_candidates"] == TINY.blob_candidates
    assert folder.postprocessing["fp_test_time_flips"] is False
    # the fine filter's candidates stay with the rescoring that scores them
    assert folder.postprocessing["fine_blob_candidates"] == TINY.fine_blob_candidates > 0
    assert info["combine"]["fine_blob_candidates"] == TINY.fine_blob_candidates
    detector = NoduleDetector.from_model_folder(out)
    item = load_datalist(data[1])["testing"][0]
    scores = [d.score for d in detector.detect(item["image"]).detections]
    assert all(0.0 < s < 1.0 for s in scores)


def test_without_validation_scans_a_fitted_rescoring_is_the_score(
    data, model, tmp_path, monkeypatch
):
    from ai_engine.data.datalist import load_datalist

    monkeypatch.setattr("ai_engine.detection.train.fit_rescorer", _known_rescorer)
    datalist = {**load_datalist(data[1]), "validation": []}
    out = train_detector(datalist, tmp_path / "m", TINY, _one_classifier_step(model))
    post = load_model_folder(out).postprocessing
    assert post["combine"] == "rescored" and post["rescore"] == _known_rescorer().to_dict()
    assert post["blob_candidates"] == TINY.blob_candidates
    assert post["fine_blob_candidates"] == TINY.fine_blob_candidates


def test_no_rescore_fits_nothing_and_keeps_a_fixed_score(data, model, tmp_path, monkeypatch):
    from ai_engine.data.datalist import load_datalist

    def refuse(*_args, **_kwargs):
        raise AssertionError("fit_rescorer called with rescore=False")

    monkeypatch.setattr("ai_engine.detection.train.fit_rescorer", refuse)
    datalist = {**load_datalist(data[1]), "validation": []}
    opts = _one_classifier_step(model, rescore=False)
    out = train_detector(datalist, tmp_path / "m", TINY, opts)
    folder = load_model_folder(out)
    assert folder.postprocessing["rescore"] is None
    assert folder.postprocessing["combine"] == TINY.combine
    assert "rescore" not in folder.manifest["made_by_params"]["fp_reduction"]
    assert folder.postprocessing["fine_blob_candidates"] == 0  # nothing would score them


def test_training_chooses_the_blob_candidate_count_on_validation(model):
    """The classifier trains on the U-Net's and the blob channel's candidates (16 per scan);
    the count used at inference is the one of 0, 8, 16 with the best validation CPM, tried
    with every score combination, and it is what the folder stores."""
    folder = load_model_folder(model)
    chosen = folder.manifest["made_by_params"]["fp_reduction"]["combine"]
    table = dict(chosen["validation_cpm"])
    rescored = table.pop("rescored", None)  # the rescoring as fitted, beside the fixed modes
    assert {key.split("@")[1].removesuffix("+flips") for key in table} == {"0", "8", "16"}
    # each (mode, count) with the classifier's flips off and on
    assert sum(key.endswith("+flips") for key in table) == len(table) // 2
    best = max(table.values())
    if chosen["chosen"] == "rescored":  # kept: within the margin of the best fixed mode
        assert rescored >= best - DetectionTrainOptions().rescore_margin
        assert chosen["blob_candidates"] == 16 and chosen["fp_test_time_flips"] is False
    else:
        assert rescored is None or rescored < best - DetectionTrainOptions().rescore_margin
        flips = "+flips" if chosen["fp_test_time_flips"] else ""
        assert table[f"{chosen['chosen']}@{chosen['blob_candidates']}{flips}"] == best
    assert folder.postprocessing["blob_candidates"] == chosen["blob_candidates"]
    assert folder.postprocessing["combine"] == chosen["chosen"]
    assert folder.postprocessing["fp_test_time_flips"] == chosen["fp_test_time_flips"]


def test_classifier_test_time_flips_average_the_eight_flipped_patches():
    """With `fp_test_time_flips` a candidate's probability is the mean over its patch and the
    patch flipped along every combination of axes: for a classifier whose logit is the
    patch's mean over one corner octant, that is the mean over all eight octants' sigmoids."""
    from monai.data import MetaTensor

    from ai_engine.detection.pipeline import NoduleDetector

    class Corner(torch.nn.Module):
        def forward(self, x):
            h = x.shape[-1] // 2
            return x[:, :1, :h, :h, :h].mean(dim=(1, 2, 3, 4))[:, None]

    cfg = DetectionConfig(fp_patch_size=16, blob_sigmas_mm=())
    gen = torch.Generator().manual_seed(0)
    image = MetaTensor(torch.rand(1, 40, 40, 40, generator=gen) * 4 - 2)
    centers = np.array([[20.0, 20.0, 20.0], [12.0, 25.0, 18.0]])
    plain = NoduleDetector(cfg, torch.nn.Identity(), Corner()).classify(image, centers)
    cfg.fp_test_time_flips = True
    flipped = NoduleDetector(cfg, torch.nn.Identity(), Corner()).classify(image, centers)
    for (x, y, z), p, f in zip(centers.astype(int), plain, flipped, strict=True):
        patch = image[0, x - 8 : x + 8, y - 8 : y + 8, z - 8 : z + 8]
        octants = [
            torch.sigmoid(patch[i : i + 8, j : j + 8, k : k + 8].mean())
            for i in (0, 8) for j in (0, 8) for k in (0, 8)
        ]  # fmt: skip
        assert p == pytest.approx(float(octants[0]), abs=1e-5)
        assert f == pytest.approx(float(torch.stack(octants).mean()), abs=1e-5)
    assert not np.allclose(plain, flipped)
    # folders written before the option load with the flips off
    old = {k: v for k, v in cfg.to_dict().items() if k != "fp_test_time_flips"}
    assert DetectionConfig.from_dict(old).fp_test_time_flips is False


def test_the_trained_classifier_is_gated_and_its_cam_layer_is_the_gate(model):
    """By default the false-positive classifier is a `GatedResNet` with one logit (not
    centred: a single class has nothing to centre on); the stored kwargs rebuild it, and the
    finding explanations take its gated map."""
    from ai_engine.detection.pipeline import NoduleDetector
    from ai_engine.explain import find_target_layer
    from ai_engine.networks.resnet3d import GatedResNet

    folder = load_model_folder(model)
    stored = folder.manifest["components"]["fp_reduction"]["network"]["kwargs"]
    assert stored["tumor_gate"] is True
    detector = NoduleDetector.from_model_folder(model)
    assert isinstance(detector.classifier, GatedResNet)
    x = torch.rand(3, TINY.in_channels, TINY.fp_patch_size, TINY.fp_patch_size, TINY.fp_patch_size)
    with torch.no_grad():
        logits = detector.classifier(x)
    assert logits.shape == (3, 1) and float(logits.abs().sum()) > 0
    assert find_target_layer(detector.classifier, x[:1]) == "gate.gated"
    # folders written before the option rebuild the plain ResNet
    old = {k: v for k, v in TINY.to_dict().items() if k != "fp_gate"}
    assert "tumor_gate" not in DetectionConfig.from_dict(old).fp_kwargs


def test_classifier_samples_carry_the_nodule_spheres_of_their_patches(data):
    """The gated classifier's mask target: for each mined patch, the nodule spheres cut at
    the same place (a positive patch has its nodule at the centre, a far negative none)."""
    from ai_engine.data.datalist import load_datalist
    from ai_engine.detection.pipeline import NoduleDetector
    from ai_engine.detection.train import _preprocess_items, mine_classifier_samples
    from ai_engine.networks import build_network

    root, datalist = data
    items = [
        {**it, "image": str(root / it["image"])}
        for it in load_datalist(datalist)["training"]
        if it["nodules"]
    ][:1]
    scans = _preprocess_items(items, TINY)
    detector = NoduleDetector(TINY, build_network("unet3d", **TINY.unet_kwargs), None)
    opts = DetectionTrainOptions(random_negatives=6, progress=False)
    samples = mine_classifier_samples(detector, scans, TINY, opts, np.random.default_rng(0))
    size = TINY.fp_patch_size + 2 * opts.fp_crop_jitter
    centre = slice(size // 2 - 1, size // 2 + 2)
    positives = [s for s in samples if s["label"][0] == 1.0]
    negatives = [s for s in samples if s["label"][0] == 0.0]
    assert positives and negatives
    for s in samples:
        assert s["image"].shape == (TINY.in_channels, size, size, size)
        assert s["mask"].shape == (1, size, size, size)
    assert all(s["mask"][0, centre, centre, centre].max() == 1.0 for s in positives)
    assert any(s["mask"].max() == 0.0 for s in negatives)  # random tissue away from nodules


def test_false_positives_the_unet_is_sure_of_are_the_hard_negatives(data):
    """`mine_classifier_samples` marks as hard exactly the mined candidates that hit no
    nodule and have U-Net probability >= `fp_hard_prob`: here a confident blob far from the
    nodules, not a weak one (0.3), not the nodules, not random tissue or blob maxima."""
    from ai_engine.data.datalist import load_datalist
    from ai_engine.detection.pipeline import NoduleDetector
    from ai_engine.detection.train import _preprocess_items, mine_classifier_samples
    from ai_engine.networks import build_network

    root, datalist = data
    items = [
        {**it, "image": str(root / it["image"])}
        for it in load_datalist(datalist)["training"]
        if it["nodules"]
    ][:1]
    scans = _preprocess_items(items, TINY)
    prob = np.where(np.asarray(scans[0]["label"])[0] > 0.5, 0.95, 0.0).astype(np.float32)
    prob[1:4, 1:4, 1:4] = 0.9  # a confident false positive, in a corner far from the lungs
    prob[1:4, -4:-1, 1:4] = 0.3  # a weak one
    detector = NoduleDetector(TINY, build_network("unet3d", **TINY.unet_kwargs), None)
    detector.probability = lambda image: prob  # a known map
    opts = DetectionTrainOptions(random_negatives=6, progress=False)
    samples = mine_classifier_samples(detector, scans, TINY, opts, np.random.default_rng(0))
    hard = [s for s in samples if s["hard"]]
    assert len(hard) == 1 and hard[0]["label"][0] == 0.0
    assert sum(s["label"][0] == 1.0 for s in samples) >= 3 * len(items[0]["nodules"])


def _one_classifier_step(model, **options) -> DetectionTrainOptions:
    """Options of a one-step classifier-only training on the fixture model's U-Net."""
    return DetectionTrainOptions(
        fp_epochs=1, fp_steps_per_epoch=1, fp_batch_size=8, random_negatives=8,
        elastic_prob=0.0, progress=False, candidates_from=str(model), combine_modes=(),
        **options,
    )  # fmt: skip


def test_classifier_training_repeats_its_hard_negatives_to_the_share_asked(data, model, tmp_path):
    """Through `train_detector` (the classifier alone on the fixture's U-Net): with every mined
    miss counted hard (`fp_hard_prob` 0), `fp_hard_fraction` 0.95 trains on more samples than 0,
    and the folder records how many hard negatives there were."""
    from ai_engine.data.datalist import load_datalist

    _, datalist = data
    sizes = {}
    for fraction in (0.0, 0.95):
        opts = _one_classifier_step(model, fp_hard_prob=0.0, fp_hard_fraction=fraction)
        out = train_detector(load_datalist(datalist), tmp_path / f"h{fraction}", TINY, opts)
        info = load_model_folder(out).manifest["made_by_params"]["fp_reduction"]
        assert info["n_hard_negative_unique"] > 0
        sizes[fraction] = info["n_samples"]
    assert sizes[0.95] > sizes[0.0]


def test_classifier_focal_gamma_reaches_its_loss(data, model, tmp_path):
    """The same first classifier step (same seed, no CutMix, no mask loss) costs less with the
    focal term (gamma 2) than as plain binary cross-entropy (gamma 0): (1 - p_t)^2 < 1."""
    from ai_engine.data.datalist import load_datalist

    _, datalist = data
    first_loss = {}
    for gamma in (0.0, 2.0):
        opts = _one_classifier_step(
            model, fp_gate_weight=0.0, fp_cutmix_prob=0.0, fp_focal_gamma=gamma
        )
        out = train_detector(load_datalist(datalist), tmp_path / f"g{gamma}", TINY, opts)
        log = (out / "work" / "fp_reduction" / "log.jsonl").read_text().splitlines()
        first_loss[gamma] = json.loads(log[0])["train_loss"]
    assert 0 < first_loss[2.0] < 0.5 * first_loss[0.0]


def test_balance_repeats_hard_negatives_to_their_share_then_positives_to_theirs():
    from ai_engine.detection.patches import balance

    items = [{"label": np.array([1.0]), "id": f"p{i}"} for i in range(2)]
    items += [{"label": np.array([0.0]), "id": f"n{i}"} for i in range(10)]
    hard = [False, False, True, True] + [False] * 8  # n0 and n1
    out = balance(items, np.random.default_rng(0), 0.3, hard=hard, hard_fraction=0.5)
    ids = [x["id"] for x in out]
    negatives = [i for i in ids if i.startswith("n")]
    assert len(negatives) == 16 and sum(i in ("n0", "n1") for i in negatives) == 8  # 8 of 16
    assert sum(i.startswith("p") for i in ids) == 7  # ceil(0.3 * 16 / 0.7)
    plain = [x["id"] for x in balance(items, np.random.default_rng(0), 0.3)]
    assert len(plain) == 15 and sum(i.startswith("p") for i in plain) == 5  # as before
    same = balance(items, np.random.default_rng(0), 0.3, hard=hard, hard_fraction=0.1)
    assert len(same) == 15  # already 2 of 10 hard: nothing repeated


def test_centred_upsampling_puts_coarse_cells_back_where_the_strided_convs_sampled():
    """A stride-s cell i is centred on fine voxel s * i: the gated classifier's fused map
    keeps a feature where it was (the edge-aligned resampling of older networks moved stage
    2 by half a voxel and stage 3 by one and a half), so its Grad-CAM can sit on a 3 mm
    nodule."""
    from ai_engine.networks.resnet3d import _upsample_centers, _upsample_like

    ref = torch.zeros(1, 1, 24, 24, 24)
    for stride, shift_before in ((2, 0.5), (4, 1.5)):
        x = torch.zeros(1, 1, 24 // stride, 24 // stride, 24 // stride)
        x[0, 0, 12 // stride, 12 // stride, 12 // stride] = 1.0
        for upsample, shift in ((_upsample_centers, 0.0), (_upsample_like, shift_before)):
            up = upsample(x, ref)[0, 0]
            assert up.shape == (24, 24, 24)
            peak = torch.nonzero(up == up.max()).float().mean(dim=0)
            assert torch.allclose(peak, torch.full((3,), 12.0 + shift)), (upsample, peak)
    assert TINY.fp_kwargs["centered_upsampling"] is True


def test_gated_training_wrapper_splits_the_mask_channel_off_and_gated_nets_need_an_output():
    """`_MaskChannelAux` hands the classifier every channel but the last (the mask that rode
    through augmentation and CutMix) and returns that mask beside the logits and gate logits;
    a GatedResNet without outputs is refused."""
    from ai_engine.detection.train import _MaskChannelAux
    from ai_engine.networks.resnet3d import GatedResNet
    from ai_engine.training.seg_aux import TumorSegAux

    net = GatedResNet(2, 1, block_inplanes=(4, 8, 8, 8), conv1_t_stride=1).eval()
    wrapper = _MaskChannelAux(TumorSegAux(net, ["gate.gate_logits"], [1]))
    x = torch.rand(2, 3, 16, 16, 16)
    with torch.no_grad():
        logits, segs, mask = wrapper(x)
        alone = net(x[:, :2])
    assert torch.equal(mask, x[:, 2:]) and torch.allclose(logits, alone)
    assert len(segs) == 1 and segs[0].shape == (2, 1, 16, 16, 16)
    with pytest.raises(ValueError, match="num_classes >= 1"):
        GatedResNet(2, 0)


def _bench_detection():
    import importlib.util

    path = REPO / "bench" / "bench_detection.py"
    spec = importlib.util.spec_from_file_location("bench_detection", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_splits_under_a_relative_work_folder_load_back(tmp_path, monkeypatch):
    """`--work var/bench/detection` (relative): the datalist's scans must still be found."""
    from ai_engine.data.datalist import load_datalist

    bench = _bench_detection()
    monkeypatch.chdir(tmp_path)
    items = bench.make_split(Path("work"), "test", [9000], SHAPE)
    datalist = write_datalist({"testing": items}, Path("work") / "datalist.json")
    (loaded,) = load_datalist(datalist)["testing"]
    assert Path(loaded["image"]) == (tmp_path / "work" / "test" / "ct_09000").resolve()
    assert loaded["nodules"] == items[0]["nodules"]


def test_bench_flags_reach_the_config_and_the_training_options():
    """Each of the detection bench's model flags lands in the field it names (a flag the
    bench parsed but dropped would make a reported comparison a run of the defaults)."""
    bench = _bench_detection()
    parser = bench.build_parser()
    config, opts = bench.training_setup(parser.parse_args([]))
    assert config.spacing_mm == (1.0, 1.0, 1.0) and not config.test_time_flips
    assert opts.ema_decay is None and not opts.try_test_time_flips
    assert opts.paste_copies == 0 and opts.rescore is True
    assert config.unet_channels == DetectionConfig().unet_channels  # the library's
    assert config.fine_blob_candidates == DetectionConfig().fine_blob_candidates  # the library's
    assert parser.parse_args([]).n_test == 192 and parser.parse_args([]).n_calibration == 192
    assert opts.rescore_degree == 2
    assert bench.training_setup(parser.parse_args(["--rescore-degree", "1"]))[1].rescore_degree == 1
    argv = ["--spacing", "1.5", "--patch", "48", "--norm", "batch", "--roi", "96",
            "--overlap", "0.25", "--fp-patch", "32", "--fp-channels", "16,32,64,64",
            "--unet-channels", "16,32,64,128",
            "--peak-distance", "3", "--blob-candidates", "8", "--fine-blob-candidates", "3",
            "--plain-classifier",
            "--test-time-flips", "search", "--epochs", "3", "--steps-per-epoch", "7",
            "--fp-epochs", "5", "--fp-steps-per-epoch", "9", "--batch-size", "6",
            "--fp-batch-size", "12", "--lr", "0.02", "--fp-lr", "0.002", "--patience", "4",
            "--pos-neg", "2,1", "--label-min-diameter", "5", "--dice", "batch",
            "--hard-fraction", "0.25", "--mine-negatives-from", "2",
            "--mine-negatives-every", "3", "--mined-negative-fraction", "0.2",
            "--candidates-from", "m0", "--fp-hard-fraction", "0.3", "--fp-gate-weight", "0.5",
            "--fp-focal-gamma", "1", "--fp-cutmix", "0", "--fp-crop-jitter", "2",
            "--ema", "0.99", "--small-nodule-weight", "3", "--resume",
            "--paste-copies", "2", "--paste-per-scan", "5", "--no-rescore",
            "--seed", "5"]  # fmt: skip
    config, opts = bench.training_setup(parser.parse_args(argv))
    assert config.spacing_mm == (1.5,) * 3 and config.patch_size == (48,) * 3
    assert (config.unet_norm, config.sw_roi_size, config.sw_overlap) == ("batch", (96,) * 3, 0.25)
    assert (config.fp_patch_size, config.fp_channels) == (32, (16, 32, 64, 64))
    assert config.unet_channels == (16, 32, 64, 128)
    assert (config.candidate_peak_distance_mm, config.blob_candidates) == (3.0, 8)
    assert config.fine_blob_candidates == 3
    assert config.fp_gate is False and config.test_time_flips is False
    assert opts.try_test_time_flips is True
    assert (opts.epochs, opts.steps_per_epoch, opts.fp_epochs, opts.fp_steps_per_epoch) == (
        3, 7, 5, 9,
    )  # fmt: skip
    assert (opts.batch_size, opts.fp_batch_size, opts.lr, opts.fp_lr) == (6, 12, 0.02, 0.002)
    assert (opts.early_stopping_patience, opts.pos_neg, opts.label_min_diameter_mm) == (
        4, (2, 1), 5.0,
    )  # fmt: skip
    assert opts.batch_dice is True and opts.hard_negative_fraction == 0.25
    assert (opts.mine_negatives_from, opts.mine_negatives_every) == (2, 3)
    assert opts.mined_negative_fraction == 0.2 and opts.candidates_from == "m0"
    assert (opts.fp_hard_fraction, opts.fp_gate_weight, opts.fp_focal_gamma) == (0.3, 0.5, 1.0)
    assert (opts.fp_cutmix_prob, opts.fp_crop_jitter, opts.ema_decay) == (0.0, 2, 0.99)
    assert opts.resume is True and opts.seed == 5 and opts.small_nodule_weight == 3
    assert (opts.paste_copies, opts.paste_per_scan) == (2, 5) and opts.rescore is False


def test_bench_refuses_a_negative_count_of_calibration_scans(monkeypatch, tmp_path, capsys):
    """Refused before any phantom is written."""
    bench = _bench_detection()
    monkeypatch.setattr(
        sys, "argv", ["bench", "--work", str(tmp_path / "w"), "--n-calibration", "-1"]
    )
    with pytest.raises(SystemExit) as info:
        bench.main()
    assert info.value.code == 2
    assert "--n-calibration must be >= 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_bench_places_each_false_positive_and_counts_the_top_ones():
    """The detection bench's false-positive table: hits are left out; a detection within 2
    radii of a nodule is 'beside' it; otherwise bone, aerated lung, a structure in the lung
    (mostly air within 10 mm) or the wall (mostly tissue), from the HU around it."""
    from ai_engine.detection.pipeline import Detection
    from ai_engine.io.volume import Volume

    bench = _bench_detection()
    hu = np.full((40, 40, 40), -900.0, dtype=np.float32)
    hu[28:] = 40.0  # chest wall: x >= 28
    hu[33:36, 4:7, 4:7] = 700.0  # a rib in the wall
    hu[3:8, 3:8, 28:33] = 40.0  # a vessel in the lung
    source = Volume(hu, np.eye(4), {"modality": "CT"})
    nodules = [{"center_lps_mm": [12.0, 20.0, 20.0], "diameter_mm": 6.0}]

    def det(center, score):
        c = np.asarray(center, dtype=np.float64)
        return Detection(c, c, 5.0, score, score, None)

    detections = [
        det([12, 20, 21], 0.99),  # a hit: not a false positive
        det([12, 20, 26], 0.90),  # 2 radii from the nodule
        det([5, 5, 30], 0.80),  # the vessel
        det([36, 30, 30], 0.70),  # the wall
        det([34, 5, 5], 0.60),  # the rib
        det([5, 35, 5], 0.50),  # air
    ]
    anatomy = bench.false_positive_anatomy([(detections, source, nodules)], top=3)
    places = [r["place"] for r in anatomy["top"]]
    assert places == [
        "beside a nodule (<= 2 radii)",
        "in the lung (vessel-like)",
        "lung wall / mediastinum",
    ]
    assert [r["score"] for r in anatomy["top"]] == [0.90, 0.80, 0.70]
    assert anatomy["top"][0]["radii_to_nodule"] == pytest.approx(2.0)
    assert sum(anatomy["all_places"].values()) == 5
    assert anatomy["all_places"]["bone"] == 1
    assert anatomy["all_places"]["aerated lung (no structure)"] == 1
    # a scan without nodules: every detection is a false positive, none 'beside' one
    lone = bench.false_positive_anatomy([(detections[:1], source, [])], top=1)
    assert lone["top"][0]["radii_to_nodule"] == np.inf
    assert lone["top_places"] == {"aerated lung (no structure)": 1}
