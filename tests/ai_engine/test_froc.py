"""FROC on a hand-made example whose numbers are worked out below."""

from __future__ import annotations

import math

import pytest

from ai_engine.evaluation.froc import (
    FP_RATES,
    froc,
    match_detections,
    plot_froc,
    sensitivity_by_size,
    subgroup_sensitivity,
)

# Scan A: N1 at (0,0,0) d=10 (r=5), N2 at (50,0,0) d=6 (r=3).  Scan B: N3 at (0,0,0) d=8 (r=4).
NODULES = [
    [
        {"center_lps_mm": [0, 0, 0], "diameter_mm": 10},
        {"center_lps_mm": [50, 0, 0], "diameter_mm": 6},
    ],
    [{"center_lps_mm": [0, 0, 0], "diameter_mm": 8}],
]


def det(x, y, z, score):
    return {"center_lps_mm": [x, y, z], "score": score}


DETECTIONS = [
    [
        det(1, 1, 1, 0.9),  # hit N1 (distance 1.7 <= 5)
        det(0, 2, 0, 0.6),  # second hit on N1: counts once, not a FP
        det(100, 0, 0, 0.8),  # FP
        det(52, 0, 0, 0.3),  # hit N2 (distance 2 <= 3)
    ],
    [
        det(20, 0, 0, 0.7),  # FP
        det(0, 0, 3.9, 0.5),  # hit N3 (3.9 <= 4)
        det(0, 0, 4.5, 0.95),  # FP: just outside N3's radius
    ],
]
# By hand: nodule scores N1 0.9, N2 0.3, N3 0.5; FP scores 0.95, 0.8, 0.7; 2 scans, 3 nodules.
# Threshold sweep (FPs/scan, sensitivity):
#   >=0.95 (0.5, 0)  >=0.9 (0.5, 1/3)  >=0.8 (1.0, 1/3)  >=0.7 (1.5, 1/3)
#   >=0.5 (1.5, 2/3)  >=0.3 (1.5, 1)    (0.6 is the ignored second hit: no point of its own)
# Curve, best sensitivity per FP count, from (0, 0): (0,0) (0.5,1/3) (1,1/3) (1.5,1).
# Linear interpolation: 1/8 -> 1/12, 1/4 -> 1/6, 1/2 -> 1/3, 1 -> 1/3, 2, 4, 8 -> 1 (beyond the
# last point the curve stays at 1).  CPM = (1/12 + 1/6 + 1/3 + 1/3 + 3) / 7 = 47/84.
EXPECTED = {"0.125": 1 / 12, "0.25": 1 / 6, "0.5": 1 / 3, "1": 1 / 3, "2": 1.0, "4": 1.0, "8": 1.0}


def test_hand_example(tmp_path):
    result = froc(DETECTIONS, NODULES)
    assert result.fps_per_scan == [0.0, 0.5, 1.0, 1.5]
    assert result.sensitivity == pytest.approx([0.0, 1 / 3, 1 / 3, 1.0])
    assert result.sensitivity_at.keys() == EXPECTED.keys()
    for key, value in EXPECTED.items():
        assert result.sensitivity_at[key] == pytest.approx(value), key
    assert result.cpm == pytest.approx(47 / 84)
    assert (result.n_images, result.n_nodules, result.n_hit, result.n_false_positives) == (
        2,
        3,
        3,
        3,
    )
    metrics = result.to_metrics()
    assert set(metrics) >= {"cpm", "sensitivity", "n_images", "n_nodules"}
    png = plot_froc(result, tmp_path / "froc.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_matching_rules():
    best, fps = match_detections(DETECTIONS[0], NODULES[0])
    assert best == [0.9, 0.3] and fps == [0.8]
    best, fps = match_detections([det(0, 0, 0, 0.4)], [])
    assert best == [] and fps == [0.4]


def test_perfect_and_empty():
    perfect = froc([[det(0, 0, 0, 0.9)], [det(0, 0, 0, 0.8)]], NODULES[1:] + NODULES[1:])
    assert perfect.cpm == 1.0
    missed = froc([[], []], NODULES)
    assert missed.cpm == 0.0 and all(v == 0 for v in missed.sensitivity_at.values())
    assert len(FP_RATES) == 7 and math.isclose(sum(FP_RATES), 15.875)
    with pytest.raises(ValueError):
        froc([[]], NODULES)


def test_sensitivity_by_size_hand_example():
    # Nodule scores in order N1 0.9 (10 mm), N2 0.3 (6 mm), N3 0.5 (8 mm); the curve's points
    # keep thresholds inf, 0.9, 0.8, 0.3 at 0, 0.5, 1, 1.5 FPs per scan.
    # 5-8 mm (N2): sensitivity 0, 0, 0, 1 -> 0 up to 1 FP/scan, 1 from 2 on: CPM 3/7.
    # 8-15 mm (N1, N3; 8 belongs to the upper bin): 0, 1/2, 1/2, 1 -> 1/8, 1/4, 1/2, 1/2, 1, 1,
    # 1: CPM 4.375/7 = 5/8.  Weighted by nodules: (3/7 + 2 * 5/8) / 3 = 47/84 = the CPM.
    result = froc(DETECTIONS, NODULES)
    assert result.nodule_scores == [0.9, 0.3, 0.5]
    by_size = sensitivity_by_size(result, [10, 6, 8])
    assert list(by_size) == ["5-8", "8-15"]  # empty bins left out
    small, large = by_size["5-8"], by_size["8-15"]
    assert (small["n_nodules"], small["n_hit"], large["n_nodules"]) == (1, 1, 2)
    assert small["sensitivity"] == pytest.approx(
        {"0.125": 0, "0.25": 0, "0.5": 0, "1": 0, "2": 1, "4": 1, "8": 1}
    )
    assert large["sensitivity"] == pytest.approx(
        {"0.125": 1 / 8, "0.25": 1 / 4, "0.5": 1 / 2, "1": 1 / 2, "2": 1, "4": 1, "8": 1}
    )
    assert small["cpm"] == pytest.approx(3 / 7) and large["cpm"] == pytest.approx(5 / 8)
    assert (small["cpm"] + 2 * large["cpm"]) / 3 == pytest.approx(result.cpm)
    # a never-hit nodule counts in its bin's size but not in its hits
    missed = froc([[det(0, 0, 0, 0.9)], []], NODULES)
    assert missed.nodule_scores[1:] == [-math.inf, -math.inf]
    edges = sensitivity_by_size(missed, [2, 4, 20], bins_mm=(3, 5))
    assert list(edges) == ["<3", "3-5", ">=5"]
    assert edges["3-5"] == {
        "n_nodules": 1,
        "n_hit": 0,
        "sensitivity": dict.fromkeys(EXPECTED, 0.0),
        "cpm": 0.0,
    }


def test_subgroup_sensitivity_bad_input():
    result = froc(DETECTIONS, NODULES)
    with pytest.raises(ValueError, match="2 flags for 3 nodules"):
        subgroup_sensitivity(result, [True, False])
    assert subgroup_sensitivity(result, [False] * 3) == {
        "n_nodules": 0,
        "n_hit": 0,
        "sensitivity": None,
        "cpm": None,
    }
