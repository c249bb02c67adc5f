"""Active learning on tiny phantoms: MC-dropout, TTA, diversity, the random baseline, the CLI.

A grading model is trained through the CLI on 9 brain-MRI phantoms; a detection model folder
holds an untrained tiny U-Net (the detector's scoring path, not its accuracy, is under test).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ai_engine.active_learning import (
    DEFAULT_DIVERSITY_WEIGHT,
    ActiveLearningInputError,
    StudyScore,
    class_balance_weight,
    class_uncertainty,
    diverse_order,
    information_density,
    mc_dropout,
    missing_grades,
    score_studies,
)
from ai_engine.active_learning.mc_dropout import find_head
from ai_engine.cli import main
from ai_engine.data.phantoms import make_brain_mri, make_chest_ct, write_brain_mri, write_chest_ct
from ai_engine.errors import InputError, ModelFolderError
from ai_engine.grading.data import CHANNELS
from ai_engine.grading.model import load_grading_model
from ai_engine.io import Volume
from ai_engine.modelfolder import Component, read_manifest, save_model_folder, update_manifest
from ai_engine.networks import build_network
from tests.ai_engine.detection_support import TINY

SHAPE = (32, 32, 32)
TRAIN_SEEDS = list(range(300, 309))
POOL_SEEDS = [400, 401, 402]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on the shared 2-core machine two threads stall each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mri_item(case: str) -> dict:
    return {"images": {name: f"{case}/{name}" for name in CHANNELS}}


@pytest.fixture(scope="module")
def grading(tmp_path_factory, one_thread) -> dict:
    root = tmp_path_factory.mktemp("al_grading")
    train = []
    for seed, grade in zip(TRAIN_SEEDS, [1, 2, 3] * 3, strict=True):
        write_brain_mri(root / f"case{seed}", seed, grade=grade, shape=SHAPE)
        train.append({**_mri_item(f"case{seed}"), "grade": grade})
    pool = []
    for seed in POOL_SEEDS:
        write_brain_mri(root / f"case{seed}", seed, shape=SHAPE)
        pool.append({**_mri_item(f"case{seed}"), "key": f"study-{seed}"})
    (root / "datalist.json").write_text(json.dumps({"training": train, "testing": pool}))
    model = root / "model"
    code = main(
        [
            "grading", "train", "--datalist", str(root / "datalist.json"), "--out", str(model),
            "--network", "resnet3d", "--network-kwargs", '{"block_inplanes": [8, 16, 32, 32]}',
            "--spatial-size", "24,24,24", "--epochs", "12", "--batch-size", "3", "--lr", "3e-3",
            "--warmup-steps", "2", "--no-augment", "--channel-dropout", "0", "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    return {"root": root, "model": model, "datalist": root / "datalist.json"}


def _training_like() -> list[tuple[str, Volume]]:
    return [
        (f"train-{seed}", make_brain_mri(seed, grade=grade, shape=SHAPE)[0])
        for seed, grade in zip(TRAIN_SEEDS, [1, 2, 3] * 3, strict=True)
    ]


def _noise(seed: int) -> Volume:
    """Out of distribution: positive white noise in every sequence, no anatomy."""
    rng = np.random.default_rng(seed)
    return Volume(np.abs(rng.normal(300.0, 200.0, size=(4, *SHAPE))), np.diag([2.0, 2.0, 2.5, 1]))


def _by_key(scores: list[StudyScore]) -> dict[str, StudyScore]:
    return {s.key: s for s in scores}


# ---------------------------------------------------------------- MC-dropout mechanics


def test_mc_dropout_is_injected_when_the_network_has_none_and_removed_afterwards():
    torch.manual_seed(0)
    net = build_network("resnet3d", in_channels=1, num_classes=3, block_inplanes=[4, 8, 8, 8])
    net.eval()
    x = torch.randn(4, 1, 16, 16, 16)
    running_mean = net.bn1.running_mean.clone()
    with torch.no_grad():
        before = net(x)
        with mc_dropout(net, injected_p=0.3) as info:
            a, b = net(x), net(x)
    assert info.mode == "injected" and info.head == "fc" and info.p == 0.3
    assert not torch.allclose(a, b)  # passes are stochastic, not silently equal
    assert not net.training and not net.bn1.training  # BatchNorm stayed in eval
    assert torch.equal(net.bn1.running_mean, running_mean)
    with torch.no_grad():
        assert torch.equal(net(x), before)  # hook removed: deterministic again


def test_mc_dropout_uses_native_dropout_layers_when_present():
    net = build_network("densenet121_3d", in_channels=1, num_classes=2, dropout_prob=0.2).eval()
    with mc_dropout(net) as info:
        assert info.mode == "native" and info.layers > 0 and info.p == [0.2]
        assert any(
            m.training for m in net.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)
        )
    assert not any(m.training for m in net.modules())


def test_gated_resnet_trained_with_head_dropout_is_sampled_natively():
    """`head_dropout` adds dropout the network trains with (no weights: the state dict is the
    same, so folders load either way). Eval passes are deterministic; MC-dropout samples that
    layer ("native") instead of injecting dropout at scoring time."""
    kwargs = {
        "in_channels": 2,
        "num_classes": 3,
        "block_inplanes": [4, 8, 8, 8],
        "tumor_gate": True,
    }
    torch.manual_seed(0)
    plain = build_network("resnet3d", **kwargs)
    torch.manual_seed(0)
    net = build_network("resnet3d", **kwargs, head_dropout=0.3).eval()
    assert net.state_dict().keys() == plain.state_dict().keys()
    net.load_state_dict(plain.state_dict())
    plain.eval()
    x = torch.randn(3, 2, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(x), plain(x))  # eval: the layer passes its input through
        with mc_dropout(net) as info:
            a, b = net(x), net(x)
    assert info.describe() == {"mode": "native", "layers": 1, "p": [0.3]}
    assert not torch.allclose(a, b)
    assert not any(m.training for m in net.modules())
    with mc_dropout(plain) as info:
        assert info.mode == "injected" and info.head == "head"  # p = 0: nothing native


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tumor_gate": True, "head_dropout": 1.0}, r"head_dropout must be in \[0, 1\), got 1.0"),
        ({"tumor_gate": True, "head_dropout": -0.1}, r"head_dropout must be in \[0, 1\)"),
        ({"head_dropout": 0.2}, "head_dropout needs tumor_gate=True"),
    ],
)
def test_head_dropout_refuses_what_it_cannot_build(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_network(
            "resnet3d", in_channels=1, num_classes=3, block_inplanes=[4, 4, 4, 4], **kwargs
        )


def test_diverse_order_is_plain_uncertainty_at_weight_zero_and_k_center_at_one():
    u = np.array([0.9, 0.8, 0.7, 0.1])
    emb = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.7, 0.7]])
    assert diverse_order(u, emb, 0.0).order == [0, 1, 2, 3]
    # item 1 is a near-copy of item 0: diversity pushes it behind the distinct item 2
    assert diverse_order(u, emb, 0.5).order[:2] == [0, 2]
    assert diverse_order(u, emb, 1.0).order[:2] == [0, 2]
    with pytest.raises(ValueError, match="weight"):
        diverse_order(u, emb, 1.5)


def test_diverse_order_counts_distances_from_the_labelled_reference():
    """Labelled studies act as if queued before: a copy of one loses the head of the queue."""
    u = np.array([0.9, 0.8, 0.7])
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    labelled = np.array([[1.0, 0.001]])  # a near-copy of study 0 is labelled already
    assert diverse_order(u, emb, 0.5).order[0] == 0  # without it, 0 heads the queue
    with_ref = diverse_order(u, emb, 0.5, reference=labelled)
    assert with_ref.order[0] == 1
    assert with_ref.min_distance[0] == pytest.approx(0.0, abs=1e-5)
    assert with_ref.min_distance[1] == pytest.approx(1.0, abs=1e-3)  # the first pick's too
    # weight 0: the reference changes no order, only the reported distances
    assert diverse_order(u, emb, 0.0, reference=labelled).order == [0, 1, 2]
    assert diverse_order(u, emb, 0.5, reference=np.zeros((0, 2))).order[0] == 0  # none labelled
    with pytest.raises(ValueError, match=r"\(m, 2\) reference"):
        diverse_order(u, emb, 0.5, reference=np.ones((1, 3)))


def test_information_density_is_the_mean_similarity_to_the_rest_of_the_pool():
    emb = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # three alike (similarity 1 to each other, 0 to the outlier) and one outlier
    assert information_density(emb) == pytest.approx([2 / 3, 2 / 3, 2 / 3, 0.0])
    opposite = np.array([[1.0, 0.0], [-1.0, 0.0]])  # negative similarity clips to 0
    assert information_density(opposite) == pytest.approx([0.0, 0.0])
    assert information_density(np.array([[0.3, 0.4]])) == pytest.approx([1.0])  # alone


def test_class_uncertainty_entropy_bald_and_margin_on_known_distributions():
    confident = class_uncertainty(np.array([[1.0, 0.0, 0.0]] * 4))
    assert confident["entropy"] < 1e-9 and confident["bald"] < 1e-9
    assert confident["margin"] == pytest.approx(0.0)
    # passes that disagree, each sure of itself: high entropy, all of it mutual information
    split = class_uncertainty(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert split["entropy"] == pytest.approx(np.log(2) / np.log(3))
    assert split["bald"] == pytest.approx(split["entropy"])
    assert split["margin"] == pytest.approx(1.0)  # two classes tied at 0.5
    # passes that agree on a hesitant distribution: no mutual information
    agree = class_uncertainty(np.array([[0.6, 0.3, 0.1]] * 3))
    assert agree["bald"] == pytest.approx(0.0, abs=1e-12)
    assert agree["margin"] == pytest.approx(0.7)
    assert agree["mean_probabilities"] == pytest.approx([0.6, 0.3, 0.1])


def test_class_balance_weight_favours_the_grades_with_fewest_labels():
    # counts 8 / 3 / 0: inverse add-one frequencies 1/9, 1/4, 1; scaled to mean 1
    inverse = np.array([1 / 9, 1 / 4, 1.0])
    rarity = 3 * inverse / inverse.sum()
    assert class_balance_weight(np.array([0.0, 0.0, 1.0]), np.array([8, 3, 0])) == (
        pytest.approx(rarity[2])
    )
    mixed = np.array([0.5, 0.3, 0.2])
    assert class_balance_weight(mixed, np.array([8, 3, 0])) == pytest.approx(mixed @ rarity)
    # equal counts (none or many): weight 1 for every study, the plain uncertainty order
    for counts in ([0, 0, 0], [5, 5, 5]):
        assert class_balance_weight(mixed, np.array(counts)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=">= 0"):
        class_balance_weight(mixed, np.array([1, -1, 0]))
    with pytest.raises(ValueError, match="matching"):
        class_balance_weight(mixed, np.array([1, 1]))


# ---------------------------------------------------------------- grading scoring


def test_entropy_is_nonzero_and_reproducible_for_a_seed(grading):
    studies = [*_training_like()[:3], ("noise", _noise(1))]
    first = score_studies(grading["model"], studies, mc_samples=6, seed=7)
    again = score_studies(grading["model"], studies, mc_samples=6, seed=7)
    other = score_studies(grading["model"], studies, mc_samples=6, seed=8)
    # the grading network's prediction head (ResNet `fc`, or `head` for a gated variant)
    head, _ = find_head(load_grading_model(grading["model"]).runner)
    assert [(s.key, s.score, s.components) for s in first] == [
        (s.key, s.score, s.components) for s in again
    ]
    for s in first:
        c = s.components
        assert c["mc_dropout"]["mode"] == "injected" and c["mc_dropout"]["head"] == head
        assert 0.0 < c["entropy"] <= 1.0 and c["bald"] > 0.0 and c["tta_variance"] >= 0.0
        assert 0.0 <= c["margin"] <= 1.0
        assert json.loads(json.dumps(c)) == c  # JSON-ready
    bald = {s.key: s.components["bald"] for s in first}
    assert bald != {s.key: s.components["bald"] for s in other}  # the seed drives the masks


def test_noise_scores_higher_uncertainty_than_training_studies(grading):
    train = _training_like()
    noise = [(f"noise-{i}", _noise(i)) for i in range(3)]
    scores = _by_key(score_studies(grading["model"], train + noise, diversity_weight=0.0))
    u_train = [scores[k].components["uncertainty"] for k, _ in train]
    u_noise = [scores[k].components["uncertainty"] for k, _ in noise]
    # compare the mean of the noise inputs with the median training study (robust to one
    # training phantom the tiny model still finds hard)
    assert np.mean(u_noise) > np.median(u_train), (u_noise, u_train)
    ranks = [scores[k].rank for k, _ in noise]
    assert np.mean(ranks) < np.mean([scores[k].rank for k, _ in train])


def test_diversity_puts_a_near_duplicate_of_the_top_study_lower(grading):
    pool = [*_training_like()[:5], ("noise", _noise(3))]
    plain = score_studies(grading["model"], pool, diversity_weight=0.0)
    # the most uncertain training-like study (the noise input may rank above it: the tiny
    # model can be as unsure of a trained phantom as of noise)
    top_key = next(s.key for s in plain if s.key != "noise")
    top = dict(pool)[top_key]
    rng = np.random.default_rng(0)
    twin = Volume(top.array * (1 + 1e-3 * rng.standard_normal(top.array.shape)), top.affine)
    with_twin = [*pool, ("twin", twin)]
    without = _by_key(score_studies(grading["model"], with_twin, diversity_weight=0.0))
    diverse = _by_key(score_studies(grading["model"], with_twin, diversity_weight=0.5))
    assert diverse[top_key].rank < diverse["twin"].rank
    # as uncertain as the top study (up to MC noise: its dropout masks are seeded by its key),
    # so ahead of every other training-like study
    u = {k: s.components["uncertainty"] for k, s in without.items()}
    assert u["twin"] == pytest.approx(u[top_key], abs=0.01)
    others = [without[k].rank for k, _ in pool if k not in (top_key, "noise")]
    assert without["twin"].rank < min(others), {k: round(v, 4) for k, v in u.items()}
    assert diverse["twin"].rank > without["twin"].rank
    assert diverse["twin"].components["min_cosine_distance"] < 0.01


def test_labelled_studies_push_their_repeats_down_from_the_head_of_the_queue(grading):
    """`labeled`: a re-acquisition of a labelled study is close to it in feature space, so
    with a diversity weight it leaves the head of the queue, where one-at-a-time labelling
    takes from; without a weight the order stays and the distance is reported."""
    pool = [*_training_like()[:5], ("noise", _noise(3))]
    plain = score_studies(grading["model"], pool, diversity_weight=0.5)
    top_key = plain[0].key
    top = dict(pool)[top_key]
    rng = np.random.default_rng(1)
    sibling = Volume(top.array * (1 + 1e-3 * rng.standard_normal(top.array.shape)), top.affine)
    labelled = [("labelled-sibling", sibling)]
    pushed = _by_key(score_studies(grading["model"], pool, diversity_weight=0.5, labeled=labelled))
    assert pushed[top_key].rank > 1
    assert pushed[top_key].components["min_cosine_distance"] < 0.01
    kept = score_studies(grading["model"], pool, diversity_weight=0.0, labeled=labelled)
    assert [s.key for s in kept] == [s.key for s in score_studies(grading["model"], pool)]
    assert kept[0].components["min_cosine_distance"] < 0.01  # reported for the first pick too
    # the random baseline ignores them
    random = score_studies(grading["model"], pool, strategy="random", labeled=labelled)
    assert [s.key for s in random] == [
        s.key for s in score_studies(grading["model"], pool, strategy="random")
    ]


def test_labelled_studies_are_read_first_so_a_bad_one_fails_before_any_scoring(grading):
    """The labelled studies are embedded before the studies to score are read: a labelled
    study of the wrong kind stops the call before hours of scoring, and each labelled study
    reports progress (at 0) that may cancel."""
    read: list[str] = []

    def pool():
        for key, volume in _training_like()[:3]:
            read.append(key)
            yield key, volume

    bad = [("ct", Volume(np.zeros(SHAPE), np.eye(4)))]
    with pytest.raises(InputError, match="labelled study 'ct'"):
        score_studies(grading["model"], pool(), labeled=bad)
    assert read == []
    calls: list[tuple[float, str]] = []
    labelled = [
        ("l1", make_brain_mri(1, shape=SHAPE)[0]),
        ("l2", make_brain_mri(2, shape=SHAPE)[0]),
    ]
    score_studies(
        grading["model"], pool(), mc_samples=2, labeled=labelled,
        progress=lambda f, m: calls.append((f, m)),
    )  # fmt: skip
    assert calls[:2] == [
        (0.0, "Embedding labelled study 1: l1"),
        (0.0, "Embedding labelled study 2: l2"),
    ]
    assert calls[2][1].startswith("Scoring study 1")


def test_bench_variants_pass_only_parameters_the_library_takes():
    """The bench's uncertainty variants are keyword overrides of `score_studies`: a renamed
    parameter must fail here, not an hour into a run."""
    import inspect

    bench = _bench()
    params = set(inspect.signature(score_studies).parameters)
    for name, kwargs in bench.VARIANTS.items():
        assert set(kwargs) <= params, name
    variants = set(bench.VARIANTS)
    labelled = {"labeled-diversity-0.2", "labeled-diversity-0.5"}
    assert labelled == bench.WITH_LABELED
    for subset in (bench.COUNTED, set(bench.RERANK), bench.ONE_GRADE_COLD_START):
        assert subset.issubset(variants)


def test_a_model_that_has_not_seen_every_grade_is_a_cold_start_queued_by_distance(
    grading, tmp_path
):
    """Training records the grades it learnt from; a model whose folder says its training set
    lacked a grade (one grade seen, or two of three) is queued in the k-center order from the
    labelled studies (diversity weight 1; here between network features, the intensity
    descriptors of the default have their own test), the component says so, and `cold_start=False` or
    a model that saw every grade keep the uncertainty order. A grade the model predicts but
    the counts leave out counts as missing; a folder without counts is not a cold start."""
    import shutil

    made_by = read_manifest(grading["model"])["made_by_params"]
    counts = made_by["label_counts"]  # the training split: 9 studies less the validation one
    assert (
        set(counts) == {"1", "2", "3"} and sum(counts.values()) == 8 and min(counts.values()) >= 2
    )
    assert missing_grades(grading["model"]) == []
    studies = _training_like()
    labeled, pool = studies[:2], studies[2:]
    common = {"labeled": labeled, "mc_samples": 2, "seed": 1}
    warm = score_studies(grading["model"], pool, **common)
    assert all(s.components["cold_start"] is False for s in warm)
    for name, seen, missing in (
        ("one", {"1": 3, "2": 0, "3": 0}, ["2", "3"]),
        ("two", {"1": 3, "2": 2, "3": 0}, ["3"]),
        ("unrecorded", {"1": 3, "2": 2}, ["3"]),
    ):
        cold = tmp_path / name
        shutil.copytree(grading["model"], cold)
        update_manifest(cold, made_by_params={**made_by, "label_counts": seen})
        assert missing_grades(cold) == missing, name
        ranking = score_studies(cold, pool, cold_start_space="network", **common)
        assert all(s.components["cold_start"] is True for s in ranking), name
        kcenter = score_studies(cold, pool, diversity_weight=1.0, cold_start=False, **common)
        assert [s.key for s in ranking] == [s.key for s in kcenter], name
        plain = score_studies(cold, pool, cold_start=False, **common)
        assert all(s.components["cold_start"] is False for s in plain)
        assert [s.key for s in plain] != [s.key for s in ranking], name
        assert [s.key for s in warm] == [s.key for s in plain], name
    assert "cold_start" not in score_studies(cold, pool, strategy="random")[0].components
    bare = tmp_path / "bare"
    shutil.copytree(grading["model"], bare)
    update_manifest(bare, made_by_params={k: v for k, v in made_by.items() if k != "label_counts"})
    assert missing_grades(bare) == []


def test_intensity_cold_start_queues_by_distance_between_image_descriptors(grading, tmp_path):
    """`cold_start_space="intensity"` (the default since session 28): in a cold start the
    k-center order is taken between the studies' intensity descriptors (percentiles of each
    channel of the model's input), standardised over the pool and the labelled studies
    together; "network" takes it between network features; the components say which. A
    model that has seen every grade ignores it, and an unknown space is refused before any
    scoring."""
    import shutil

    from ai_engine.active_learning.descriptors import intensity_descriptor, standardized
    from ai_engine.grading.data import preprocess

    made_by = read_manifest(grading["model"])["made_by_params"]
    cold = tmp_path / "cold"
    shutil.copytree(grading["model"], cold)
    update_manifest(cold, made_by_params={**made_by, "label_counts": {"1": 3, "2": 2, "3": 0}})
    studies = [*_training_like(), ("noise", _noise(5))]
    labeled, pool = studies[:2], studies[2:]
    common = {"labeled": labeled, "mc_samples": 2, "seed": 1}
    ranking = score_studies(cold, pool, **common)
    assert [s.key for s in ranking] == [
        s.key for s in score_studies(cold, pool, cold_start_space="intensity", **common)
    ]
    assert all(s.components["cold_start"] is True for s in ranking)
    assert {s.components["cold_start_space"] for s in ranking} == {"intensity"}
    # the same order by hand: descriptors on the model grid, standardised together, k-center
    size = load_grading_model(cold).spatial_size
    rows = standardized(np.stack([
        intensity_descriptor(preprocess(v, size).image) for _, v in [*pool, *labeled]
    ]))  # fmt: skip
    assert all(s.components["foreground"] for s in ranking)  # one group: no reordering
    expected = diverse_order(np.ones(len(pool)), rows[: len(pool)], 1.0, rows[len(pool) :])
    assert [s.key for s in ranking] == [pool[i][0] for i in expected.order]
    network = score_studies(cold, pool, cold_start_space="network", **common)
    assert {s.components["cold_start_space"] for s in network} == {"network"}
    assert [s.key for s in network] != [s.key for s in ranking]
    # every grade seen: no cold start, the space changes nothing
    warm = score_studies(grading["model"], pool, **common)
    assert [s.key for s in score_studies(
        grading["model"], pool, cold_start_space="intensity", **common
    )] == [s.key for s in warm]  # fmt: skip
    assert "cold_start_space" not in warm[0].components
    with pytest.raises(ActiveLearningInputError, match="unknown cold_start_space 'pixels'"):
        score_studies(cold, pool, cold_start_space="pixels", **common)
    broken = pool[0][1].array.astype(np.float64)
    broken[0, 0, 0, 0] = np.nan
    bad = [*pool[1:], ("nan-study", Volume(broken, pool[0][1].affine))]
    with pytest.raises(
        InputError, match=r"study 'nan-study': no intensity descriptor: .*non-finite"
    ):
        score_studies(cold, bad, **common)


def test_intensity_descriptor_and_standardised_rows():
    """Four percentiles per channel, channel by channel; bad shapes and non-finite images are
    refused; standardising leaves a constant column at 0."""
    from ai_engine.active_learning.descriptors import intensity_descriptor, standardized

    image = np.stack([np.arange(1000.0).reshape(10, 10, 10), np.zeros((10, 10, 10))])
    d = intensity_descriptor(image)
    assert d.shape == (8,)
    assert d[:4] == pytest.approx(np.percentile(np.arange(1000.0), [50, 90, 95, 99]))
    assert list(d[4:]) == [0.0] * 4
    with pytest.raises(ValueError, match="expected a \\(C, X, Y, Z\\) image"):
        intensity_descriptor(np.zeros((10, 10, 10)))
    bad = image.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        intensity_descriptor(bad)
    rows = standardized(np.array([[1.0, 5.0], [3.0, 5.0]]))
    assert rows.tolist() == [[-1.0, 0.0], [1.0, 0.0]]
    with pytest.raises(ValueError, match="expected \\(n, d\\) rows"):
        standardized(np.zeros(3))


def test_default_queue_is_the_uncertainty_order(grading):
    """The default diversity weight is 0 (measured by bench/bench_active_learning.py): the
    queue follows `uncertainty` alone, and the diversity components are still reported."""
    assert DEFAULT_DIVERSITY_WEIGHT == 0.0
    pool = [*_training_like()[:5], ("noise", _noise(4))]
    default = score_studies(grading["model"], pool, mc_samples=4)
    plain = score_studies(grading["model"], pool, mc_samples=4, diversity_weight=0.0)
    assert [s.key for s in default] == [s.key for s in plain]
    u = [s.components["uncertainty"] for s in default]
    assert u == sorted(u, reverse=True)
    assert [s.score for s in default] == u
    assert all(s.components["min_cosine_distance"] is not None for s in default[1:])
    diverse = score_studies(grading["model"], pool, mc_samples=4, diversity_weight=1.0)
    assert [s.score for s in diverse] != u  # a weight > 0 does change the scores


def test_tta_weight_scales_the_variance_term_of_the_uncertainty(grading):
    """u = (entropy + min(c * tta_variance, 1)) / 2 with c = `tta_weight` (4 by default)."""
    pool = [*_training_like()[:4], ("noise", _noise(4))]
    for c in (4.0, 64.0):
        scores = score_studies(grading["model"], pool, mc_samples=4, seed=3, tta_weight=c)
        for s in scores:
            comps = s.components
            expected = (comps["entropy"] + min(c * comps["tta_variance"], 1.0)) / 2.0
            assert comps["uncertainty"] == pytest.approx(expected)
    default = score_studies(grading["model"], pool, mc_samples=4, seed=3)
    assert [s.components["uncertainty"] for s in default] == [
        s.components["uncertainty"]
        for s in score_studies(grading["model"], pool, mc_samples=4, seed=3, tta_weight=4.0)
    ]


def test_density_weight_multiplies_the_uncertainty_by_the_density_to_its_power(grading):
    """u becomes u * density ** b; b = 0 (the default) leaves the plain order and no density."""
    pool = [*_training_like()[:4], ("noise", _noise(4))]
    plain = {s.key: s for s in score_studies(grading["model"], pool, mc_samples=4, seed=3)}
    assert all("density" not in s.components for s in plain.values())
    for b in (1.0, 4.0):
        weighted = score_studies(grading["model"], pool, mc_samples=4, seed=3, density_weight=b)
        for s in weighted:
            comps = s.components
            before = plain[s.key].components["uncertainty"]
            assert comps["uncertainty_before_density"] == pytest.approx(before)
            assert 0.0 <= comps["density"] <= 1.0
            assert comps["uncertainty"] == pytest.approx(before * comps["density"] ** b)
        u = [s.components["uncertainty"] for s in weighted]
        assert u == sorted(u, reverse=True)
        assert [s.score for s in weighted] == u


def test_labeled_counts_weight_each_study_by_its_predicted_grades_rarity(grading):
    """With the labelled set's grade counts, the ranked uncertainty is the plain one times
    `class_balance_weight` of the study's MC-mean probabilities; equal counts change nothing."""
    pool = [*_training_like()[:5], ("noise", _noise(4))]
    plain = _by_key(score_studies(grading["model"], pool, mc_samples=4, seed=3))
    counts = {1: 9, 2: 4, "3": 0}
    weighted = score_studies(grading["model"], pool, mc_samples=4, seed=3, labeled_counts=counts)
    for s in weighted:
        c = s.components
        probs = np.array([c["mc_mean_probabilities"][g] for g in ("1", "2", "3")])
        weight = class_balance_weight(probs, np.array([9, 4, 0]))  # probs rounded to 4 digits
        assert c["class_balance_weight"] == pytest.approx(weight, rel=1e-3)
        assert c["unweighted_uncertainty"] == pytest.approx(plain[s.key].components["uncertainty"])
        assert c["uncertainty"] == pytest.approx(
            c["class_balance_weight"] * c["unweighted_uncertainty"]
        )
    u = [s.components["uncertainty"] for s in weighted]
    assert u == sorted(u, reverse=True)
    even = score_studies(
        grading["model"], pool, mc_samples=4, seed=3, labeled_counts={1: 2, 2: 2, 3: 2}
    )
    assert [s.key for s in even] == [s.key for s in sorted(plain.values(), key=lambda s: s.rank)]
    # the random baseline ignores the counts
    random = score_studies(grading["model"], pool, strategy="random", seed=3, labeled_counts=counts)
    assert [s.key for s in random] == [
        s.key for s in score_studies(grading["model"], pool, strategy="random", seed=3)
    ]


def test_ranks_run_from_one_to_n_with_non_increasing_scores(grading):
    pool = [
        *_training_like()[:4],
        ("noise", _noise(5)),
        ("blank", Volume(np.zeros((4, *SHAPE)), np.eye(4))),
    ]
    for strategy in ("uncertainty", "random"):
        scores = score_studies(grading["model"], pool, strategy=strategy)
        assert [s.rank for s in scores] == list(range(1, len(pool) + 1))
        assert sorted(s.key for s in scores) == sorted(k for k, _ in pool)
        values = [s.score for s in scores]
        assert values == sorted(values, reverse=True)
        assert scores[-1].key == "blank" and not scores[-1].components["foreground"]


def test_random_baseline_is_seeded_and_puts_studies_without_foreground_last(grading):
    affine = np.diag([2.0, 2.0, 2.5, 1.0])
    pool = [
        *_training_like()[:6],
        ("blank", Volume(np.zeros((4, *SHAPE)), affine)),
        ("constant", Volume(np.full((4, *SHAPE), 50.0), affine)),
    ]
    a = score_studies(grading["model"], pool, strategy="random", seed=3)
    b = score_studies(grading["model"], list(reversed(pool)), strategy="random", seed=3)
    c = score_studies(grading["model"], pool, strategy="random", seed=4)
    assert [s.key for s in a] == [s.key for s in b]  # seeded, whatever the input order
    assert [s.key for s in a[:6]] != [s.key for s in c[:6]]  # another seed, another order
    for ranking in (a, c):
        assert {s.key for s in ranking[-2:]} == {"blank", "constant"}
        assert all(s.components["foreground"] for s in ranking[:6])
        assert all(s.components["strategy"] == "random" for s in ranking)


def test_progress_is_called_per_study_and_may_cancel(grading):
    calls: list[tuple[float, str]] = []
    pool = _training_like()[:3]
    score_studies(
        grading["model"], pool, strategy="random", progress=lambda f, m: calls.append((f, m))
    )
    assert [round(f, 3) for f, _ in calls] == [0.0, 0.333, 0.667, 1.0]

    class Cancelled(Exception):
        pass

    def cancel(fraction: float, message: str) -> None:
        if fraction > 0:
            raise Cancelled(message)

    with pytest.raises(Cancelled):
        score_studies(grading["model"], iter(pool), progress=cancel, total=3)


@pytest.fixture(scope="module")
def other_task_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("other_task")
    net = build_network("resnet3d", in_channels=1, num_classes=1, block_inplanes=[4, 4, 4, 4])
    return save_model_folder(
        folder,
        task="lesion-segmentation",
        components={"model": Component(network="resnet3d", network_kwargs={"in_channels": 1, "num_classes": 1, "block_inplanes": [4, 4, 4, 4]}, module=net)},
    )  # fmt: skip


BAD_LIBRARY_CALLS = [
    # (name, kwargs, inputs builder, error class, message fragment)
    ("unknown strategy", {"strategy": "margin"}, lambda: _training_like()[:1], ActiveLearningInputError, "unknown strategy 'margin'"),
    ("empty input", {}, lambda: [], ActiveLearningInputError, "no studies to score"),
    ("one MC sample", {"mc_samples": 1}, lambda: _training_like()[:1], ActiveLearningInputError, "mc_samples"),
    ("diversity weight > 1", {"diversity_weight": 2.0}, lambda: _training_like()[:1], ActiveLearningInputError, "diversity_weight"),
    ("duplicate keys", {}, lambda: _training_like()[:1] * 2, ActiveLearningInputError, "given twice"),
    ("CT volume for grading", {}, lambda: [("ct", Volume(np.zeros(SHAPE), np.eye(4)))], InputError, "study 'ct': a grading study must be a (4, X, Y, Z)"),
    ("not a Volume", {}, lambda: [("raw", np.zeros((4, *SHAPE)))], ActiveLearningInputError, "expected an ai_engine.io.Volume"),
    ("labeled_counts: unknown grade", {"labeled_counts": {4: 1}}, lambda: _training_like()[:1], ActiveLearningInputError, "unknown grade 4; the model grades 1, 2, 3"),
    ("labeled_counts: negative", {"labeled_counts": {1: -2}}, lambda: _training_like()[:1], ActiveLearningInputError, "grade 1 needs a count >= 0, got -2"),
    ("labeled_counts: not a number", {"labeled_counts": {1: "many"}}, lambda: _training_like()[:1], ActiveLearningInputError, "needs a count >= 0, got 'many'"),
    ("labeled_counts: grade twice", {"labeled_counts": {1: 2, "1": 3}}, lambda: _training_like()[:1], ActiveLearningInputError, "grade 1 is given twice"),
    ("labeled_counts: checked for random too", {"strategy": "random", "labeled_counts": {5: 1}}, lambda: _training_like()[:1], ActiveLearningInputError, "unknown grade 5"),
    ("labeled_counts: a list", {"labeled_counts": [3, 2, 1]}, lambda: _training_like()[:1], ActiveLearningInputError, "must map grades to counts, got list"),
    ("tta_weight negative", {"tta_weight": -1.0}, lambda: _training_like()[:1], ActiveLearningInputError, "tta_weight must be a number >= 0, got -1.0"),
    ("tta_weight not a number", {"tta_weight": "4"}, lambda: _training_like()[:1], ActiveLearningInputError, "tta_weight must be a number >= 0, got '4'"),
    ("tta_weight a bool", {"tta_weight": True}, lambda: _training_like()[:1], ActiveLearningInputError, "tta_weight must be a number >= 0, got True"),
    ("tta_weight infinite", {"tta_weight": float("inf")}, lambda: _training_like()[:1], ActiveLearningInputError, "tta_weight must be a number >= 0, got inf"),
    ("density_weight negative", {"density_weight": -0.5}, lambda: _training_like()[:1], ActiveLearningInputError, "density_weight must be a number >= 0, got -0.5"),
    ("density_weight not a number", {"density_weight": "1"}, lambda: _training_like()[:1], ActiveLearningInputError, "density_weight must be a number >= 0, got '1'"),
    ("density_weight NaN", {"density_weight": float("nan")}, lambda: _training_like()[:1], ActiveLearningInputError, "density_weight must be a number >= 0, got nan"),
    ("labeled: also to be scored", {"labeled": [("train-300", make_brain_mri(300, shape=SHAPE)[0])]}, lambda: _training_like()[:1], ActiveLearningInputError, "study 'train-300' is both labelled and to be scored"),
    ("labeled: key twice", {"labeled": [("l", make_brain_mri(1, shape=SHAPE)[0])] * 2}, lambda: _training_like()[:1], ActiveLearningInputError, "labelled study key 'l' is given twice"),
    ("labeled: not a Volume", {"labeled": [("l", np.zeros((4, *SHAPE)))]}, lambda: _training_like()[:1], ActiveLearningInputError, "labelled study 'l': expected an ai_engine.io.Volume"),
    ("labeled: a CT for grading", {"labeled": [("ct", Volume(np.zeros(SHAPE), np.eye(4)))]}, lambda: _training_like()[:1], InputError, "labelled study 'ct': a grading study must be a (4, X, Y, Z)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "kwargs", "inputs", "error", "message"),
    BAD_LIBRARY_CALLS,
    ids=[c[0] for c in BAD_LIBRARY_CALLS],
)
def test_bad_arguments_raise_clear_errors(grading, name, kwargs, inputs, error, message):
    with pytest.raises(error) as info:
        score_studies(grading["model"], inputs(), **kwargs)
    assert message in str(info.value), str(info.value)
    if error is ActiveLearningInputError:
        assert isinstance(info.value, ValueError) and isinstance(info.value, InputError)


def test_model_folders_of_another_task_or_missing_are_refused(other_task_folder, tmp_path):
    with pytest.raises(ModelFolderError, match="'lesion-segmentation' model; active learning"):
        score_studies(other_task_folder, _training_like()[:1])
    with pytest.raises(ModelFolderError, match="model folder not found"):
        score_studies(tmp_path / "nothing", _training_like()[:1])


# ---------------------------------------------------------------- detection scoring

TINY_DETECTOR = replace(TINY, candidate_threshold=0.3)


@pytest.fixture(scope="module")
def detector_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = TINY_DETECTOR
    unet = build_network("unet3d", **cfg.unet_kwargs)
    data = cfg.to_dict()
    pre_keys = (
        "spacing_mm",
        "hu_range",
        "patch_size",
        "sw_roi_size",
        "sw_overlap",
        "sw_batch_size",
    )
    return save_model_folder(
        tmp_path_factory.mktemp("detector"),
        task="nodule-detection",
        components={"candidates": Component(network="unet3d", network_kwargs=cfg.unet_kwargs, module=unet)},
        preprocessing={k: data[k] for k in pre_keys},
        postprocessing={k: v for k, v in data.items() if k not in pre_keys},
    )  # fmt: skip


def test_detection_scores_the_candidate_map_and_random_puts_air_last(detector_folder):
    ct, _ = make_chest_ct(21, shape=(64, 64, 16))
    air = Volume(np.full(ct.array.shape, -1000.0), ct.affine, {"modality": "CT"})
    studies = [("chest", ct), ("air", air)]
    scores = _by_key(score_studies(detector_folder, studies, mc_samples=3, seed=1))
    chest = scores["chest"].components
    assert chest["mc_dropout"]["mode"] == "injected"  # the U-Net's Dropout layers have p=0
    assert chest["region"] == "candidates" and chest["region_voxels"] > 0
    assert chest["entropy"] > 0 and chest["bald"] > 0 and chest["tta_variance"] > 0
    assert chest["foreground"] and chest["candidates"] > 0
    assert not scores["air"].components["foreground"] and scores["air"].rank == 2
    again = _by_key(score_studies(detector_folder, studies, mc_samples=3, seed=1))
    assert again["chest"].components == chest
    random = score_studies(detector_folder, studies, strategy="random", seed=0)
    assert [s.key for s in random] == ["chest", "air"]
    with pytest.raises(InputError, match="study 'mri'"):
        score_studies(detector_folder, [("mri", make_brain_mri(1, shape=SHAPE)[0])])
    with pytest.raises(ActiveLearningInputError, match="a nodule-detection model has none"):
        score_studies(detector_folder, studies, mc_samples=3, labeled_counts={1: 2})
    # a labelled CT is embedded by the same U-Net: the chest study's own copy is at distance 0
    labelled = _by_key(
        score_studies(detector_folder, studies[:1], mc_samples=3, seed=1, labeled=[("copy", ct)])
    )
    assert labelled["chest"].components["min_cosine_distance"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(InputError, match="labelled study 'mri'"):
        score_studies(
            detector_folder, studies, labeled=[("mri", make_brain_mri(1, shape=SHAPE)[0])]
        )


# ---------------------------------------------------------------- CLI


def test_cli_scores_a_datalist_end_to_end(grading, capsys):
    out = grading["root"] / "ranking.json"
    argv = ["active-learning", "score", "--model", str(grading["model"]), "--data",
            str(grading["datalist"]), "--split", "testing", "--out", str(out), "--quiet"]  # fmt: skip
    assert main([*argv, "--strategy", "uncertainty", "--mc-samples", "4"]) == 0
    result = json.loads(out.read_text())
    assert result["task"] == "tumor-grading" and result["n"] == 3
    assert [r["rank"] for r in result["ranking"]] == [1, 2, 3]
    assert {r["key"] for r in result["ranking"]} == {f"study-{s}" for s in POOL_SEEDS}
    assert all("entropy" in r["components"] for r in result["ranking"])
    assert result["params"]["diversity_weight"] == DEFAULT_DIVERSITY_WEIGHT
    assert "wrote" in capsys.readouterr().out
    assert main([*argv, "--strategy", "random", "--split", "all"]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 12 and result["strategy"] == "random"
    keys = [r["key"] for r in result["ranking"]]
    assert len(set(keys)) == 12 and "case300" in keys  # items without a key: their folder


@pytest.fixture(scope="module")
def cli_bad(grading, tmp_path_factory) -> dict:
    bad = tmp_path_factory.mktemp("al_bad")
    (bad / "empty.json").write_text(json.dumps({"training": [], "testing": []}))
    (bad / "no_testing.json").write_text(
        json.dumps({"training": [_mri_item(str(grading["root"] / "case300"))]})
    )
    write_chest_ct(bad / "ct", 5, shape=(64, 64, 16))
    (bad / "ct.json").write_text(json.dumps({"testing": [{"image": "ct"}]}))
    return {"bad": bad, "model": str(grading["model"]), "datalist": str(grading["datalist"])}


BAD_CLI = [
    # (name, argv builder, message fragment): each exits 2 and writes no ranking
    ("model folder missing", lambda p: ["--model", str(p["bad"] / "nope"), "--data", p["datalist"]], "model folder not found"),
    ("unknown strategy", lambda p: ["--model", p["model"], "--data", p["datalist"], "--strategy", "margin"], "--strategy 'margin': choose one of uncertainty, random"),
    ("datalist with no items", lambda p: ["--model", p["model"], "--data", str(p["bad"] / "empty.json")], "holds no items"),
    ("empty split", lambda p: ["--model", p["model"], "--data", str(p["bad"] / "no_testing.json"), "--split", "testing"], "has no items in split 'testing'"),
    ("CT items for a grading model", lambda p: ["--model", p["model"], "--data", str(p["bad"] / "ct.json")], "a tumor-grading model scores MRI items"),
    ("datalist missing", lambda p: ["--model", p["model"], "--data", str(p["bad"] / "none.json")], "does not exist"),
    ("one MC sample", lambda p: ["--model", p["model"], "--data", p["datalist"], "--mc-samples", "1"], "mc_samples must be an integer >= 2"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "argv", "message"), BAD_CLI, ids=[c[0] for c in BAD_CLI])
def test_cli_bad_input_exits_2_with_a_message(cli_bad, capsys, name, argv, message):
    out = cli_bad["bad"] / f"{name.replace(' ', '_')}.json"
    code = main(["active-learning", "score", *argv(cli_bad), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, (name, err)
    assert err.startswith("error: ") and message in err, err
    assert not out.exists()


# ---------------------------------------------------------------- benchmark read-outs


def _bench():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "bench" / "bench_active_learning.py"
    spec = importlib.util.spec_from_file_location("bench_active_learning", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_crossings_interpolate_and_the_ratio_interval_brackets_the_ratio():
    bench = _bench()
    counts, values = [6, 9, 12, 15], [0.4, 0.8, 0.9, 0.95]
    assert bench.labels_needed(list(zip(counts, values, strict=True)), 0.85, 48) == 12
    assert bench.labels_needed(list(zip(counts, values, strict=True)), 0.99, 48) == 48
    # a curve that never reaches the target counts as the next round (a lower bound), capped
    # at the pool
    ns = argparse.Namespace
    by_key = {"a": {"label": 0}, "b": {"label": 2}, "c": {"label": 0}}
    assert bench.grade_counts(["a", "b", "c"], by_key) == {1: 2, 2: 0, 3: 1}
    assert bench.censored_as(ns(pool=48, budget=30, k=1)) == 31
    assert bench.censored_as(ns(pool=48, budget=48, k=3)) == 48
    assert bench.censored_as(ns(pool=48, budget=45, k=3)) == 48
    assert bench._interpolated_crossing(counts, values, 0.85) == pytest.approx(10.5)
    assert bench._interpolated_crossing(counts, values, 0.3) == 6.0
    assert bench._interpolated_crossing(counts, values, 0.99) is None
    lo, hi = bench._ratio_interval([9, 12, 15, 12], [15, 18, 12, 21])
    assert lo <= np.mean([9, 12, 15, 12]) / np.mean([15, 18, 12, 21]) <= hi
    assert bench._ratio_interval([10, 10], [20, 20]) == (0.5, 0.5)


def test_cold_start_bench_prints_where_each_queue_reaches_a_missing_grade(monkeypatch, capsys):
    """bench/bench_al_cold_start.py: per seed, the rank of the first study of a grade the
    initial labels lack in each queue (random: the expected rank), the ordinal queue only for
    starts with grades 1 and 2; bad --seeds exit 2 with the reason. Seed 1 of a pool of 8
    starts with grades 1, 2, 2 and leaves one grade-3 study among the 5 unlabelled (expected
    random rank 3.0); seed 11 starts with three grade-1 labels."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "bench" / "bench_al_cold_start.py"
    spec = importlib.util.spec_from_file_location("bench_al_cold_start", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.parse_seeds("3,5-7") == [3, 5, 6, 7]
    for bad in ("", "7-5", "3,3", "x"):
        with pytest.raises(ValueError):
            module.parse_seeds(bad)
    argv = ["bench_al_cold_start.py", "--seeds", "1,11", "--pool", "8", "--init-steps", "2",
            "--mc-samples", "2"]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    assert module.main() == 0
    lines = {line.split(":")[0]: line for line in capsys.readouterr().out.splitlines()}
    one = lines["seed 1 start [1, 2]"]
    assert "random 3.0" in one and "ordinal" in one
    ranks = [int(w) for q in ("entropy", "network", "intensity", "ordinal")
             for w in [one.split(f"{q} ")[1].split()[0]]]  # fmt: skip
    assert all(1 <= r <= 5 for r in ranks)
    assert "ordinal" not in lines["seed 11 start [1]"]
    monkeypatch.setattr("sys.argv", ["bench_al_cold_start.py", "--seeds", "9-3"])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 2 and "bad seed range '9-3'" in capsys.readouterr().err


def _bench_run(tmp_path, name, seeds, **changed):
    """A results.json as the bench writes it (only what the report reads), for `--merge`."""
    args = {"pool": 48, "test": 300, "init": 6, "k": 3, "budget": 12, "eval_set": "test",
            "shape": "32,32,32", "spatial_size": "24,24,24", "block_inplanes": "8,16,32,32",
            "init_steps": 100, "round_steps": 40, "from_scratch": False, "steps_per_epoch": 20,
            "batch_size": 8, "lr": 3e-3, "ft_lr": 3e-3, "focal_gamma": 2.0, "mc_samples": 8,
            "diversity": None, "variants": [], "variants_only": False, **changed}  # fmt: skip
    results = []
    for seed in seeds:
        unc = [[6, 0.5], [9, 0.9], [12, 0.95]]
        rnd = [[6, 0.5], [9, 0.6], [12, 0.95]]
        results.append(
            {"seed": seed, "full_f1": 0.95, "target": 0.9025, "full_curve": [[12, 0.95]],
             "curves": {"uncertainty": unc, "random": rnd},
             "labels_needed": {"uncertainty": 9, "random": 12},
             "curve_mean_f1": {"uncertainty": 0.78, "random": 0.68},
             "acquired": {s: {"grades": [5, 3, 1], "same_patient": 0, "degraded": 0}
                          for s in ("uncertainty", "random")},
             "signals": []})  # fmt: skip
    path = tmp_path / name / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"args": args, "results": {"clinical": results}}))
    return str(path)


def test_bench_merge_reports_the_seeds_of_several_runs_together(tmp_path, capsys):
    """Runs of other seeds (one per core) are reported as one: their seeds together, the
    ratio over all of them. Runs that differ in a setting that changes the figures, share a
    seed, or a missing file, are refused with exit 2."""
    bench = _bench()
    a = _bench_run(tmp_path, "a", [0, 1])
    b = _bench_run(tmp_path, "b", [2])
    assert bench.merge_reports([a, b]) == 0
    out = capsys.readouterr().out
    assert "seeds clinical [0, 1, 2]" in out
    assert "over 3 seeds" in out and "ratio uncertainty/random = 0.75" in out
    other_k = _bench_run(tmp_path, "c", [3], k=1)
    same_seed = _bench_run(tmp_path, "d", [1])
    for paths, message in (
        ([a, other_k], "differs from"),
        ([a, same_seed], "share seeds"),
        ([a, str(tmp_path / "nope.json")], "no such results file"),
    ):
        assert bench.merge_reports(paths) == 2
        assert message in capsys.readouterr().err


def test_bench_report_counts_the_seeds_that_never_reach_the_target(tmp_path, capsys):
    """A seed whose curve stays below 95% within the budget counts as the next round (budget
    12 + k 3 = 15, a lower bound) and the report says how many seeds that was."""
    bench = _bench()
    path = Path(_bench_run(tmp_path, "a", [0, 1]))
    run = json.loads(path.read_text())
    late = run["results"]["clinical"][1]
    late["curves"]["random"] = [[6, 0.5], [9, 0.6], [12, 0.8]]
    late["labels_needed"]["random"] = bench.censored_as(argparse.Namespace(**run["args"]))
    path.write_text(json.dumps(run))
    assert bench.merge_reports([str(path)]) == 0
    out = capsys.readouterr().out
    assert "never within the budget (12), counted as 15: uncertainty 0 seeds, random 1 seeds" in out
    assert ">12" in out and "ratio uncertainty/random = 0.67" in out


def test_bench_refuses_a_budget_beyond_the_pool(monkeypatch, capsys, tmp_path):
    """The default budget (30 labels) needs a pool of at least 30 studies: a smaller pool is
    refused before anything runs (exit 2, the rule in the message, nothing written)."""
    bench = _bench()
    out = tmp_path / "run"
    monkeypatch.setattr("sys.argv", ["bench_active_learning.py", "--pool", "20", "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        bench.main()
    assert exc.value.code == 2
    assert "need 0 < --init < --budget <= --pool" in capsys.readouterr().err
    assert not out.exists()


def test_bench_reference_report_measures_the_whole_pool_models_spread(capsys):
    """`--reference-only` reports, per seed, the first round within 95 % of the settled level
    (mean from round 5), the spread around it and the mean change between rounds, computed
    here by hand."""
    bench = _bench()
    f1 = [0.5, 0.8, 0.92, 0.9, 0.9, 1.0, 0.8, 0.9]
    results = [{"seed": 7, "full_curve": [[4 + i, v] for i, v in enumerate(f1)]}]
    args = argparse.Namespace(ft_lr=1e-3, round_steps=40)
    summary = bench.reference_report("clinical", results, args)
    (row,) = summary["seeds"]
    assert row["level"] == pytest.approx(0.9)  # mean of 0.9, 1.0, 0.8, 0.9
    assert row["first_round"] == 3  # 0.92 >= 0.95 * 0.9 = 0.855; 0.8 is not
    assert row["sd"] == pytest.approx(np.std([0.9, 1.0, 0.8, 0.9]))
    assert row["step"] == pytest.approx((0.1 + 0.2 + 0.1) / 3)
    assert row["min"] == pytest.approx(0.8)
    assert summary["mean"]["sd"] == pytest.approx(row["sd"])
    assert "seed 7: within 95 % of its level at round 3" in capsys.readouterr().out


BAD_REFERENCE_ONLY = [
    # (flags besides --reference-only, message fragment)
    (["--from-scratch"], "drop --from-scratch"),
    (["--variants", "tta-16"], "drop --variants and --variants-only"),
    (["--variants-only"], "drop --variants and --variants-only"),
    (["--budget", "8"], "needs at least 6 rounds (its spread is measured from round 5); "
                        "--budget 8, --init 3 and --k 1 give 5"),
]  # fmt: skip


@pytest.mark.parametrize(("flags", "message"), BAD_REFERENCE_ONLY, ids=lambda v: str(v))
def test_bench_reference_only_refuses_flags_it_cannot_honour(
    monkeypatch, capsys, tmp_path, flags, message
):
    """The whole-pool model's round-to-round spread is a property of the warm-start schedule,
    measured without strategies from round 5 on: `--from-scratch`, strategy variants and a
    budget of too few rounds are refused before anything runs (exit 2, nothing written)."""
    bench = _bench()
    out = tmp_path / "run"
    argv = ["bench_active_learning.py", "--reference-only", *flags, "--out", str(out)]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exc:
        bench.main()
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bench_merge_of_reference_only_runs_reports_the_whole_pool_model(tmp_path, capsys):
    """`--merge` of `--reference-only` runs prints their steadiness report over all their seeds
    (not the strategies' report), and refuses to merge one with a run of the strategies."""
    bench = _bench()
    curve = [[4 + i, v] for i, v in enumerate([0.5, 0.8, 0.92, 0.9, 0.9, 1.0, 0.8, 0.9])]
    paths = []
    for name, seed in (("r0", 0), ("r1", 1)):
        path = Path(_bench_run(tmp_path, name, [seed], reference_only=True))
        run = json.loads(path.read_text())
        for result in run["results"]["clinical"]:
            result["full_curve"] = curve
        path.write_text(json.dumps(run))
        paths.append(str(path))
    assert bench.merge_reports(paths) == 0
    out = capsys.readouterr().out
    assert "seed 0: within 95 % of its level at round 3" in out
    assert "mean over 2 seeds: round 3.0, level 0.900" in out
    assert "ratio uncertainty/random" not in out
    strategies = _bench_run(tmp_path, "s", [2])
    assert bench.merge_reports([paths[0], strategies]) == 2
    assert "differs from" in capsys.readouterr().err


def test_bench_merge_reads_results_written_before_reference_only_existed(tmp_path, capsys):
    """A results.json without the `reference_only` or `head_dropout` flag (written before they
    existed) merges with one that has them at their defaults: such a run had no
    reference-only mode and a network without dropout. A run whose network trained with
    dropout measures another network and is refused."""
    bench = _bench()
    old = _bench_run(tmp_path, "old", [0])
    new = _bench_run(tmp_path, "new", [1], reference_only=False, head_dropout=0.0)
    assert bench.merge_reports([old, new]) == 0
    assert "ratio uncertainty/random" in capsys.readouterr().out
    dropout = _bench_run(tmp_path, "dropout", [2], head_dropout=0.2)
    assert bench.merge_reports([old, dropout]) == 2
    assert "differs from" in (err := capsys.readouterr().err) and "head_dropout" in err


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_bench_refuses_a_head_dropout_outside_0_1(monkeypatch, capsys, tmp_path, value):
    """`--head-dropout` outside [0, 1) is refused before anything runs (exit 2, nothing
    written)."""
    bench = _bench()
    out = tmp_path / "run"
    argv = ["bench_active_learning.py", "--head-dropout", value, "--out", str(out)]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exc:
        bench.main()
    assert exc.value.code == 2
    assert f"--head-dropout must be in [0, 1), got {float(value)}" in capsys.readouterr().err
    assert not out.exists()


def test_bench_checkpoint_ensemble_ranks_by_the_entropy_of_the_models_mixture(grading):
    """`snapshots-3` scores with the previous rounds' models too and ranks by the entropy of
    the mean of their MC-mean probabilities. With the same model as its own predecessor the
    mixture is that model's distribution, so the entropy is the model's own (the components
    carry 4 digits), and the queue follows the re-computed u."""
    bench = _bench()
    studies = _training_like()[:4]
    ranking = score_studies(grading["model"], studies, mc_samples=2, seed=3)
    args = argparse.Namespace(mc_samples=2)
    reranked = bench.snapshot_rerank(ranking, [grading["model"]], studies, args, seed=3)
    assert sorted(s.key for s in reranked) == sorted(k for k, _ in studies)
    for s in reranked:
        assert s.components["snapshot_entropy"] == pytest.approx(s.components["entropy"], abs=1e-3)
    u = [s.components["snapshot_uncertainty"] for s in reranked]
    assert u == sorted(u, reverse=True)
    assert set(bench.SNAPSHOTS) <= set(bench.VARIANTS)


def test_bench_grading_config_passes_the_head_dropout_to_the_network():
    """`--head-dropout` reaches the network every strategy trains (MC-dropout then samples
    it natively); 0 leaves the kwargs as runs before the flag had them."""
    bench = _bench()
    base = {"block_inplanes": "8,16,32,32", "spatial_size": "24,24,24"}
    with_dropout = bench.grading_config(argparse.Namespace(**base, head_dropout=0.2))
    assert with_dropout.build_kwargs()["head_dropout"] == 0.2
    net = build_network(with_dropout.network, **with_dropout.build_kwargs())
    with mc_dropout(net) as info:
        assert info.mode == "native" and info.p == [0.2]
    assert (
        "head_dropout"
        not in bench.grading_config(argparse.Namespace(**base, head_dropout=0.0)).build_kwargs()
    )


def test_bench_runs_end_to_end_with_the_checkpoint_ensemble(monkeypatch, tmp_path, capsys):
    """A tiny run of the whole bench: every strategy gets a curve point per round, the
    checkpoint ensemble scores with the one, then the two, previous rounds' models (kept
    until then and removed after), and no model folder is left behind."""
    bench = _bench()
    calls: list[int] = []
    real = bench.snapshot_rerank

    def spy(ranking, previous, *rest):
        calls.append(len(previous))
        assert all(folder.is_dir() for folder in previous)
        return real(ranking, previous, *rest)

    monkeypatch.setattr(bench, "snapshot_rerank", spy)
    out = tmp_path / "run"
    argv = ["bench_active_learning.py", "--settings", "clinical", "--seeds", "1", "--pool", "8",
            "--budget", "7", "--test", "6", "--init-steps", "2", "--round-steps", "2",
            "--steps-per-epoch", "2", "--batch-size", "4", "--mc-samples", "2",
            "--variants", "snapshots-3,bald", "--out", str(out)]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    assert bench.main() == 0
    (result,) = json.loads((out / "results.json").read_text())["results"]["clinical"]
    assert set(result["curves"]) == {
        "uncertainty", "random", "uncertainty-snapshots-3", "uncertainty-bald"
    }  # fmt: skip
    assert all([n for n, _ in c] == [3, 4, 5, 6, 7] for c in result["curves"].values())
    assert calls == [1, 2, 2]  # rounds 2, 3, 4: the previous one, then the previous two
    assert not list(out.rglob("round*"))
    assert "== clinical pool ==" in capsys.readouterr().out


@pytest.mark.parametrize(
    "value, message",
    [("1,1", "distinct seeds >= 0, got [1, 1]"), ("-1", "distinct seeds >= 0, got [-1]"),
     ("a", "comma-separated integers, got 'a'")],
)  # fmt: skip
def test_bench_refuses_a_bad_seed_list(monkeypatch, capsys, tmp_path, value, message):
    """`--seed-list` with a repeated, negative or non-integer seed is refused before anything
    runs (exit 2, nothing written)."""
    bench = _bench()
    out = tmp_path / "run"
    monkeypatch.setattr(
        "sys.argv", ["bench_active_learning.py", "--seed-list", value, "--out", str(out)]
    )
    with pytest.raises(SystemExit) as exc:
        bench.main()
    assert exc.value.code == 2
    assert f"--seed-list: {message}" in capsys.readouterr().err
    assert not out.exists()


def test_bench_default_is_a_cold_start_while_the_labels_lack_a_grade(monkeypatch, tmp_path):
    """The bench's model folders record the grades they were trained on, so its default
    "uncertainty" is the library's: while the labelled studies lack one of the three grades
    the bench passes them (as the registry does) and the queue is the cold start's k-center
    order; once they hold every grade, the plain order without them. `no-cold-start` never
    is one, and `one-grade-cold-start` (the default before session 23) only while they hold a
    single grade. Seed 11 of a pool of 8 starts with three grade-1 labels and seed 1 with
    grades 1, 2, 2 (its pool holds one grade-3 study); `--seed-list` runs them."""
    bench = _bench()
    calls: list[tuple[str, bool, bool | None, int]] = []
    spaces: dict[str, set] = {}
    real_score = bench.score_studies

    def score_spy(folder, studies, **kwargs):
        ranking = real_score(folder, studies, **kwargs)
        counts = read_manifest(folder)["made_by_params"]["label_counts"]
        grades = sum(n > 0 for n in counts.values())
        cold = ranking[0].components.get("cold_start")
        calls.append((folder.parent.name, "labeled" in kwargs, cold, grades))
        spaces.setdefault(folder.parent.name, set()).add(
            ranking[0].components.get("cold_start_space")
        )
        return ranking

    monkeypatch.setattr(bench, "score_studies", score_spy)
    out = tmp_path / "run"
    argv = ["bench_active_learning.py", "--settings", "clinical", "--seed-list", "11,1", "--pool",
            "8", "--budget", "8", "--test", "6", "--init-steps", "2", "--round-steps", "2",
            "--steps-per-epoch", "2", "--batch-size", "4", "--mc-samples", "2",
            "--variants", "no-cold-start,one-grade-cold-start,network-cold-start",
            "--out", str(out)]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    assert bench.main() == 0
    results = json.loads((out / "results.json").read_text())["results"]["clinical"]
    assert [r["seed"] for r in results] == [11, 1]
    default = [c[1:] for c in calls if c[0] == "uncertainty"]
    assert len(default) == 10 and default[0] == (True, True, 1)
    assert {grades for _, _, grades in default} >= {1, 2, 3}
    assert all(labeled == cold == (grades < 3) for labeled, cold, grades in default)
    off = [c[1:] for c in calls if c[0] == "uncertainty-no-cold-start"]
    assert len(off) == 10 and all(cold is False for _, cold, _ in off)
    one = [c[1:] for c in calls if c[0] == "uncertainty-one-grade-cold-start"]
    assert len(one) == 10 and {grades for _, _, grades in one} >= {1, 2}
    assert all(cold == (grades < 2) for _, cold, grades in one)
    assert all(cold is None for name, _, cold, _ in calls if name == "random")
    # the default before session 28: the same cold start, its distances between the
    # network's features (the default's are between intensity descriptors)
    network = [c[1:] for c in calls if c[0] == "uncertainty-network-cold-start"]
    assert len(network) == 10 and {grades for _, _, grades in network} >= {1, 2}
    assert all(labeled == cold == (grades < 3) for labeled, cold, grades in network)
    assert spaces["uncertainty-network-cold-start"] - {None} == {"network"}
    assert spaces["uncertainty"] - {None} == {"intensity"}
