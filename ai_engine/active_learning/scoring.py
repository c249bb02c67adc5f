"""`score_studies`: rank unlabeled studies for labelling with a trained model folder.

Strategies:

* "uncertainty": per study, `mc_samples` MC-dropout passes (`ai_engine.active_learning.
  mc_dropout`) give the predictive entropy (the ranking signal), the mutual information
  (BALD) and for grading the margin of the two likeliest grades (both reported); with
  `tta`, flipped / intensity-shifted copies give the TTA variance. The study's uncertainty
  is `u = entropy` without TTA and `u = (entropy + min(c * tta_variance, 1)) / 2` with it
  (both terms in [0, 1]; c = `tta_weight`, default 4); with `labeled_counts` (grading,
  optional) it is multiplied by the class-balance weight of the study's predicted grades.
  The queue is then built greedily, trading `u` against the cosine distance of the
  network's penultimate features to the studies queued before and, when given, to the
  `labeled` studies (`ai_engine.active_learning.diversity`, weight `diversity_weight`,
  default 0: plain uncertainty order, which the active-learning benchmark measured best for
  labelling a few studies at a time; see docs/active_learning.md). *Cold start* (grading,
  `cold_start=True`, the default): a model whose folder records that its training set held
  no study of some grade (`made_by_params["label_counts"]`) has class probabilities that say
  nothing about where that grade is (it is as confident on it as on the grades it knows), so
  its queue is the k-center order instead, diversity weight 1: the study farthest from the
  `labeled` studies (and from those queued before it), until every grade has a label. The
  distances are taken between model-free descriptors of the images (`cold_start_space=
  "intensity"`, the default since session 28: `ai_engine.active_learning.descriptors`,
  percentiles of each sequence's intensities), which do not depend on what the few labels
  taught the network; "network" takes them between the network's penultimate features (the
  default before). Measured: docs/active_learning.md.
* "random": the baseline. Each study draws a seeded uniform number (seeded by `seed` and its
  key, so the draw does not depend on the input order) and studies are queued by it; the
  score is `(draw + 1) / 2` with foreground and `draw / 2` without.

In both, studies without foreground (no body / brain tissue; for detection also an empty
candidate map) go after every study with foreground: scanning air teaches nothing.

Tumor grading uses the model's own preprocessing (`ai_engine.grading.data.preprocess`) and
calibrated probabilities (its temperature); nodule detection uses `NoduleDetector`
(preprocessing, sliding-window U-Net on the body box) and measures the voxel-wise
uncertainty of the U-Net's foreground probability over the candidate region (voxels any
pass puts above the candidate threshold; the body when there is none).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai_engine.active_learning.descriptors import intensity_descriptor, standardized
from ai_engine.active_learning.diversity import (
    DEFAULT_DIVERSITY_WEIGHT,
    diverse_order,
    information_density,
)
from ai_engine.active_learning.foreground import (
    MIN_FOREGROUND_FRACTION,
    body_fraction,
    tissue_fraction,
)
from ai_engine.active_learning.mc_dropout import (
    DEFAULT_INJECTED_P,
    mc_dropout,
    penultimate_features,
)
from ai_engine.active_learning.uncertainty import (
    DEFAULT_TTA_WEIGHT,
    class_balance_weight,
    class_uncertainty,
    combined_uncertainty,
    tta_transforms,
    voxel_uncertainty,
)
from ai_engine.errors import AIEngineError, InputError, ModelFolderError
from ai_engine.io import Volume
from ai_engine.modelfolder import read_manifest
from ai_engine.training.reproducibility import derive_seed

__all__ = [
    "DEFAULT_DIVERSITY_WEIGHT",
    "STRATEGIES",
    "TASKS",
    "ActiveLearningInputError",
    "StudyScore",
    "score_studies",
]

STRATEGIES = ("uncertainty", "random")
#: what the cold start's k-center order measures distance in: the network's penultimate
#: features, or the model-free intensity descriptors of the images
COLD_START_SPACES = ("network", "intensity")
GRADING_TASK = "tumor-grading"
DETECTION_TASK = "nodule-detection"
TASKS = (DETECTION_TASK, GRADING_TASK)

Progress = Callable[[float, str], None]


class ActiveLearningInputError(InputError, ValueError):
    """Bad arguments to `score_studies` (unknown strategy, no studies, duplicate keys...)."""


@dataclass(frozen=True)
class StudyScore:
    """One study's place in the labelling queue.

    Attributes:
        key: the caller's id of the study (e.g. a StudyInstanceUID).
        score: ranking score, higher = label first (non-increasing down the queue).
        rank: 1 = label first.
        components: JSON-ready parts of the score (entropy, bald, tta_variance, uncertainty,
            diversity, foreground, ...).
    """

    key: str
    score: float
    rank: int
    components: dict = field(default_factory=dict)


@dataclass
class _Measure:
    key: str
    foreground: bool
    uncertainty: float = 0.0
    embedding: np.ndarray | None = None
    components: dict[str, Any] = field(default_factory=dict)
    descriptor: np.ndarray | None = None


def _batched(x: torch.Tensor, repeats: int) -> torch.Tensor:
    return x.expand(repeats, *x.shape[1:]).contiguous()


class _Scorer:
    """What the two tasks' scorers share: a study is embedded by the penultimate features of
    one deterministic pass (`_plain_pass`) on the model's own input (`_input`), the same
    features `measure` ranks diversity by."""

    def _input(self, volume: Volume) -> Any:
        raise NotImplementedError

    def _plain_pass(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def embed(self, volume: Volume) -> np.ndarray:
        """The network's penultimate features of a study (what `measure` embeds it by)."""
        return self._plain_pass(self._input(volume))[1]


class _GradingScorer(_Scorer):
    """Tumor grading: class distributions of a 4-channel MRI stack."""

    def __init__(self, model_dir: Path, device: str, need_network: bool) -> None:
        from ai_engine.grading.model import load_grading_model

        self.model = load_grading_model(model_dir, device=device)
        self.device = torch.device(device)
        self.network: torch.nn.Module | None = None
        if need_network:
            runner = self.model.runner
            if not isinstance(runner, torch.nn.Module) or isinstance(
                runner, torch.jit.ScriptModule
            ):
                raise ModelFolderError(
                    f"{model_dir} is a {self.model.folder.made_by} model without PyTorch weights; "
                    "MC-dropout needs the state dict: score with the folder it was derived from "
                    f"({(self.model.folder.manifest.get('parent') or {}).get('path', 'unknown')})"
                )
            self.network = runner

    def describe(self, volume: Volume) -> np.ndarray:
        """The study's model-free intensity descriptor, on the model's own input."""
        return self._descriptor(self._input(volume))

    @staticmethod
    def _descriptor(x: torch.Tensor) -> np.ndarray:
        try:
            return intensity_descriptor(x[0].numpy())
        except ValueError as exc:  # a non-finite image: the study's fault, named by the caller
            raise InputError(f"no intensity descriptor: {exc}") from exc

    def foreground(self, volume: Volume) -> tuple[bool, dict[str, Any]]:
        self._check(volume)
        fraction = tissue_fraction(volume.array)
        return fraction >= MIN_FOREGROUND_FRACTION, {"tissue_fraction": round(fraction, 4)}

    def _check(self, volume: Volume) -> None:
        channels = self.model.channels
        if volume.array.ndim != 4 or volume.array.shape[0] != len(channels):
            raise InputError(
                f"a grading study must be a ({len(channels)}, X, Y, Z) stack of "
                f"{', '.join(channels)}, got shape {volume.array.shape}"
            )

    def _probs(self, network: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            logits = network(x.to(self.device)).detach().cpu().numpy().astype(np.float64)
        return self.model.probabilities(logits)

    def _input(self, volume: Volume) -> torch.Tensor:
        """The study as the network's (1, C, X, Y, Z) input (the model's preprocessing)."""
        from ai_engine.grading.data import preprocess

        self._check(volume)
        study = preprocess(volume, self.model.spatial_size, self.model.channels)
        return torch.from_numpy(study.image)[None]

    def _plain_pass(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(class probabilities, penultimate features) of one deterministic pass."""
        assert self.network is not None
        with penultimate_features(self.network) as feats:
            base = self._probs(self.network, x)[0]
        return base, feats[-1][0].cpu().numpy()

    def measure(
        self,
        volume: Volume,
        mc_samples: int,
        tta: bool,
        injected_p: float,
        seed: int,
        labeled_counts: np.ndarray | None = None,
        tta_weight: float = DEFAULT_TTA_WEIGHT,
        describe: bool = False,
    ) -> tuple[dict[str, Any], np.ndarray, float, np.ndarray | None]:
        """(components, embedding, uncertainty, and with `describe` the intensity descriptor
        of the same preprocessed input)."""
        from ai_engine.grading.data import GRADES

        assert self.network is not None
        x = self._input(volume)
        net = self.network
        base, embedding = self._plain_pass(x)
        with torch.random.fork_rng(devices=[]), mc_dropout(net, injected_p) as info:
            torch.manual_seed(seed)
            samples = self._probs(net, _batched(x, mc_samples))
        unc = class_uncertainty(samples)
        comps: dict[str, Any] = {
            "entropy": unc["entropy"],
            "bald": unc["bald"],
            "margin": unc["margin"],
            "mc_mean_probabilities": {
                str(g): round(p, 4) for g, p in zip(GRADES, unc["mean_probabilities"], strict=True)
            },
            "predicted_grade": int(GRADES[int(np.argmax(base))]),
            "mc_dropout": info.describe(),
        }
        u = unc["entropy"]
        if tta:
            ops = tta_transforms(scale=0.1, shift=0.1)
            variants = torch.stack([op.forward(x[0]) for op in ops])
            probs = self._probs(net, variants)
            variance = float(probs.var(axis=0).mean())
            comps["tta_variance"] = variance
            comps["tta"] = [op.name for op in ops]
            u = combined_uncertainty(u, variance, tta_weight)
        if labeled_counts is not None:
            weight = class_balance_weight(np.asarray(unc["mean_probabilities"]), labeled_counts)
            comps["unweighted_uncertainty"] = u
            comps["class_balance_weight"] = weight
            u *= weight
        return comps, embedding, u, (self._descriptor(x) if describe else None)


class _DetectionScorer(_Scorer):
    """Nodule detection: voxel-wise foreground probability of the candidate U-Net."""

    def __init__(self, model_dir: Path, device: str) -> None:
        from ai_engine.detection.pipeline import NoduleDetector

        self.detector = NoduleDetector.from_model_folder(model_dir, device=device)
        self.config = self.detector.config

    def _input(self, volume: Volume) -> Any:
        """The CT as the detector's input (the model's preprocessing; not a CT: InputError)."""
        from ai_engine.detection.transforms import check_ct, input_errors_unwrapped

        check_ct(volume)
        with input_errors_unwrapped():
            return self.detector.preprocess(volume)

    def _candidates(self, image: Any, prob: np.ndarray) -> int:
        from ai_engine.detection.candidates import extract_candidates

        spacing = np.linalg.norm(np.asarray(image.affine, dtype=np.float64)[:3, :3], axis=0)
        cands, _ = extract_candidates(
            prob, spacing, self.config.candidate_threshold, self.config.min_candidate_voxels
        )
        return len(cands)

    def foreground(self, volume: Volume) -> tuple[bool, dict[str, Any]]:
        image = self._input(volume)
        fraction = body_fraction(volume.array, self.config.body_threshold_hu)
        n_cands = self._candidates(image, self.detector.probability(image)) if fraction else 0
        comps = {"body_fraction": round(fraction, 4), "candidates": n_cands}
        return fraction >= MIN_FOREGROUND_FRACTION and n_cands > 0, comps

    def _plain_pass(self, image: Any) -> tuple[np.ndarray, np.ndarray]:
        """(foreground probability, penultimate features averaged over the sliding windows:
        one study embedding) of one deterministic pass."""
        with penultimate_features(self.detector.unet) as feats:
            prob = self.detector.probability(image)
        return prob, torch.cat(feats).mean(dim=0).cpu().numpy()

    def measure(
        self,
        volume: Volume,
        mc_samples: int,
        tta: bool,
        injected_p: float,
        seed: int,
        tta_weight: float = DEFAULT_TTA_WEIGHT,
    ) -> tuple[dict[str, Any], np.ndarray, float, bool, dict[str, Any]]:
        det = self.detector
        image = self._input(volume)
        plain = torch.as_tensor(image).as_subclass(torch.Tensor)
        base, embedding = self._plain_pass(image)
        with torch.random.fork_rng(devices=[]), mc_dropout(det.unet, injected_p) as info:
            torch.manual_seed(seed)
            samples = np.stack([det.probability(image) for _ in range(mc_samples)])
        thr = self.config.candidate_threshold
        region = (base >= thr) | (samples >= thr).any(axis=0)
        region_name = "candidates"
        if not region.any():
            lo, hi = self.config.hu_range
            region = plain[0].numpy() > (self.config.body_threshold_hu - lo) / (hi - lo)
            region_name = "body"
        unc = voxel_uncertainty(samples, region)
        comps: dict[str, Any] = {
            "entropy": unc["entropy"],
            "bald": unc["bald"],
            "region": region_name,
            "region_voxels": int(region.sum()),
            "mc_dropout": info.describe(),
        }
        u = unc["entropy"]
        if tta:
            outputs = [base]
            ops = tta_transforms(scale=0.05, shift=0.02)
            for op in ops[1:]:
                prob = det.probability(op.forward(plain))
                outputs.append(op.invert(torch.from_numpy(prob)[None])[0].numpy())
            stack = np.stack(outputs)
            variance = float(stack[:, region].var(axis=0).mean()) if region.any() else 0.0
            comps["tta_variance"] = variance
            comps["tta"] = [op.name for op in ops]
            u = combined_uncertainty(u, variance, tta_weight)
        fraction = body_fraction(volume.array, self.config.body_threshold_hu)
        n_cands = self._candidates(image, base)
        fg = {"body_fraction": round(fraction, 4), "candidates": n_cands}
        return comps, embedding, u, fraction >= MIN_FOREGROUND_FRACTION and n_cands > 0, fg


def missing_grades(model_dir: str | Path) -> list[str]:
    """The grades a grading folder's training set held no study of, as it records them
    (`made_by_params["label_counts"]`, and `postprocessing["grades"]` for the grades the model
    predicts): while any is missing the model is in a cold start, queued by distance
    (`score_studies`). Empty for a folder that does not record its counts (made before it
    did, exported, or detection)."""
    manifest = read_manifest(model_dir)
    counts = (manifest.get("made_by_params") or {}).get("label_counts")
    if manifest.get("task") != GRADING_TASK or not isinstance(counts, Mapping):
        return []
    recorded = {str(grade): n for grade, n in counts.items()}
    for grade in (manifest.get("postprocessing") or {}).get("grades") or []:
        recorded.setdefault(str(grade), 0)
    return [grade for grade, n in recorded.items() if not (isinstance(n, int) and n > 0)]


def _scorer(model_dir: Path, strategy: str, device: str) -> _GradingScorer | _DetectionScorer:
    task = read_manifest(model_dir).get("task", "")
    if task == GRADING_TASK:
        return _GradingScorer(model_dir, device, need_network=strategy == "uncertainty")
    if task == DETECTION_TASK:
        return _DetectionScorer(model_dir, device)
    raise ModelFolderError(
        f"{model_dir} is a {task or 'task-less'!r} model; active learning scores with a "
        f"{' or '.join(repr(t) for t in TASKS)} model folder"
    )


def _class_counts(
    scorer: _GradingScorer | _DetectionScorer, labeled_counts: Mapping[str | int, int] | None
) -> np.ndarray | None:
    """`labeled_counts` as an array in the model's grade order (None stays None)."""
    if labeled_counts is None:
        return None
    if isinstance(scorer, _DetectionScorer):
        raise ActiveLearningInputError(
            "labeled_counts weights the uncertainty by grade; a nodule-detection model has none"
        )
    from ai_engine.grading.data import GRADES

    if not isinstance(labeled_counts, Mapping):
        raise ActiveLearningInputError(
            f"labeled_counts must map grades to counts, got {type(labeled_counts).__name__}"
        )
    known = {str(g): i for i, g in enumerate(GRADES)}
    counts = np.zeros(len(GRADES))
    seen: set[str] = set()
    for grade, count in labeled_counts.items():
        if str(grade) not in known:
            raise ActiveLearningInputError(
                f"labeled_counts: unknown grade {grade!r}; the model grades {', '.join(known)}"
            )
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ActiveLearningInputError(
                f"labeled_counts: grade {grade} needs a count >= 0, got {count!r}"
            )
        if str(grade) in seen:
            raise ActiveLearningInputError(f"labeled_counts: grade {grade} is given twice")
        seen.add(str(grade))
        counts[known[str(grade)]] = count
    return counts


def _check_arguments(
    strategy: str,
    mc_samples: int,
    diversity_weight: float,
    p: float,
    tta_weight: float,
    density_weight: float,
) -> None:
    if strategy not in STRATEGIES:
        raise ActiveLearningInputError(
            f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}"
        )
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 2:
        raise ActiveLearningInputError(
            f"mc_samples must be an integer >= 2 (MC-dropout needs several passes), got {mc_samples!r}"
        )
    if not 0.0 <= float(diversity_weight) <= 1.0:
        raise ActiveLearningInputError(
            f"diversity_weight must be in [0, 1], got {diversity_weight!r}"
        )
    if not 0.0 < float(p) < 1.0:
        raise ActiveLearningInputError(f"injected_dropout must be in (0, 1), got {p!r}")
    for name, value in (("tta_weight", tta_weight), ("density_weight", density_weight)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (0.0 <= float(value) < float("inf"))
        ):
            raise ActiveLearningInputError(f"{name} must be a number >= 0, got {value!r}")


def score_studies(
    model_dir: str | Path,
    inputs: Iterable[tuple[str, Volume]],
    *,
    strategy: str = "uncertainty",
    mc_samples: int = 8,
    tta: bool = True,
    diversity_weight: float = DEFAULT_DIVERSITY_WEIGHT,
    seed: int = 0,
    progress: Progress | None = None,
    injected_dropout: float = DEFAULT_INJECTED_P,
    device: str = "cpu",
    total: int | None = None,
    labeled_counts: Mapping[str | int, int] | None = None,
    labeled: Iterable[tuple[str, Volume]] | None = None,
    tta_weight: float = DEFAULT_TTA_WEIGHT,
    density_weight: float = 0.0,
    cold_start: bool = True,
    cold_start_space: str = "intensity",
) -> list[StudyScore]:
    """Rank unlabeled studies for labelling (see the module docstring for the strategies).

    Args:
        model_dir: a model folder of task "tumor-grading" or "nodule-detection".
        inputs: (key, Volume) pairs, read one at a time (a generator that loads each study
            lazily keeps one study in memory). Grading: a (4, X, Y, Z) stack T1, T1c, T2,
            FLAIR on one grid; detection: a CT volume in HU.
        strategy: "uncertainty" or "random".
        mc_samples: MC-dropout passes per study (>= 2).
        tta: add the test-time-augmentation variance to the uncertainty.
        diversity_weight: w in [0, 1] of the greedy diversity trade-off (0, the default:
            uncertainty only; see `DEFAULT_DIVERSITY_WEIGHT`).
        seed: seeds the dropout masks (per study, from seed and key) and the random baseline.
        progress: called as `progress(fraction, message)` before each study; it may raise
            to cancel (the exception propagates, nothing is returned).
        injected_dropout: dropout probability injected in front of the head of a network
            that has no active dropout layer.
        device: where the networks run.
        total: number of studies, for progress fractions when `inputs` has no len().
        labeled_counts: grading only: how many labelled studies of each grade the model
            was trained on (`{grade: count}`, a grade left out counts 0). With it, a study's
            uncertainty is multiplied by `class_balance_weight`: the studies the model puts
            in the grades with the fewest labels come first among equally uncertain ones
            (components `class_balance_weight`, `unweighted_uncertainty`). The random
            baseline checks it and does not use it.
        labeled: optional (key, Volume) pairs of the studies already labelled (read one at
            a time, like `inputs`, and before them, so that a bad one fails before any
            scoring; `progress` is called at 0 before each). "uncertainty" embeds each (one
            forward pass) and the
            diversity term counts distances from them as from studies queued before: a
            study like a labelled one (a repeat scan of a labelled patient) moves down even
            at the head of the queue. Without a diversity weight they only set the reported
            `min_cosine_distance`. The random baseline ignores them.
        tta_weight: c in u = (entropy + min(c * tta_variance, 1)) / 2 (>= 0; default 4).
        density_weight: b >= 0: u is multiplied by the study's information density to the
            power b (`diversity.information_density`: its mean cosine similarity to the
            other studies with or without foreground, like it), so that an outlier of the
            pool moves down among equally uncertain studies (components `density`,
            `uncertainty_before_density`). 0, the default: plain uncertainty.
        cold_start: grading, "uncertainty": when the model's training set lacked a grade
            (`missing_grades`), rank by the k-center order from `labeled` (diversity weight
            1, whatever `diversity_weight` says) until it has seen every grade; component
            `cold_start`. False keeps the given weight.
        cold_start_space: what the cold start's distances are measured in: "intensity"
            (the default: `descriptors.intensity_descriptor` of each study and labelled
            study, standardised over them together) or "network" (the penultimate features);
            component `cold_start_space`.

    Returns:
        One `StudyScore` per study, sorted by rank (1 first).

    Raises:
        ActiveLearningInputError (an `InputError` and a `ValueError`): unknown strategy, bad
            numbers, no studies, duplicate keys (also a study both labelled and to score).
        ModelFolderError: missing folder, or a folder of another task (or, for "uncertainty"
            on grading, one without PyTorch weights).
        InputError: a study of the wrong kind (the message names its key).
    """
    _check_arguments(
        strategy, mc_samples, diversity_weight, injected_dropout, tta_weight, density_weight
    )
    if cold_start_space not in COLD_START_SPACES:
        raise ActiveLearningInputError(
            f"unknown cold_start_space {cold_start_space!r}; choose one of "
            f"{', '.join(COLD_START_SPACES)}"
        )
    model_dir = Path(model_dir)
    scorer = _scorer(model_dir, strategy, device)
    cold = (
        strategy == "uncertainty"
        and isinstance(scorer, _GradingScorer)
        and bool(cold_start)
        and bool(missing_grades(model_dir))
    )
    # the cold start's distances between model-free descriptors instead of network features
    describe = cold and cold_start_space == "intensity"
    counts = _class_counts(scorer, labeled_counts)  # checked for every strategy
    if strategy != "uncertainty":
        counts = None
    if total is None and hasattr(inputs, "__len__"):
        total = len(inputs)  # type: ignore[arg-type]
    # the labelled studies first: a bad one fails before hours of scoring, not after
    reference, labeled_keys = None, set()
    if labeled is not None and strategy == "uncertainty":
        reference, labeled_keys = _labeled_embeddings(scorer, labeled, progress, describe)
    measures: list[_Measure] = []
    seen: set[str] = set()
    for index, (key, volume) in enumerate(inputs):
        key = str(key)
        if key in labeled_keys:
            raise ActiveLearningInputError(
                f"study {key!r} is both labelled and to be scored: leave it out of one"
            )
        if progress is not None:
            fraction = index / total if total else 0.0
            progress(
                min(fraction, 1.0),
                f"Scoring study {index + 1}{f'/{total}' if total else ''}: {key}",
            )
        if key in seen:
            raise ActiveLearningInputError(f"study key {key!r} is given twice")
        seen.add(key)
        if not isinstance(volume, Volume):
            raise ActiveLearningInputError(
                f"study {key!r}: expected an ai_engine.io.Volume, got {type(volume).__name__}"
            )
        try:
            measure = _measure(
                scorer, key, volume, strategy, mc_samples, tta, injected_dropout, seed, counts,
                float(tta_weight), describe,
            )  # fmt: skip
        except AIEngineError as exc:
            raise type(exc)(f"study {key!r}: {exc}") from exc
        measures.append(measure)
    if not measures:
        raise ActiveLearningInputError("no studies to score: the input is empty")
    weight = 1.0 if cold else diversity_weight
    if strategy == "uncertainty" and isinstance(scorer, _GradingScorer):
        for m in measures:
            m.components["cold_start"] = cold
            if cold:
                m.components["cold_start_space"] = cold_start_space
    if describe:
        reference = _descriptor_space(measures, reference)
    ranked = _rank(measures, strategy, weight, seed, reference, float(density_weight))
    if progress is not None:
        progress(1.0, f"Ranked {len(ranked)} studies ({strategy})")
    return ranked


def _measure(
    scorer: _GradingScorer | _DetectionScorer,
    key: str,
    volume: Volume,
    strategy: str,
    mc_samples: int,
    tta: bool,
    injected_p: float,
    seed: int,
    labeled_counts: np.ndarray | None = None,
    tta_weight: float = DEFAULT_TTA_WEIGHT,
    describe: bool = False,
) -> _Measure:
    if strategy == "random":
        fg, comps = scorer.foreground(volume)
        return _Measure(key, fg, components=comps)
    study_seed = derive_seed(seed, "mc-dropout", key)
    descriptor = None
    if isinstance(scorer, _DetectionScorer):
        comps, emb, u, fg, fg_comps = scorer.measure(
            volume, mc_samples, tta, injected_p, study_seed, tta_weight
        )
    else:
        fg, fg_comps = scorer.foreground(volume)
        comps, emb, u, descriptor = scorer.measure(
            volume, mc_samples, tta, injected_p, study_seed, labeled_counts, tta_weight, describe
        )
    return _Measure(key, fg, u, emb, {**comps, **fg_comps}, descriptor)


def _descriptor_space(measures: list[_Measure], reference: np.ndarray | None) -> np.ndarray | None:
    """Put the studies' standardised intensity descriptors in place of their embeddings and
    return the labelled studies' (the `reference` given holds their raw descriptors)."""
    rows = [m.descriptor for m in measures]
    if reference is not None:
        rows += list(reference)
    space = standardized(np.stack(rows))
    for m, row in zip(measures, space[: len(measures)], strict=True):
        m.embedding = row
    return space[len(measures) :] if reference is not None else None


def _labeled_embeddings(
    scorer: _Scorer,
    labeled: Iterable[tuple[str, Volume]],
    progress: Progress | None,
    describe: bool = False,
) -> tuple[np.ndarray | None, set[str]]:
    """(m, d) embeddings of the labelled studies (None when there are none) and their keys;
    with `describe`, their intensity descriptors instead (grading). `progress` is called (at
    0: scoring has not started) before each, and may cancel."""
    rows: list[np.ndarray] = []
    seen: set[str] = set()
    for index, (key, volume) in enumerate(labeled):
        key = str(key)
        if progress is not None:
            progress(0.0, f"Embedding labelled study {index + 1}: {key}")
        if key in seen:
            raise ActiveLearningInputError(f"labelled study key {key!r} is given twice")
        seen.add(key)
        if not isinstance(volume, Volume):
            raise ActiveLearningInputError(
                f"labelled study {key!r}: expected an ai_engine.io.Volume, "
                f"got {type(volume).__name__}"
            )
        try:
            row = scorer.describe(volume) if describe else scorer.embed(volume)  # type: ignore[attr-defined]
            rows.append(np.asarray(row, dtype=np.float64))
        except AIEngineError as exc:
            raise type(exc)(f"labelled study {key!r}: {exc}") from exc
    return (np.stack(rows) if rows else None), seen


def _rank(
    measures: list[_Measure],
    strategy: str,
    diversity_weight: float,
    seed: int,
    reference: np.ndarray | None = None,
    density_weight: float = 0.0,
) -> list[StudyScore]:
    n = len(measures)
    if strategy == "random":
        draws = np.array(
            [np.random.default_rng(derive_seed(seed, "random", m.key)).random() for m in measures]
        )
        for m, draw in zip(measures, draws, strict=True):
            m.components["random_draw"] = float(draw)
        # foreground studies score in [0.5, 1), the others in [0, 0.5): they come last
        score = (draws + np.array([1.0 if m.foreground else 0.0 for m in measures])) / 2.0
        order = sorted(range(n), key=lambda i: (-score[i], i))
        ordered = [(i, float(score[i])) for i in order]
    else:
        # Studies with foreground first, each group ordered by uncertainty + diversity.
        ordered = []
        floor = np.inf
        for group_fg in (True, False):
            idx = [i for i, m in enumerate(measures) if m.foreground == group_fg]
            if not idx:
                continue
            u = np.array([measures[i].uncertainty for i in idx])
            emb = np.stack([np.asarray(measures[i].embedding, dtype=np.float64) for i in idx])
            density = information_density(emb) if density_weight > 0 else None
            unweighted = u
            if density is not None:
                u = u * density**density_weight
            result = diverse_order(u, emb, float(diversity_weight), reference)
            for j in result.order:
                m = measures[idx[j]]
                if density is not None:
                    m.components["density"] = float(density[j])
                    m.components["uncertainty_before_density"] = float(unweighted[j])
                m.components["uncertainty"] = float(u[j])
                m.components["diversity"] = float(result.diversity[j])
                dist = result.min_distance[j]
                m.components["min_cosine_distance"] = None if np.isnan(dist) else float(dist)
                # the greedy objective may rise after a pick changes the normalisation:
                # keep the published score non-increasing down the queue
                floor = min(floor, float(result.objective[j]))
                ordered.append((idx[j], floor))
    out = []
    for rank, (i, score) in enumerate(ordered, start=1):
        m = measures[i]
        comps = _jsonable({**m.components, "foreground": bool(m.foreground), "strategy": strategy})
        out.append(StudyScore(key=m.key, score=float(score), rank=rank, components=comps))
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
