"""Nodule detection end to end on tiny phantoms: both stages train (loss falls), the model
folder predicts on a DICOM series through the CLI, evaluation writes METRICS + PNG, and bad
input exits with a message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ai_engine.cli import main
from ai_engine.data.datalist import write_datalist
from ai_engine.data.phantoms import write_brain_mri, write_chest_ct
from ai_engine.detection.candidates import extract_candidates, merge_close
from ai_engine.detection.config import DetectionConfig
from ai_engine.detection.train import DetectionTrainOptions, train_detector
from ai_engine.detection.transforms import preprocessing
from ai_engine.modelfolder import load_model_folder

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[2]
SHAPE = (64, 64, 24)
TINY = DetectionConfig(
    patch_size=(32, 32, 32),
    sw_roi_size=(32, 32, 32),
    unet_channels=(4, 8, 16),
    fp_patch_size=16,
    fp_channels=(4, 8, 8, 8),
    sw_batch_size=1,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("detection")
    items = []
    for seed in (11, 12, 13):
        nodules = write_chest_ct(root / f"ct_{seed}", seed, shape=SHAPE)
        items.append(
            {
                "image": f"ct_{seed}",
                "nodules": [{k: n[k] for k in ("center_lps_mm", "diameter_mm")} for n in nodules],
            }
        )
    assert any(it["nodules"] for it in items[:2]), "the fixture seeds must give nodules"
    datalist = write_datalist(
        {"training": items[:2], "validation": items[2:], "testing": items[2:]},
        root / "datalist.json",
    )
    return root, datalist


@pytest.fixture(scope="module")
def model(data):
    root, datalist = data
    from ai_engine.data.datalist import load_datalist

    opts = DetectionTrainOptions(
        epochs=3,
        steps_per_epoch=4,
        batch_size=2,
        lr=1e-2,
        fp_epochs=3,
        fp_steps_per_epoch=6,
        fp_batch_size=16,
        fp_lr=1e-2,
        warmup_steps=2,
        early_stopping_patience=None,
        seed=0,
        random_negatives=6,
        elastic_prob=0.0,
        progress=False,
    )
    out = train_detector(load_datalist(datalist), root / "model", TINY, opts)
    return out


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
    return {"root": root, "datalist": datalist, "bad": bad}


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
]


@pytest.mark.parametrize(("name", "argv", "message"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_exits_2_with_a_message(bad_inputs, model, capsys, name, argv, message):
    code = main(["detection", *argv(bad_inputs, str(model))])
    err = capsys.readouterr().err
    assert code == 2, (name, err)
    assert err.startswith("error: ") and message in err, err


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
