"""Detection ensembles: two tiny detectors trained with other seeds become one model folder
whose networks give the mean of the members' probabilities, whose rescoring is fitted again,
which `predict` and the explanations take as any model; bad members are refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from ai_engine.cli import main
from ai_engine.data.datalist import load_datalist
from ai_engine.detection.ensemble import ensemble_detector
from ai_engine.detection.explain import finding_heatmaps
from ai_engine.detection.pipeline import NoduleDetector
from ai_engine.detection.train import train_detector
from ai_engine.detection.transforms import load_ct
from ai_engine.errors import InputError
from ai_engine.explain import explain
from ai_engine.modelfolder import load_model_folder, manifest_digest
from ai_engine.networks.ensemble import MeanEnsemble
from tests.ai_engine.detection_support import TINY, tiny_chest_datalist, tiny_train_options

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    datalist = tiny_chest_datalist(root)
    data = load_datalist(datalist)
    folders = [
        train_detector(data, root / f"seed{seed}", TINY, tiny_train_options(seed=seed))
        for seed in (0, 1)
    ]
    return root, datalist, folders


@pytest.fixture(scope="module")
def ensemble(members):
    root, datalist, folders = members
    out = root / "ensemble"
    assert main(["detection", "ensemble", "--models", *map(str, folders), "--data", str(datalist),
                 "--out", str(out)]) == 0  # fmt: skip
    return out


def test_the_ensemble_gives_the_mean_of_its_members_probabilities(members, ensemble):
    root, _datalist, folders = members
    det = NoduleDetector.from_model_folder(ensemble)
    assert isinstance(det.unet, MeanEnsemble) and isinstance(det.classifier, MeanEnsemble)
    singles = [NoduleDetector.from_model_folder(f) for f in folders]
    image = det.preprocess(root / "ct_13")
    det.config.test_time_flips = False  # compared pass for pass
    for s in singles:
        s.config.test_time_flips = False
    want = np.mean([s.probability(image) for s in singles], axis=0)
    np.testing.assert_allclose(det.probability(image), want, atol=1e-5)
    assert not np.allclose(singles[0].probability(image), singles[1].probability(image), atol=1e-3)
    centres = np.array([[20.0, 22.0, 9.0], [30.0, 30.0, 10.0]])
    q = np.mean([s.classify(image, centres) for s in singles], axis=0)
    np.testing.assert_allclose(det.classify(image, centres), q, atol=1e-5)


def test_the_ensemble_folder_names_its_members_and_its_own_choices(members, ensemble):
    _, _, folders = members
    folder = load_model_folder(ensemble)
    params = folder.manifest["made_by_params"]
    assert [m["manifest_sha256"] for m in params["ensemble_of"]] == [
        manifest_digest(f) for f in folders
    ]
    for name, output in (("candidates", "softmax"), ("fp_reduction", "sigmoid")):
        network = folder.manifest["components"][name]["network"]
        assert network["name"] == "mean_ensemble" and network["kwargs"]["output"] == output
        assert len(network["kwargs"]["members"]) == 2
    # the threshold was chosen again on validation; the rescoring fitted (or why not: these
    # tiny members' training candidates hold no hit) and the score combination chosen again
    assert "chosen" in params["candidates"]["candidate_threshold"]
    assert {"rescore", "combine"} <= set(params["fp_reduction"])
    assert "validation" in folder.metrics


def test_the_rescoring_is_fitted_on_the_ensembles_own_candidates(members, tmp_path, monkeypatch):
    """What `finish_detector` fits the rescoring with is the ensemble, and the folder scores
    with what that fit gave (a known fit stands in: the tiny members find no training hit)."""
    from ai_engine.detection.rescore import FEATURES, Rescorer
    from ai_engine.detection.train import DetectionTrainOptions

    _, datalist, folders = members
    seen = []

    def spy(detector, scans, l2, degree):
        scans = list(scans)  # the training scans, then the calibration scans one at a time
        seen.append((type(detector.unet), type(detector.classifier), len(scans), degree))
        rng = np.random.default_rng(0)
        y = (rng.random(200) < 0.2).astype(float)
        return Rescorer.fit(rng.normal(size=(200, len(FEATURES))) + y[:, None], y)

    monkeypatch.setattr("ai_engine.detection.train.fit_rescorer", spy)
    opts = DetectionTrainOptions(
        combine_modes=("mean",), rescore_margin=1.0, candidate_thresholds=(), progress=False
    )
    data = load_datalist(datalist)
    out = ensemble_detector(folders, data, tmp_path / "e", opts)
    assert seen == [(MeanEnsemble, MeanEnsemble, 2, 2)]
    # a datalist's calibration scans join the fit, and the data hash
    ensemble_detector(folders, {**data, "calibration": data["validation"]}, tmp_path / "c", opts)
    assert seen[-1] == (MeanEnsemble, MeanEnsemble, 2 + len(data["validation"]), 2)
    hashed = load_model_folder(tmp_path / "c").manifest["training_data"]["n_items"]
    assert hashed["calibration"] == len(data["validation"])
    # a training scan is no calibration scan: refused before anything is written
    with pytest.raises(InputError, match=r"calibration\[0\] .* is also a training scan"):
        ensemble_detector(folders, {**data, "calibration": data["training"]}, tmp_path / "t", opts)
    assert not (tmp_path / "t").exists()
    post = load_model_folder(out).postprocessing
    assert post["combine"] == "rescored"
    assert post["rescore"]["n_samples"] == 200


def test_predict_and_explanations_take_the_ensemble(members, ensemble, tmp_path, capsys):
    _, datalist, _ = members
    item = next(it for it in load_datalist(datalist)["training"] if it["nodules"])
    out = tmp_path / "findings.json"
    assert main(["detection", "predict", "--model", str(ensemble), "--image",
                 str(item["image"]), "--out", str(out), "--threshold", "0"]) == 0  # fmt: skip
    findings = json.loads(out.read_text())["findings"]
    det = NoduleDetector.from_model_folder(ensemble)
    if not findings:  # a tiny model may find nothing: explain a true nodule's place
        findings = item["nodules"]
    heats = list(finding_heatmaps(det, load_ct(item["image"]), findings[:1]))
    assert heats and heats[0].heat.size and float(heats[0].heat.min()) >= 0.0
    assert float(heats[0].heat.max()) <= 1.0


def test_an_ensembles_gradcam_is_the_mean_of_its_members_maps(members):
    _, _, folders = members
    singles = [NoduleDetector.from_model_folder(f).classifier for f in folders]
    ens = MeanEnsemble(singles, "sigmoid").eval()
    patch = np.random.default_rng(0).random((2, 16, 16, 16)).astype(np.float32)
    maps = [explain(m, patch, "gradcam", class_idx=0)[0] for m in singles]
    want = np.mean(maps, axis=0)
    want = want / want.max()
    heat, cls = explain(ens, patch, "gradcam", class_idx=0)
    assert cls == 0 and heat.shape == (16, 16, 16)
    np.testing.assert_allclose(heat, want, atol=1e-5)


def test_bad_ensembles_are_refused_and_write_nothing(members, tmp_path):
    _root, datalist, folders = members
    data = load_datalist(datalist)
    other = tmp_path / "other"
    shutil.copytree(folders[1], other)
    manifest = json.loads((other / "model.json").read_text())
    manifest["preprocessing"]["spacing_mm"] = [2.0, 2.0, 2.0]
    (other / "model.json").write_text(json.dumps(manifest))
    no_classifier = tmp_path / "no-classifier"
    shutil.copytree(folders[1], no_classifier)
    manifest = json.loads((no_classifier / "model.json").read_text())
    del manifest["components"]["fp_reduction"]
    (no_classifier / "model.json").write_text(json.dumps(manifest))
    cases = [
        ([folders[0]], data, "at least 2 detection models"),
        ([folders[0], folders[0]], data, "named twice"),
        ([folders[0], tmp_path / "nowhere"], data, "ensemble member .*nowhere"),
        ([folders[0], other], data, r"differs from .* in \['spacing_mm'\]"),
        ([folders[0], no_classifier], data, "has no false-positive classifier"),
        (folders, {"validation": data["validation"]}, "no 'training' items"),
    ]
    for paths, datalist_, message in cases:
        out = tmp_path / "out"
        with pytest.raises(InputError, match=message):
            ensemble_detector(paths, datalist_, out)
        assert not out.exists()
    with pytest.raises(InputError, match="output folder is one of the members"):
        ensemble_detector(folders, data, folders[1])


def test_the_cli_says_what_is_wrong_and_exits_2(members, tmp_path, capsys):
    _, datalist, folders = members
    out = tmp_path / "e"
    argv = ["detection", "ensemble", "--models", str(folders[0]), "--data", str(datalist),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    assert "at least 2 detection models" in capsys.readouterr().err
    assert not out.exists()


def test_a_scan_the_ensemble_cannot_read_exits_2_and_writes_nothing(members, tmp_path, capsys):
    """The scans are read after the members: an MR series among the training scans is refused
    with its reason, and no half-made folder is left."""
    from ai_engine.data.datalist import write_datalist
    from ai_engine.data.phantoms import write_brain_mri

    _, datalist, folders = members
    write_brain_mri(tmp_path / "mr", seed=1, grade=2, shape=(64, 64, 24))
    data = load_datalist(datalist)
    bad = write_datalist(
        {"training": [{"image": str(tmp_path / "mr" / "T1"), "nodules": []}],
         "validation": data["validation"]},
        tmp_path / "bad.json",
    )  # fmt: skip
    out = tmp_path / "e"
    argv = ["detection", "ensemble", "--models", *map(str, folders), "--data", str(bad),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    assert "needs a CT" in capsys.readouterr().err
    assert not out.exists()


def test_classifier_only_training_keeps_an_ensembles_unets(members, ensemble, tmp_path):
    """`candidates_from` an ensemble: the new folder stores its U-Net as the ensemble it is
    (a `unet3d` entry would not load its weights) and scores as the ensemble does."""
    _, datalist, _ = members
    opts = tiny_train_options(
        fp_epochs=1, fp_steps_per_epoch=2, candidates_from=str(ensemble), combine_modes=()
    )
    out = train_detector(load_datalist(datalist), tmp_path / "cls", TINY, opts)
    network = load_model_folder(out).manifest["components"]["candidates"]["network"]
    assert network["name"] == "mean_ensemble" and len(network["kwargs"]["members"]) == 2
    kept, new = NoduleDetector.from_model_folder(ensemble), NoduleDetector.from_model_folder(out)
    assert isinstance(new.unet, MeanEnsemble)
    for key, value in kept.unet.state_dict().items():
        torch.testing.assert_close(new.unet.state_dict()[key], value)


def test_component_network_names_what_it_cannot_rebuild(members, tmp_path):
    from ai_engine.detection.train import component_network

    _, _, folders = members
    assert component_network(folders[0], "candidates")["name"] == "unet3d"
    copy = tmp_path / "copy"
    shutil.copytree(folders[0], copy)
    manifest = json.loads((copy / "model.json").read_text())
    del manifest["components"]["candidates"]["network"]
    (copy / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="'candidates' is not a network to rebuild"):
        component_network(copy, "candidates")
    with pytest.raises(InputError, match="nowhere"):
        component_network(tmp_path / "nowhere", "candidates")
