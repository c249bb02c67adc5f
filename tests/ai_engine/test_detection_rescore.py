"""The rescoring of detection candidates (`ai_engine.detection.rescore`) and how training
keeps or drops it."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from ai_engine.detection.candidates import Candidate
from ai_engine.detection.config import DetectionConfig
from ai_engine.detection.context import CONTEXT_FEATURES
from ai_engine.detection.rescore import (
    CENTRE_FEATURES,
    FEATURES,
    FINE_FEATURES,
    Rescorer,
    candidate_features,
    expand_terms,
    term_names,
)
from ai_engine.detection.train import keeps_rescoring
from tests.ai_engine.detection_support import TINY


def _cand(prob, diameter=4.0, n_voxels=30, source="unet", hu=20.0, blob=0.5, shell=0.1):
    """A hand-made candidate; its context as the pipeline would set it (peak = centre blob)."""
    context = dict.fromkeys(CONTEXT_FEATURES, 0.0)
    context.update(blob_max_3mm=blob, shell_tissue=shell, blobness=0.8)
    return Candidate(
        center_voxel=np.zeros(3),
        diameter_mm=diameter,
        prob=prob,
        component=1,
        n_voxels=n_voxels,
        bbox=((0, 0, 0), (1, 1, 1)),
        source=source,
        center_hu=hu,
        center_blob=blob,
        context=context,
    )


def test_features_are_the_logits_the_image_values_and_the_size_of_each_candidate():
    cands = [_cand(0.5, 4.0, 30, "unet", -800.0, 0.1, 0.25), _cand(0.9, 2.0, 4, "blob", 35.0, 0.8)]
    x = candidate_features(cands, np.array([0.2, 0.5]))
    assert x.shape == (2, len(FEATURES))
    row = dict(zip(FEATURES, x[0], strict=True))
    assert row["logit_p"] == pytest.approx(0.0)
    assert row["logit_q"] == pytest.approx(np.log(0.25))
    assert row["hu"] == pytest.approx(-0.8)
    assert row["log_diameter"] == pytest.approx(np.log(4.0))
    assert row["log_voxels"] == pytest.approx(np.log(30))
    assert row["from_blob"] == 0.0 and x[1, FEATURES.index("from_blob")] == 1.0
    # the context columns come from the candidate's context, by name
    assert row["blob_max_3mm"] == pytest.approx(0.1) and row["shell_tissue"] == 0.25
    assert row["blobness"] == 0.8 and "blob" not in FEATURES
    # session 12's features, by name: the blob response at the centre
    old = candidate_features(cands, np.array([0.2, 0.5]), CENTRE_FEATURES)
    assert old.shape == (2, 7) and old[1, CENTRE_FEATURES.index("blob")] == pytest.approx(0.8)
    # probabilities of exactly 0 and 1 (a saturated softmax) stay finite
    assert np.isfinite(candidate_features([_cand(1.0), _cand(0.0)], np.array([0.0, 1.0]))).all()
    assert candidate_features([], np.zeros(0)).shape == (0, len(FEATURES))


@pytest.mark.parametrize(
    ("cands", "q", "names", "message"),
    [
        ([_cand(0.5), _cand(0.9)], [0.5], FEATURES, "1 classifier probabilities for 2 candidates"),
        ([_cand(0.5)], [0.5], ("logit_p", "vesselness"), "unknown rescoring features"),
        (  # made by hand, not by the pipeline: no context to read
            [_cand(0.5), Candidate(np.zeros(3), 4.0, 0.5, 1, 30, ((0, 0, 0), (1, 1, 1)))],
            [0.5, 0.5],
            FEATURES,
            "1 of 2 candidates have no 'blob_max_3mm'",
        ),
    ],
)
def test_features_of_bad_input_are_refused_with_the_reason(cands, q, names, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        candidate_features(cands, np.array(q), names)


def _synthetic(n=600, seed=0):
    """Nodules have a stronger blob response than the false positives, at equal p and q."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(float)
    x = rng.normal(size=(n, len(FEATURES)))
    x[:, FEATURES.index("blob_max_3mm")] += 2.0 * y
    return x, y


def test_fit_weighs_the_feature_that_separates_and_ranks_the_nodules_first():
    x, y = _synthetic()
    r = Rescorer.fit(x, y)
    weights = dict(zip(FEATURES, r.coef, strict=True))
    assert weights["blob_max_3mm"] > 1.0
    assert all(abs(w) < 0.3 for k, w in weights.items() if k != "blob_max_3mm")
    xt, yt = _synthetic(seed=1)
    s = r.predict(xt)
    assert ((s > 0) & (s < 1)).all()
    # AUROC on fresh samples: positives above negatives far more often than not
    auroc = (s[yt == 1][:, None] > s[yt == 0][None]).mean()
    assert auroc > 0.85
    assert r.n_samples == 600 and r.n_positive == int(y.sum())


def test_degree_two_terms_are_the_features_their_squares_and_pairwise_products():
    x = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]])
    names = ["logit_p", "logit_q", "hu"]
    assert np.array_equal(expand_terms(x, 1), x) and term_names(names, 1) == names
    terms = expand_terms(x, 2)
    assert term_names(names, 2) == [
        *names, "logit_p^2", "logit_q^2", "hu^2", "logit_p*logit_q", "logit_p*hu", "logit_q*hu"
    ]  # fmt: skip
    assert terms[0].tolist() == [1, 2, 3, 1, 4, 9, 2, 3, 6]
    assert terms[1].tolist() == [0.5, -1, 4, 0.25, 1, 16, -0.5, 2, -4]


def _together(n=1200, seed=0):
    """Nodules are where two features are high *together* (a solid core and a confident
    classifier); either alone says nothing."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES)))
    a, b = FEATURES.index("logit_q"), FEATURES.index("log_core")
    y = ((x[:, a] > 0.3) & (x[:, b] > 0.3)).astype(float)
    return x, y


def _auroc(s, y):
    return (s[y == 1][:, None] > s[y == 0][None]).mean()


def test_degree_two_learns_what_no_sum_of_single_feature_weights_can_and_round_trips():
    x, y = _together()
    xt, yt = _together(seed=1)
    plain, paired = Rescorer.fit(x, y, degree=1), Rescorer.fit(x, y, degree=2)
    assert plain.degree == 1 and paired.degree == 2
    n = len(FEATURES)
    assert len(paired.coef) == len(paired.mean) == 2 * n + n * (n - 1) // 2
    assert _auroc(paired.predict(xt), yt) > _auroc(plain.predict(xt), yt) + 0.02
    assert _auroc(paired.predict(xt), yt) > 0.97
    product = term_names(FEATURES, 2).index("logit_q*log_core")
    assert paired.coef[product] == max(paired.coef)  # the term that tells them
    back = Rescorer.from_dict(json.loads(json.dumps(paired.to_dict())))
    assert back.degree == 2 and np.allclose(back.predict(xt), paired.predict(xt))
    cands = [_cand(0.7, blob=1.2), _cand(0.7, blob=0.0)]
    q = np.array([0.6, 0.6])
    assert np.allclose(back.score(cands, q), paired.predict(candidate_features(cands, q)))


def test_a_rescoring_without_a_degree_is_of_degree_one_and_a_bad_degree_is_refused():
    """Folders written before session 19 store no degree: they weigh the features alone."""
    x, y = _synthetic()
    old = Rescorer.fit(x, y).to_dict()
    old.pop("degree")
    assert Rescorer.from_dict(old).degree == 1
    for degree in (0, 3, "2", True):
        with pytest.raises(ValueError, match=r"rescorer degree must be one of \(1, 2\)"):
            Rescorer.fit(x, y, degree=degree)
        with pytest.raises(ValueError, match=r"rescorer degree must be one of \(1, 2\)"):
            Rescorer.from_dict({**old, "degree": degree})
    # the weights of degree 1 do not make one of degree 2
    n = len(FEATURES)
    with pytest.raises(
        ValueError, match=f"degree 2 on {n} features needs {2 * n + n * (n - 1) // 2}"
    ):
        Rescorer.from_dict({**old, "degree": 2})


def test_a_stronger_penalty_shrinks_the_weights():
    x, y = _synthetic()
    loose, tight = Rescorer.fit(x, y, l2=0.01), Rescorer.fit(x, y, l2=1000.0)
    assert np.abs(tight.coef).sum() < 0.2 * np.abs(loose.coef).sum()


def test_the_fitted_rescorer_survives_json_and_scores_candidates_alike():
    x, y = _synthetic()
    r = Rescorer.fit(x, y)
    back = Rescorer.from_dict(json.loads(json.dumps(r.to_dict())))
    assert np.allclose(back.predict(x), r.predict(x))
    cands = [_cand(0.7, blob=1.2), _cand(0.7, blob=0.0)]
    q = np.array([0.6, 0.6])
    assert np.allclose(back.score(cands, q), r.predict(candidate_features(cands, q)))
    high, low = back.score(cands, q)
    assert high > low  # the stronger blob response ranks first


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((5, len(FEATURES))), np.zeros(5), "needs positive and negative candidates"),
        (np.zeros((5, len(FEATURES))), np.ones(5), "needs positive and negative candidates"),
        (np.zeros((5, 3)), np.array([0, 1, 0, 1, 0]), "do not match"),
        (np.zeros((5, len(FEATURES))), np.array([0, 1]), "do not match"),
    ],
)
def test_fit_refuses_one_class_or_mismatched_samples(x, y, message):
    with pytest.raises(ValueError, match=message):
        Rescorer.fit(x, y)


def test_a_rescorer_of_other_features_is_refused():
    n = len(FEATURES)
    data = Rescorer.fit(*_synthetic()).to_dict()
    data["features"] = data["features"][:-1]
    with pytest.raises(ValueError, match=f"needs {n - 1} means, scales and weights"):
        Rescorer.from_dict(data)
    for names in (["logit_p", "vesselness"], ["logit_p", "logit_p"], []):
        data = {"features": names, "mean": [0.0] * 2, "scale": [1.0] * 2, "coef": [1.0] * 2}
        with pytest.raises(ValueError, match="are not distinct names of"):
            Rescorer.from_dict({**data, "intercept": 0.0})
    data = Rescorer.fit(*_synthetic()).to_dict()
    data["coef"] = data["coef"][:3]
    with pytest.raises(ValueError, match=f"needs {n} means, scales and weights"):
        Rescorer.from_dict(data)
    with pytest.raises(ValueError, match=r"not a fitted rescoring: .*missing"):
        Rescorer.from_dict({"features": list(FEATURES)})
    # a configuration (a model folder's postprocessing) refuses it when it is built
    with pytest.raises(ValueError, match=f"needs {n} means, scales and weights"):
        DetectionConfig(combine="rescored", rescore=data)


def test_a_session_12_rescoring_still_loads_and_scores_by_its_own_features():
    """Folders written before the context features weigh the blob response at the centre."""
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.2).astype(float)
    x = rng.normal(size=(400, len(CENTRE_FEATURES)))
    x[:, CENTRE_FEATURES.index("blob")] += 2.0 * y
    old = Rescorer.fit(x, y, features=CENTRE_FEATURES).to_dict()
    assert old["features"] == list(CENTRE_FEATURES) and len(old["coef"]) == 7
    cfg = DetectionConfig.from_dict(
        json.loads(json.dumps(DetectionConfig(combine="rescored", rescore=old).to_dict()))
    )
    rescorer = Rescorer.from_dict(cfg.rescore)
    high, low = rescorer.score([_cand(0.7, blob=1.5), _cand(0.7, blob=0.0)], np.array([0.6, 0.6]))
    assert high > low
    with pytest.raises(ValueError, match="do not match"):
        Rescorer.fit(x, y)  # 7 columns are not the 12 features fitted now


def test_combine_rescored_needs_a_fitted_rescorer_and_round_trips_with_it():
    with pytest.raises(ValueError, match=re.escape('combine "rescored" needs a fitted rescore')):
        DetectionConfig(combine="rescored")
    fitted = Rescorer.fit(*_synthetic()).to_dict()
    cfg = DetectionConfig(combine="rescored", rescore=fitted)
    back = DetectionConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back.combine == "rescored" and back.rescore == fitted
    # folders written before the rescoring load without one
    old = {k: v for k, v in cfg.to_dict().items() if k != "rescore"}
    assert DetectionConfig.from_dict({**old, "combine": "mean"}).rescore is None


@pytest.mark.parametrize(
    ("table", "margin", "kept"),
    [
        ({"mean@8": 0.804, "geometric@8": 0.80, "rescored": 0.798}, 0.02, True),
        ({"mean@8": 0.804, "rescored": 0.784}, 0.02, True),  # exactly the margin below
        ({"mean@8": 0.804, "rescored": 0.783}, 0.02, False),
        ({"mean@8": 0.804, "rescored": 0.798}, 0.0, False),
        ({"mean@8": 0.804, "rescored": 0.81}, 0.0, True),
    ],
)
def test_training_keeps_the_rescoring_unless_a_fixed_mode_beats_it_by_the_margin(
    table, margin, kept
):
    assert keeps_rescoring(table, margin) is kept


def _detector_with_map(config, maps):
    """A detector whose U-Net probability is a given map per scan (keyed by the image's id)."""
    from ai_engine.detection.pipeline import NoduleDetector
    from ai_engine.networks import build_network

    torch.manual_seed(0)
    detector = NoduleDetector(
        config,
        build_network("unet3d", **config.unet_kwargs),
        build_network("resnet3d", **config.fp_kwargs),
    )
    detector.probability = lambda image: maps[id(image)]  # type: ignore[method-assign]
    return detector


def test_fit_rescorer_labels_the_candidates_by_the_hit_rule_and_the_detector_scores_with_it():
    """Candidates from a probability map holding each nodule's sphere and a sphere of the same
    size 15 mm away from it: the rescoring is fitted on as many hits as nodules and as many
    misses, and a detector set to "rescored" ranks with its probabilities."""
    from ai_engine.data.phantoms import make_chest_ct
    from ai_engine.detection.train import fit_rescorer
    from ai_engine.detection.transforms import preprocessing

    config = replace(TINY, blob_candidates=0, fine_blob_candidates=0)  # the U-Net's map alone
    pre = preprocessing(
        config.spacing_mm, config.hu_range, blob_sigmas_mm=config.blob_sigmas_mm, with_label=True
    )
    scans, maps, n_nodules = [], {}, 0
    for seed in (21, 22):
        volume, nodules = make_chest_ct(seed, shape=(96, 96, 32), n_nodules=3)
        out = pre({"image": volume, "nodules": nodules})
        label = out["label"][0].numpy()
        decoy = np.roll(label, 10, axis=0)  # each sphere again, 15 mm along the first axis
        maps[id(out["image"])] = np.maximum(label, np.where(label > 0, 0, decoy)).astype(np.float32)
        scans.append({"image": out["image"], "nodules": nodules})
        n_nodules += len(nodules)
    detector = _detector_with_map(config, maps)
    rescorer = fit_rescorer(detector, scans)
    assert rescorer.n_positive == n_nodules
    assert n_nodules < rescorer.n_samples <= 2 * n_nodules  # a decoy may merge into a nodule
    assert not set(FINE_FEATURES) & set(rescorer.features)  # no fine candidates: no such column
    detector.config.combine, detector.config.rescore = "rescored", rescorer.to_dict()
    cands, _labels, centers_mm = detector.candidates(scans[0]["image"])
    q = detector.classify(scans[0]["image"], np.array([c.center_voxel for c in cands]))
    detections = detector.finish(cands, centers_mm, q)
    assert sorted(d.score for d in detections) == pytest.approx(
        sorted(rescorer.score(cands, q))[-len(detections) :]
    )
