"""Temperature scaling, ECE and the classification metrics."""

from __future__ import annotations

import numpy as np
import pytest

from ai_engine.calibration import apply_temperature, expected_calibration_error, fit_temperature
from ai_engine.evaluation.classification import classification_metrics, confusion_matrix, macro_f1


def _overconfident(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a 3-class model that is right ~70% of the time but ~99% sure."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])  # skewed classes
    predicted = np.where(rng.random(n) < 0.7, labels, (labels + rng.integers(1, 3, n)) % 3)
    logits = rng.normal(0, 0.5, (n, 3))
    logits[np.arange(n), predicted] += 6.0
    return logits, labels


def test_ece_zero_for_calibrated_and_large_for_overconfident():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet([1, 1, 1], size=20000)
    labels = np.array([rng.choice(3, p=p) for p in probs])  # labels drawn from the probs
    assert expected_calibration_error(probs, labels) < 0.02
    logits, labels = _overconfident()
    assert expected_calibration_error(apply_temperature(logits, 1.0), labels) > 0.2


def test_temperature_scaling_lowers_ece_on_skewed_validation_set():
    logits, labels = _overconfident(seed=2)
    temperature = fit_temperature(logits, labels)
    assert temperature > 1.5  # an overconfident model is softened
    before = expected_calibration_error(apply_temperature(logits, 1.0), labels)
    after = expected_calibration_error(apply_temperature(logits, temperature), labels)
    assert after < before / 2
    # held-out data from the same model: the fitted T still helps
    test_logits, test_labels = _overconfident(seed=3)
    assert expected_calibration_error(
        apply_temperature(test_logits, temperature), test_labels
    ) < expected_calibration_error(apply_temperature(test_logits, 1.0), test_labels)
    # argmax (hence accuracy) is unchanged
    assert (apply_temperature(logits, temperature).argmax(1) == logits.argmax(1)).all()


def test_underconfident_model_gets_temperature_below_one():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 500)
    logits = rng.normal(0, 0.05, (500, 3))
    logits[np.arange(500), labels] += 0.3  # always right, barely sure
    assert fit_temperature(logits, labels) < 0.5


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fit_temperature(np.zeros((3, 3)), np.zeros(4)), "N x C"),
        (lambda: expected_calibration_error(np.zeros(3), np.zeros(3)), "N x C"),
        (lambda: apply_temperature(np.zeros((2, 3)), 0.0), "temperature"),
    ],
)
def test_bad_shapes_and_temperature_are_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.6, 0.3, 0.1],
            [0.2, 0.7, 0.1],
            [0.5, 0.4, 0.1],  # wrong: class 1 predicted as 0
            [0.1, 0.2, 0.7],
            [0.1, 0.1, 0.8],
        ]
    )
    m = classification_metrics(labels, probs, ["1", "2", "3"])
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["confusion"] == [[2, 0, 0], [1, 1, 0], [0, 0, 2]]
    # F1: class0 2*2/(4+1)=0.8, class1 2*1/(2+0+1)=2/3, class2 1
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 1.0) / 3)
    assert m["auc"]["3"] == pytest.approx(1.0)
    assert 0.0 <= m["ece"] <= 1.0
    assert set(m) >= {"accuracy", "macro_f1", "auc", "ece", "confusion"}


def test_auc_is_none_for_an_absent_class_and_f1_zero():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.3, 0.7, 0.0], [0.4, 0.6, 0.0]])
    m = classification_metrics(labels, probs)
    assert m["auc"]["2"] is None
    assert m["auc"]["0"] == pytest.approx(1.0)
    assert macro_f1(confusion_matrix(labels, probs.argmax(1), 3)) == pytest.approx(2 / 3)


def _separated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A validation set the model gets entirely right, with moderate margins."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    logits = rng.normal(0, 0.3, (n, 3))
    logits[np.arange(n), labels] += 2.0
    return logits, labels


def test_plain_fit_on_a_perfectly_separated_set_runs_to_the_bound():
    logits, labels = _separated(24, 5)
    assert fit_temperature(logits, labels, bounds=(0.05, 20.0)) < 0.06  # T not identified


def test_prior_keeps_a_small_separated_set_from_sharpening_to_the_bound():
    logits, labels = _separated(24, 5)
    t_map = fit_temperature(logits, labels, bounds=(0.05, 20.0), prior_std=0.5)
    assert 0.3 < t_map < 1.0  # sharpened (every case was right), but not to the bound


def test_prior_is_outweighed_by_a_large_validation_set():
    logits, labels = _overconfident(n=3000, seed=6)
    plain = fit_temperature(logits, labels)
    with_prior = fit_temperature(logits, labels, prior_std=0.5)
    assert plain > 2.0
    assert with_prior == pytest.approx(plain, rel=0.05)
    with pytest.raises(ValueError, match="prior_std"):
        fit_temperature(logits, labels, prior_std=0.0)
