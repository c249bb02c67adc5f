"""Training from the platform's ground truth: snapshot, export, train (ai_engine CLI), register.

Ground truth comes from radiologists: accepted and corrected findings and added (missed)
findings. A run snapshots it (SHA-256 of the canonical JSON, recorded on the data
snapshot and thus on the new model version), retrieves the series from Orthanc into a
training folder as NIfTI, writes a datalist in the ai_engine CLI's format, trains through
`python -m ai_engine <group> train` in a subprocess (cancellable), then evaluates the new
model and the champion on the same validation split and registers the version through
the champion rule. MLflow gets parameters, curves, metrics and the model folder when the
setting `MLFLOW_TRACKING_URI` is set (`tracking.py`; its failures never fail the job).

Extra `train` arguments come from project admins (settings per task, a job's params), so
`train_args_problem` checks them against the task's own CLI parser, keeps the options the
platform sets for itself out, and confines paths to `settings.PRETRAINED_DIR`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from django.conf import settings

from ai_engine.registry import tracking
from ai_engine.registry.exceptions import (
    JobCancelled,
    NoTrainingData,
    TrainArgsRefused,
    TrainingConflict,
)
from ai_engine.registry.models import DataSnapshot, Job, ModelTask, ModelVersion
from ai_engine.registry.selectors import finding_kind_for

logger = logging.getLogger(__name__)

#: ai_engine CLI group and the metric the champion rule compares (higher is better).
CLI_GROUP = {ModelTask.NODULE_DETECTION: "detection", ModelTask.TUMOR_GRADING: "grading"}
VALIDATION_METRIC = {ModelTask.NODULE_DETECTION: "cpm", ModelTask.TUMOR_GRADING: "macro_f1"}
#: Extra CLI arguments per task, unless the project's settings (`train_args[task]`) or the
#: job (`params["train_args"]`) give others; `train_args_problem` checks those.
DEFAULT_TRAIN_ARGS: dict[str, list[str]] = {
    ModelTask.NODULE_DETECTION: [],
    ModelTask.TUMOR_GRADING: ["--quiet"],
}
#: The datalist option the platform passes to each task's `train`.
DATALIST_FLAG = {ModelTask.NODULE_DETECTION: "--data", ModelTask.TUMOR_GRADING: "--datalist"}
#: `train` options the platform sets itself (its datalist and model folder; every run starts
#: afresh), which train_args may not name.
PLATFORM_TRAIN_OPTIONS = ("data", "datalist", "out", "demo", "resume")
#: `train` options that name a file or folder on the server: only inside
#: `settings.PRETRAINED_DIR`, where the site's operators put weights, never elsewhere.
PATH_TRAIN_OPTIONS = ("pretrained", "init_weights", "candidates_from")
_UNSET = "\x00set-by-the-platform"
VALIDATION_EVERY = 4  # every 4th item (in hash order) is validation, at least one


def training_root() -> Path:
    return Path(
        getattr(settings, "TRAINING_DIR", Path(settings.MODEL_STORE_DIR).parent / "training")
    )


# -- ground truth ---------------------------------------------------------------------------


def ground_truth(*, project, task: str) -> tuple[list[dict[str, Any]], int]:
    """Labelled items (by series UID, no paths yet) and the number of labels they hold."""
    from annotations.models import AddedFinding, FindingFeedback, FindingKind, Verdict

    kind = finding_kind_for(task)
    feedback = (
        FindingFeedback.objects.filter(finding__project=project, finding__kind=kind)
        .select_related("finding__series", "finding__study")
        .order_by("updated_at", "pk")
    )
    added = AddedFinding.objects.filter(project=project, kind=kind).select_related(
        "series", "study"
    )
    labels = 0
    if kind == FindingKind.NODULE:
        by_series: dict[str, dict[int, dict]] = {}
        for fb in feedback:
            nodules = by_series.setdefault(fb.finding.series.series_instance_uid, {})
            labels += 1
            if fb.verdict == Verdict.REJECT:
                nodules.pop(fb.finding_id, None)
                continue
            finding = fb.finding
            nodules[fb.finding_id] = {
                "center_lps_mm": [
                    round(float(v), 3)
                    for v in (fb.corrected_center_lps_mm or finding.center_lps_mm)
                ],
                "diameter_mm": round(float(fb.corrected_diameter_mm or finding.diameter_mm), 3),
            }
        for item in added:
            labels += 1
            by_series.setdefault(item.series.series_instance_uid, {})[-item.pk] = {
                "center_lps_mm": [round(float(v), 3) for v in item.center_lps_mm],
                "diameter_mm": round(float(item.diameter_mm), 3),
            }
        items = [
            {"series": uid, "nodules": sorted(n.values(), key=json.dumps)}
            for uid, n in sorted(by_series.items())
        ]
    else:
        grades: dict[str, int] = {}
        for fb in feedback:
            if fb.verdict == Verdict.REJECT:
                continue
            labels += 1
            grades[fb.finding.study.study_instance_uid] = int(
                fb.corrected_grade or fb.finding.grade
            )
        for item in added.order_by("created_at", "pk"):
            labels += 1
            grades[item.study.study_instance_uid] = int(item.grade)
        items = [{"study": uid, "grade": g} for uid, g in sorted(grades.items())]
    return items, labels


def snapshot_hash(items: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()


def split_items(items: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """Deterministic split by hash of the item's key: (training, validation)."""

    def key(item: dict) -> str:
        return hashlib.sha256((item.get("series") or item.get("study")).encode()).hexdigest()

    ordered = sorted(items, key=key)
    validation = [
        it for i, it in enumerate(ordered) if i % VALIDATION_EVERY == VALIDATION_EVERY - 1
    ]
    if not validation and len(ordered) > 1:
        validation = [ordered[-1]]
    training = [it for it in ordered if it not in validation]
    return training, validation


# -- export -------------------------------------------------------------------------------


def export_datalist(
    *, project, task: str, items: list[dict], folder: Path, progress
) -> tuple[Path, str]:
    """Retrieve the items' series from Orthanc as NIfTI under `folder` and write `datalist.json`.

    Returns the datalist path and the hash of its validation split.
    """
    from ai_engine.io import save_nifti
    from ai_engine.io.dicom import MR_SEQUENCES
    from ai_engine.registry.inference import mr_series_for_grading
    from imaging.models import Series, Study
    from imaging.volumes import load_series_volume

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)

    def nifti_of(series) -> str:
        path = images / f"{series.series_instance_uid}.nii.gz"
        if not path.exists():  # a redelivered run reuses what it already exported
            tmp = path.with_name(f".tmp-{path.name}")
            save_nifti(load_series_volume(series), tmp)
            os.replace(tmp, path)
        return str(path.relative_to(folder))

    out: list[dict] = []
    for n, item in enumerate(items):
        progress(
            0.05 + 0.25 * n / max(len(items), 1), f"Exporting {n + 1}/{len(items)} from Orthanc"
        )
        if task == ModelTask.NODULE_DETECTION:
            series = Series.objects.get(series_instance_uid=item["series"], study__project=project)
            out.append(
                {"image": nifti_of(series), "nodules": item["nodules"], "_key": item["series"]}
            )
        else:
            study = Study.objects.get(study_instance_uid=item["study"], project=project)
            found = mr_series_for_grading(study)
            out.append(
                {
                    "images": {name: nifti_of(found[name]) for name in MR_SEQUENCES},
                    "grade": item["grade"],
                    "_key": item["study"],
                }
            )
    training, validation = split_items([{**it, "series": it["_key"]} for it in out])
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("_key", "series")} for r in rows]  # noqa: E731
    validation_hash = snapshot_hash([{"key": it["_key"]} for it in validation])
    datalist = folder / "datalist.json"
    datalist.write_text(
        json.dumps({"training": strip(training), "validation": strip(validation)}, indent=1)
    )
    return datalist, validation_hash


# -- train / evaluate ---------------------------------------------------------------------


def train_args_problem(task: str, train_args: Any) -> str | None:
    """Why `train_args` cannot be appended to the platform's `ai_engine <group> train` call
    for `task`, or None when it can: not a list of strings, an option the task's `train`
    does not take or a value it refuses (the CLI's own parser decides, abbreviations
    included), an option the platform sets itself, or a path outside `PRETRAINED_DIR`.

    A project admin sets these (project settings, training jobs): without the check
    `--out` would let one write a model folder anywhere the worker may write.
    """
    from ai_engine.cli import GROUPS

    if not isinstance(train_args, list) or not all(isinstance(a, str) for a in train_args):
        return "train_args must be a list of strings (CLI arguments)."
    group = CLI_GROUP[task]
    parser = importlib.import_module(GROUPS[group][0]).build_parser(f"ai_engine {group}")
    call = ["train", DATALIST_FLAG[task], _UNSET, "--out", _UNSET, *train_args]
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
            parsed = parser.parse_args(call)
    except SystemExit:
        lines = [ln for ln in said.getvalue().splitlines() if "error:" in ln]
        why = (
            lines[-1].split("error:", 1)[1].strip() if lines else "-h/--help is no training option"
        )
        return f"{group} train refuses {train_args}: {why}."
    owned = [
        name
        for name in PLATFORM_TRAIN_OPTIONS
        if getattr(parsed, name, None) not in (None, False, _UNSET)
    ]
    if owned:
        flags = ", ".join("--" + n.replace("_", "-") for n in owned)
        return (
            f"{flags}: set by the platform for every training run (its datalist and model "
            "folder; each run starts afresh)."
        )
    root = Path(settings.PRETRAINED_DIR).resolve()
    for name in PATH_TRAIN_OPTIONS:
        value = getattr(parsed, name, None)
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if not any(a == flag or a.startswith(flag + "=") for a in train_args):
            return f"write {flag} in full (its path is resolved in the pretrained folder)."
        path = (root / value).resolve()
        if not path.is_relative_to(root) or path == root:
            return (
                f"{flag} {value}: name a file or folder inside the pretrained folder (the "
                "server's PLATFORM_PRETRAINED_DIR); weights must lie inside it."
            )
        if not path.exists():
            return f"{flag} {value}: no such file or folder in the pretrained folder."
    return None


def train_args_by_task_problem(value: Any) -> str | None:
    """Why a project's `train_args` setting ({task: [argument, ...]}) is refused, or None."""
    if not isinstance(value, dict):
        return (
            "train_args must be an object of task -> arguments, "
            'e.g. {"tumor_grading": ["--epochs", "20"]}.'
        )
    unknown = sorted(set(value) - set(CLI_GROUP))
    if unknown:
        return f"train_args names unknown tasks {unknown}; tasks: {sorted(CLI_GROUP)}."
    problems = [
        f"{task}: {problem}"
        for task, args in value.items()
        if (problem := train_args_problem(task, args))
    ]
    return " ".join(problems) or None


def train_args_for(job: Job) -> list[str]:
    """The extra `train` arguments of a training job: its own (`params["train_args"]`), else
    the project's for its task, else the task's defaults; an empty list at either level
    means none. Checked again here (the API checked them when they were set, but settings
    may predate the check or be edited in the database): TrainArgsRefused."""
    from ai_engine.registry.services import ai_settings_for

    if "train_args" in job.params:
        train_args = job.params["train_args"]
    else:
        configured = ai_settings_for(project=job.project).train_args
        if not isinstance(configured, dict):
            raise TrainArgsRefused(train_args_by_task_problem(configured))
        train_args = configured.get(job.task, DEFAULT_TRAIN_ARGS[job.task])
    problem = train_args_problem(job.task, train_args)
    if problem:
        raise TrainArgsRefused(problem)
    return list(train_args)


def training_job_create(
    *, project, task: str, train_args: list[str] | None = None, created_by=None
) -> tuple[Job, bool]:
    """Queue a training run of `task` (one live run per project and task); returns (job,
    created). A live run with the same `train_args` (None: the settings' or defaults) is
    returned as it is; one with others raises TrainingConflict (409) rather than hand back
    a run that does not use what was asked. TrainArgsRefused (400) for bad `train_args`."""
    from ai_engine.registry.services import run_job_create

    if train_args is not None and (problem := train_args_problem(task, train_args)):
        raise TrainArgsRefused(problem)
    params = {} if train_args is None else {"train_args": train_args}
    job, created = run_job_create(
        project=project, kind=Job.Kind.TRAINING, task=task, created_by=created_by, params=params
    )
    live_args = job.params.get("train_args")
    if not created and live_args != train_args:
        raise TrainingConflict(
            f"A training run for {task} is already {job.status} (job {job.pk}) with "
            f"train_args {live_args}; wait for it or cancel it before starting one with "
            f"{train_args}.",
            extra={"job": job.pk},
        )
    return job, created


def resolved_train_args(train_args: list[str]) -> list[str]:
    """`train_args` (checked) with the path options' values made absolute inside
    `PRETRAINED_DIR`, as the CLI (run from BASE_DIR) needs them."""
    root = Path(settings.PRETRAINED_DIR).resolve()
    flags = {"--" + n.replace("_", "-") for n in PATH_TRAIN_OPTIONS}
    out, path_next = [], False
    for arg in train_args:
        if path_next:
            arg, path_next = str((root / arg).resolve()), False
        elif arg in flags:
            path_next = True
        elif "=" in arg and arg.split("=", 1)[0] in flags:
            flag, value = arg.split("=", 1)
            arg = f"{flag}={(root / value).resolve()}"
        out.append(arg)
    return out


def _run_cli(
    args: list[str],
    *,
    job_id: int,
    log_path: Path,
    progress_range: tuple[float, float],
    expected_s: float,
) -> None:
    """Run `python -m ai_engine ARGS`, polling for cancellation; raise on failure."""
    from ai_engine.registry.services import job_progress

    env = {**os.environ, "PYTHONPATH": str(Path(settings.BASE_DIR))}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ai_engine", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=settings.BASE_DIR,
        )
        started = time.monotonic()
        low, high = progress_range
        try:
            while process.poll() is None:
                time.sleep(0.5)
                fraction = min((time.monotonic() - started) / expected_s, 0.95)
                job_progress(
                    job_id=job_id,
                    progress=low + (high - low) * fraction,
                    message=f"ai_engine {args[0]} {args[1]}",
                )
        except JobCancelled:
            process.kill()
            process.wait()
            raise
    if process.returncode != 0:
        tail = log_path.read_text(errors="replace")[-800:]
        raise RuntimeError(
            f"`ai_engine {' '.join(args[:2])}` exited with {process.returncode}: {tail}"
        )


def evaluate(
    *, task: str, model_dir: str, datalist: Path, job_id: int, log_path: Path
) -> dict[str, Any]:
    """Metrics of a model folder on the datalist's validation split.

    Grading evaluates in-process (the worker has torch loaded already); other tasks go
    through the ai_engine CLI.
    """
    if task == ModelTask.TUMOR_GRADING:
        from ai_engine.data.datalist import load_datalist
        from ai_engine.grading.evaluate import evaluate_grading
        from ai_engine.grading.model import load_grading_model
        from ai_engine.grading.train import grading_items

        items = grading_items(load_datalist(datalist)["validation"], "validation")
        return evaluate_grading(load_grading_model(model_dir), items, pointing=False)
    out = Path(tempfile.mkdtemp(prefix="eval-", dir=datalist.parent)) / "METRICS.json"
    args = [
        CLI_GROUP[task],
        "evaluate",
        "--model",
        model_dir,
        "--datalist",
        str(datalist),
        "--split",
        "validation",
        "--out",
        str(out),
    ]
    if task == ModelTask.TUMOR_GRADING:
        args.append("--no-pointing-game")
    _run_cli(args, job_id=job_id, log_path=log_path, progress_range=(0.85, 0.95), expected_s=30)
    return json.loads(out.read_text())


def training_run(*, job: Job) -> ModelVersion:
    """The whole training job; raises JobCancelled on request, NoTrainingData without labels."""
    from ai_engine.registry.services import current_champion, job_progress, training_complete

    project, task = job.project, job.task
    train_args = train_args_for(job)
    job_progress(job_id=job.pk, progress=0.01, message="Snapshotting ground truth")
    items, n_labels = ground_truth(project=project, task=task)
    if len(items) < 2:
        raise NoTrainingData(
            f"{len(items)} labelled item(s) for {task}; training needs at least 2."
        )
    sha = snapshot_hash(items)
    folder = training_root() / project.slug / task / sha[:16]
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"job-{job.pk}.log"

    def progress(fraction: float, message: str) -> None:
        job_progress(job_id=job.pk, progress=fraction, message=message)

    datalist, validation_hash = export_datalist(
        project=project, task=task, items=items, folder=folder, progress=progress
    )
    snapshot, _ = DataSnapshot.objects.get_or_create(
        project=project,
        task=task,
        sha256=sha,
        defaults={"n_items": len(items), "n_labels": n_labels, "datalist_path": str(datalist)},
    )
    out_dir = folder / f"model-job-{job.pk}"
    shutil.rmtree(out_dir, ignore_errors=True)  # a redelivered run starts the training over
    _run_cli(
        [
            CLI_GROUP[task],
            "train",
            DATALIST_FLAG[task],
            str(datalist),
            "--out",
            str(out_dir),
            *resolved_train_args(train_args),
        ],
        job_id=job.pk,
        log_path=log_path,
        progress_range=(0.3, 0.8),
        expected_s=float(job.params.get("expected_s", 120)),
    )
    metric_name = VALIDATION_METRIC[task]
    metrics = evaluate(
        task=task, model_dir=str(out_dir), datalist=datalist, job_id=job.pk, log_path=log_path
    )
    champion = current_champion(project=project, task=task)
    champion_metric = None
    if champion is not None:
        champion_metrics = evaluate(
            task=task, model_dir=champion.path, datalist=datalist, job_id=job.pk, log_path=log_path
        )
        champion_metric = float(champion_metrics[metric_name])
    logged = tracking.training_run_log(
        job=job,
        model_dir=out_dir,
        snapshot=snapshot,
        metrics=metrics,
        metric_name=metric_name,
        validation_set_hash=validation_hash,
        champion_metric=champion_metric,
        train_args=train_args,
    )
    try:
        version = training_complete(
            job_id=job.pk,
            source_dir=out_dir,
            snapshot=snapshot,
            metrics=metrics,
            metric_name=metric_name,
            validation_set_hash=validation_hash,
            champion_metric=champion_metric,
            mlflow_run_id=logged.run_id,
        )
    except Exception as exc:
        tracking.training_run_finish(
            run_id=logged.run_id, version=None, error=f"{type(exc).__name__}: {exc}"
        )
        raise
    problem = logged.error or tracking.training_run_finish(run_id=logged.run_id, version=version)
    if problem and version is not None:
        _note_tracking_failure(job_id=job.pk, error=problem)
    return version


def _note_tracking_failure(*, job_id: int, error: str) -> None:
    """Say on the finished job that MLflow logging failed (the job itself succeeded)."""
    job = Job.objects.get(pk=job_id)
    note = f"MLflow logging failed (the registry has the version all the same): {error}"
    job.message = f"{job.message} {note}".strip()[:500]
    job.result = {**job.result, "mlflow_error": error}
    job.save(update_fields=["message", "result", "updated_at"])
