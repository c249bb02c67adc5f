"""Tumor grading end to end on tiny brain-MRI phantoms: train, evaluate, predict, explain, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ai_engine.cli import main
from ai_engine.data.phantoms import write_brain_mri
from ai_engine.grading.data import CHANNELS, RandChannelDropoutd, load_study, preprocess
from ai_engine.grading.train import GradingLoss, class_weights_from_labels
from ai_engine.io import load_multimodal, load_volume

torch.set_num_threads(2)
SHAPE = (32, 32, 32)


def write_cases(root: Path, seeds: list[int], grades: list[int]) -> list[dict]:
    items = []
    for seed, grade in zip(seeds, grades, strict=True):
        case = f"case{seed}"
        write_brain_mri(root / case, seed, grade=grade, shape=SHAPE)
        items.append(
            {
                "images": {name: f"{case}/{name}" for name in CHANNELS},
                "grade": grade,
                "tumor_mask": f"{case}/tumor_mask.nii.gz",
            }
        )
    return items


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("grading")
    items = write_cases(root, list(range(200, 209)), [1, 2, 3] * 3)
    (root / "datalist.json").write_text(
        json.dumps({"training": items, "validation": items[:3], "testing": items[:6]})
    )
    return root


@pytest.fixture(scope="module")
def trained(phantoms) -> Path:
    out = phantoms / "model"
    code = main(
        [
            "grading", "train", "--datalist", str(phantoms / "datalist.json"), "--out", str(out),
            "--network", "resnet3d", "--network-kwargs", '{"block_inplanes": [8, 16, 32, 32]}',
            "--spatial-size", "32,32,32", "--epochs", "6", "--batch-size", "3", "--lr", "3e-3",
            "--warmup-steps", "2", "--no-augment", "--channel-dropout", "0", "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    return out


def test_training_loss_falls_and_folder_describes_itself(trained):
    lines = [json.loads(x) for x in (trained / "log.jsonl").read_text().splitlines()]
    assert len(lines) == 6
    assert lines[-1]["train_loss"] < 0.7 * lines[0]["train_loss"]
    manifest = json.loads((trained / "model.json").read_text())
    assert manifest["task"] == "tumor-grading" and manifest["made_by"] == "trained"
    assert manifest["components"]["model"]["network"]["name"] == "resnet3d"
    assert manifest["postprocessing"]["temperature"] > 0
    assert manifest["preprocessing"]["spatial_size"] == [32, 32, 32]
    assert set(manifest["metrics"]["validation"]) >= {
        "accuracy",
        "macro_f1",
        "auc",
        "ece",
        "confusion",
    }


def test_tumor_masks_train_the_gate_and_the_folder_keeps_only_the_classifier(trained):
    """With masks in the datalist the gate is supervised (seg_aux), the heads are not saved,
    and Grad-CAM uses the gated map."""
    manifest = json.loads((trained / "model.json").read_text())
    assert manifest["made_by_params"]["seg_aux"] == {
        "layers": ["gate.gate_logits"],
        "weight": 1.0,
    }
    assert manifest["components"]["model"]["network"]["kwargs"]["tumor_gate"] is True
    assert manifest["extra"]["cam_target_layer"] == "gate.gated"
    state = torch.load(trained / "weights.pt", weights_only=True)
    assert any(k.startswith("gate.branch") for k in state)
    assert not any(k.startswith(("heads.", "net.")) for k in state)


def test_tumor_fraction_on_the_model_grid(phantoms):
    from ai_engine.grading.data import tumor_fraction_on_model_grid

    case = phantoms / "case204"
    study = load_study(str(case), (16, 16, 16))
    fraction = tumor_fraction_on_model_grid(case / "tumor_mask.nii.gz", study)
    assert fraction.shape == (16, 16, 16)
    assert fraction.min() >= 0.0 and fraction.max() <= 1.0 and fraction.max() > 0.5
    mask = load_volume(case / "tumor_mask.nii.gz")
    # same centre in patient space (LPS mm), within one model voxel
    src_center = mask.voxel_to_lps(np.argwhere(mask.array > 0).mean(0)[None])[0]
    idx = np.argwhere(fraction > 0)
    weights = fraction[fraction > 0]
    model_center_vox = (idx * weights[:, None]).sum(0) / weights.sum()
    model_center = (study.model_affine @ np.append(model_center_vox, 1.0))[:3]
    voxel_mm = np.abs(np.diag(study.model_affine)[:3])
    assert np.all(np.abs(model_center - src_center) <= voxel_mm)


def test_seg_aux_loss_prefers_the_mask_and_skips_items_without_one():
    from ai_engine.training.seg_aux import SegAuxLoss

    mask = torch.zeros(2, 1, 8, 8, 8)
    mask[:, :, 2:5, 2:5, 2:5] = 1.0
    good = [(mask * 2 - 1) * 6]  # logits agreeing with the mask
    bad = [-good[0]]
    loss = SegAuxLoss()
    both = torch.ones(2)
    assert loss(good, mask, both) < 0.2 < loss(bad, mask, both)
    assert loss(bad, mask, torch.zeros(2)) == 0  # no masks: no segmentation loss
    only_first = torch.tensor([1.0, 0.0])
    mixed = [torch.cat([good[0][:1], bad[0][1:]])]
    assert loss(mixed, mask, only_first) == pytest.approx(float(loss(good, mask, both)))


def test_transfer_learning_from_local_file_and_resume(trained, phantoms):
    out = phantoms / "finetuned"
    argv = [
        "grading", "train", "--datalist", str(phantoms / "datalist.json"), "--out", str(out),
        "--network-kwargs", '{"block_inplanes": [8, 16, 32, 32]}', "--spatial-size", "32,32,32",
        "--batch-size", "3", "--no-augment", "--quiet", "--pretrained", str(trained / "weights.pt"),
        "--seg-aux-weight", "0",
    ]  # fmt: skip
    assert main([*argv, "--epochs", "1"]) == 0
    params = json.loads((out / "model.json").read_text())["made_by_params"]
    transfer = params["transfer"]
    assert transfer["matched"] and not transfer["shape_mismatch"]
    assert params["seg_aux"] is None  # --seg-aux-weight 0: masks ignored
    assert main([*argv, "--epochs", "2", "--resume"]) == 0
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1]  # epoch 0 kept, only epoch 1 ran


def test_evaluate_writes_metrics_above_chance_with_pointing_game(trained, phantoms, capsys):
    out = phantoms / "METRICS.json"
    code = main(
        ["grading", "evaluate", "--model", str(trained), "--datalist", str(phantoms / "datalist.json"),
         "--split", "training", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads(out.read_text())
    assert set(metrics) >= {"accuracy", "macro_f1", "auc", "ece", "confusion", "pointing_game"}
    assert metrics["accuracy"] > 0.5  # chance is 1/3 on this balanced set
    assert set(metrics["auc"]) == {"1", "2", "3"}
    assert np.asarray(metrics["confusion"]).sum() == 9
    assert metrics["pointing_game"]["n"] == 9
    assert 0.0 <= metrics["pointing_game"]["rate"] <= 1.0


def test_predict_flags_missing_sequences(trained, phantoms, capsys):
    case = phantoms / "case200"
    assert main(["grading", "predict", "--model", str(trained), "--study", str(case)]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["grade"] in (1, 2, 3) and full["complete"] and full["missing_sequences"] == []
    assert sum(full["probabilities"].values()) == pytest.approx(1.0)
    code = main(
        [
            "grading",
            "predict",
            "--model",
            str(trained),
            "--t1",
            str(case / "T1"),
            "--t2",
            str(case / "T2"),
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    partial = json.loads(captured.out)
    assert partial["missing_sequences"] == ["T1c", "FLAIR"] and not partial["complete"]
    assert "graded without T1c, FLAIR" in captured.err


def test_explain_heat_map_has_source_geometry(trained, phantoms, capsys):
    case = phantoms / "case201"
    out = phantoms / "explanation"
    assert (
        main(
            ["grading", "explain", "--model", str(trained), "--study", str(case), "--out", str(out)]
        )
        == 0
    )
    source = load_multimodal(str(case))
    heat = load_volume(out / "heatmap.nii.gz")
    assert heat.array.shape == source.spatial_shape
    np.testing.assert_allclose(heat.affine, source.affine, atol=1e-4)
    assert heat.array.max() > 0
    assert (out / "key_slice.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads((out / "explanation.json").read_text())
    assert record["key_slice_index"] == int(
        np.unravel_index(np.argmax(heat.array), heat.array.shape)[2]
    )


def test_missing_channel_is_zero_and_listed(phantoms):
    case = phantoms / "case202"
    study = load_study({"T1": case / "T1", "FLAIR": case / "FLAIR"}, (24, 24, 24))
    assert study.missing_channels == ["T1c", "T2"]
    assert not study.image[1].any() and not study.image[2].any()
    brain = study.image[0] != 0
    assert abs(study.image[0][brain].mean()) < 0.05  # z-scored over non-zero voxels


def test_preprocess_rejects_wrong_channel_count(phantoms):
    from ai_engine.errors import InputError

    volume = load_volume(phantoms / "case200" / "T1")
    with pytest.raises(InputError, match="channels"):
        preprocess(volume, (16, 16, 16))


def test_channel_dropout_zeroes_one_channel_never_all():
    t = RandChannelDropoutd("image", prob=1.0)
    t.set_random_state(0)
    for _ in range(20):
        out = t({"image": torch.ones(4, 4, 4, 4)})["image"]
        zero = [c for c in range(4) if not out[c].any()]
        assert len(zero) == 1
    single = torch.zeros(4, 2, 2, 2)
    single[2] = 1
    assert t({"image": single})["image"][2].all()  # the only sequence is never dropped


def test_focal_loss_class_weights():
    weights = class_weights_from_labels([0, 0, 0, 0, 1, 1, 2])
    assert weights[2] > weights[1] > weights[0]
    assert np.mean(weights) == pytest.approx(1.0)
    logits = torch.zeros(2, 3, requires_grad=True)
    weighted = GradingLoss(2.0, [1.0, 1.0, 5.0])(logits, torch.tensor([2, 2]))
    plain = GradingLoss(2.0, None)(logits, torch.tensor([2, 2]))
    assert weighted.item() > plain.item()


def _bad_datalist(tmp: Path, phantoms: Path, mutate) -> Path:
    data = json.loads((phantoms / "datalist.json").read_text())
    items = [
        {
            **it,
            "images": {k: str(phantoms / v) for k, v in it["images"].items()},
            "tumor_mask": str(phantoms / it["tumor_mask"]),
        }
        for it in data["training"][:3]
    ]
    mutate(items)
    path = tmp / "bad.json"
    path.write_text(json.dumps({"training": items, "validation": items}))
    return path


def _missing_t1c(items):
    items[0]["images"]["T1c"] = "/nonexistent/T1c"


def _grade_four(items):
    items[1]["grade"] = 4


def _no_grade(items):
    del items[2]["grade"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_missing_t1c, "does not exist"),
        (_grade_four, "'grade' must be 1, 2 or 3"),
        (_no_grade, "'grade' is missing"),
    ],
)
def test_cli_bad_datalist(tmp_path, phantoms, capsys, mutate, message):
    datalist = _bad_datalist(tmp_path, phantoms, mutate)
    code = main(
        [
            "grading",
            "train",
            "--datalist",
            str(datalist),
            "--out",
            str(tmp_path / "m"),
            "--epochs",
            "1",
            "--quiet",
        ]
    )
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m" / "model.json").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["grading", "evaluate", "--model", "{tmp}/none", "--datalist", "{data}"],
            "model folder not found",
        ),
        (
            ["grading", "predict", "--model", "{tmp}/none", "--study", "{case}"],
            "model folder not found",
        ),
        (["grading", "predict", "--model", "{model}"], "no input"),
        (["grading", "predict", "--model", "{model}", "--t1", "{tmp}/nope/T1"], "does not exist"),
        (
            ["grading", "predict", "--model", "{model}", "--study", "{case}", "--t1", "{case}/T1"],
            "not both",
        ),
        (
            [
                "grading",
                "explain",
                "--model",
                "{model}",
                "--study",
                "{tmp}/nope",
                "--out",
                "{tmp}/x",
            ],
            "not a folder",
        ),
        (
            ["grading", "train", "--datalist", "{tmp}/none.json", "--out", "{tmp}/m"],
            "does not exist",
        ),
        (
            [
                "grading",
                "train",
                "--datalist",
                "{data}",
                "--out",
                "{tmp}/m",
                "--pretrained",
                "{tmp}/w.pt",
            ],
            "--pretrained",
        ),
        (
            [
                "grading",
                "train",
                "--datalist",
                "{data}",
                "--out",
                "{tmp}/m",
                "--seg-aux-weight",
                "-1",
            ],
            "seg_aux_weight must be >= 0",
        ),
        (["export", "--model", "{tmp}/none", "--out", "{tmp}/e"], "model folder not found"),
        (["quantize", "--model", "{tmp}/none", "--out", "{tmp}/q"], "model folder not found"),
        (
            ["quantize", "--model", "{model}", "--out", "{tmp}/q", "--method", "static"],
            "calibration",
        ),
        (
            ["distill", "--teacher", "{tmp}/none", "--datalist", "{data}", "--out", "{tmp}/s"],
            "model folder not found",
        ),
    ],
)
def test_cli_bad_input_table(tmp_path, trained, phantoms, capsys, argv, message):
    subs = {
        "tmp": str(tmp_path),
        "data": str(phantoms / "datalist.json"),
        "model": str(trained),
        "case": str(phantoms / "case200"),
    }
    code = main([a.format(**subs) for a in argv])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_pointing_game_on_phantoms_uses_the_source_geometry(trained, phantoms):
    """Per-case pointing game of `evaluate_grading`: maps and masks on the source grid."""
    from ai_engine.explain import pointing_game
    from ai_engine.grading.data import load_mask_on_source
    from ai_engine.grading.explain import explain_study
    from ai_engine.grading.model import load_grading_model

    model = load_grading_model(trained)
    item = json.loads((phantoms / "datalist.json").read_text())["training"][2]
    study = model.load({k: str(phantoms / v) for k, v in item["images"].items()})
    mask = load_mask_on_source(phantoms / item["tumor_mask"], study.source)
    explanation = explain_study(model, study)
    heat = explanation.heat_source.array
    assert heat.shape == mask.shape == study.source.spatial_shape
    np.testing.assert_allclose(explanation.heat_source.affine, study.source.affine)
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    assert pointing_game(heat, mask) == bool(mask[peak])
