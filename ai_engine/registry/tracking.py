"""Optional MLflow logging of platform training runs; the registry stays the source of truth.

When the setting `MLFLOW_TRACKING_URI` is set and mlflow is installed (the `mlflow` extra,
`mlflow-skinny`), `training_run` logs each run to the experiment `<project>/<task>`:
parameters (task, network configuration, how it was trained, data snapshot hash), the
per-epoch curves from the model folder's `log*.jsonl` files, the final validation metrics,
and the model folder's files (`model.json`, component files, logs) as artifacts under
`model/`. Once the version is registered the run gets its id (`model_version_id` parameter,
`platform.model_version_id` tag) and the version gets the run id (`mlflow_run_id`).

MLflow is never allowed to fail a training job: any error (server down, bad URI, refused
write) is logged and returned as text, which `training_run` adds to the job's message.
Without the URI or without mlflow nothing is logged and nothing else changes. The client
is `MlflowClient(tracking_uri=...)`, not mlflow's process-global fluent API.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from ai_engine.registry.models import DataSnapshot, Job, ModelVersion

logger = logging.getLogger(__name__)

#: Bounds on MLflow's HTTP retries: its defaults (7 retries, exponential backoff, 120 s
#: timeout) hold a finished training job for about 4 minutes when the server is down.
#: Set in the environment only where the operator did not set them.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
#: MLflow's limits: entities per `log_batch` call, characters per parameter value.
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
PARAM_MAX_CHARS = 500
MANIFEST = "model.json"  # ai_engine.modelfolder.MANIFEST (not imported: it loads torch)
_KEY_UNSAFE = re.compile(r"[^\w\-. /]")


@dataclass(frozen=True)
class RunLog:
    """What logging a training run gave: the MLflow run id, or why it failed ("" if it didn't)."""

    run_id: str = ""
    error: str = ""


def tracking_uri() -> str:
    return str(getattr(settings, "MLFLOW_TRACKING_URI", "") or "")


def _enabled() -> bool:
    """Whether runs are logged: a tracking URI is set and mlflow can be imported."""
    if not tracking_uri():
        return False
    try:
        import mlflow  # noqa: F401 - optional dependency, imported only when configured
    except ImportError:
        logger.warning(
            "MLFLOW_TRACKING_URI is set but mlflow is not installed "
            "(pip install 'imaging-platform[mlflow]'); training runs are not logged"
        )
        return False
    return True


def _client() -> MlflowClient:
    """A client for the configured URI (raises on a URI mlflow cannot use)."""
    from mlflow import MlflowClient

    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    return MlflowClient(tracking_uri=tracking_uri())


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:1000]}"


def _key(name: str) -> str:
    return _KEY_UNSAFE.sub("_", name)[:250]


def _flatten(value: Any, prefix: str, sep: str) -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf) pairs of nested mappings; lists and other leaves stay whole."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}{sep}{k}" if prefix else str(k), sep)
    else:
        yield prefix, value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _experiment_id(client: MlflowClient, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        found = client.get_experiment_by_name(name)  # created by another worker meanwhile
        if found is None:
            raise
        return found.experiment_id


def run_params(
    *, job: Job, snapshot: DataSnapshot, manifest: dict, extra: Mapping[str, Any]
) -> dict[str, str]:
    """The run's parameters: what was trained, on what data, with which network and settings."""
    params: dict[str, Any] = {
        "task": job.task,
        "project": job.project.slug,
        "job_id": job.pk,
        "data_snapshot_sha256": snapshot.sha256,
        "data_snapshot_items": snapshot.n_items,
        "data_snapshot_labels": snapshot.n_labels,
        "parent_model_version_id": job.model_version_id or "",
        **extra,
    }
    params.update(_flatten(job.params or {}, "job", "."))  # e.g. job.reason = labels
    for name, spec in (manifest.get("components") or {}).items():
        network = spec.get("network") or {}
        params[f"network.{name}"] = network.get("name", "")
        params.update(_flatten(network.get("kwargs") or {}, f"network.{name}", "."))
    params["made_by"] = manifest.get("made_by", "")
    params.update(_flatten(manifest.get("made_by_params") or {}, "made_by", "."))
    out = {}
    for key, value in params.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[_key(key)] = text[:PARAM_MAX_CHARS]
    return out


def epoch_metrics(model_dir: Path, manifest: dict) -> list[tuple[str, float, int]]:
    """(key, value, step) of the per-epoch curves in the folder's `log*.jsonl` files.

    Each line is one epoch of `ai_engine.training.Trainer` (`log.jsonl`): scalars become
    curves over epochs, `val` holds the validation figures (`val/<name>`), `step_losses`
    the loss of every optimizer step (`train_step_loss`, over steps). A detector's
    `log_candidates.jsonl` gives `candidates/...` and so on.
    """
    names = [n for n in manifest.get("files") or [] if n.startswith("log") and n.endswith(".jsonl")]
    out: list[tuple[str, float, int]] = []
    for name in sorted(names):
        stem = name.removesuffix(".jsonl").removeprefix("log").lstrip("_")
        prefix = f"{stem}/" if stem else ""
        path = model_dir / name
        if not path.is_file():
            continue
        for text in path.read_text().splitlines():
            if not text.strip():
                continue
            line = json.loads(text)
            epoch = int(line.get("epoch", 0))
            losses = line.get("step_losses") or []
            last_step = int(line.get("step", len(losses)))
            for k, loss in enumerate(losses):
                if (value := _number(loss)) is not None:
                    out.append((f"{prefix}train_step_loss", value, last_step - len(losses) + k + 1))
            for key, raw in _flatten(
                {k: v for k, v in line.items() if k not in ("epoch", "step_losses")}, "", "/"
            ):
                if (value := _number(raw)) is not None:
                    out.append((_key(f"{prefix}{key}"), value, epoch))
    return out


def final_metrics(metrics: Mapping[str, Any], champion: Mapping[str, float]) -> dict[str, float]:
    """The evaluation's numbers as `validation/<name>`, the champion's as `champion/<name>`."""
    out = {}
    for key, raw in _flatten(metrics, "validation", "/"):
        if (value := _number(raw)) is not None:
            out[_key(key)] = value
    for key, raw in champion.items():
        if (value := _number(raw)) is not None:
            out[_key(f"champion/{key}")] = value
    return out


def model_files(model_dir: Path, manifest: dict) -> list[Path]:
    """The folder's own files: the manifest, its components and the files it lists.

    Scratch the trainer leaves beside them (checkpoints, work folders) is not a model part.
    """
    names = [MANIFEST, *(c.get("file", "") for c in (manifest.get("components") or {}).values())]
    names += list(manifest.get("files") or [])
    return [model_dir / n for n in dict.fromkeys(names) if n and (model_dir / n).is_file()]


def training_run_log(
    *,
    job: Job,
    model_dir: Path,
    snapshot: DataSnapshot,
    metrics: Mapping[str, Any],
    metric_name: str,
    validation_set_hash: str,
    champion_metric: float | None,
    train_args: list[str],
) -> RunLog:
    """Log a finished training (before its version is registered); never raises.

    The run stays open: `training_run_finish` adds the registered version and closes it.
    """
    if not _enabled():
        return RunLog()
    client, run_id = None, ""
    try:
        from mlflow.entities import Metric, Param

        client = _client()

        model_dir = Path(model_dir)
        manifest = json.loads((model_dir / MANIFEST).read_text())
        experiment = _experiment_id(client, f"{job.project.slug}/{job.task}")
        tags = {
            "platform.project": job.project.slug,
            "platform.task": job.task,
            "platform.job_id": str(job.pk),
            "platform.data_snapshot": snapshot.sha256,
        }
        run_id = client.create_run(experiment, run_name=f"job-{job.pk}", tags=tags).info.run_id
        params = run_params(
            job=job,
            snapshot=snapshot,
            manifest=manifest,
            extra={
                "validation_metric": metric_name,
                "validation_set_hash": validation_set_hash,
                "train_args": " ".join(train_args),
            },
        )
        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), PARAMS_PER_BATCH):
            client.log_batch(run_id, params=items[start : start + PARAMS_PER_BATCH])
        now = int(time.time() * 1000)
        champion = {metric_name: champion_metric} if champion_metric is not None else {}
        points = [Metric(k, v, now, s) for k, v, s in epoch_metrics(model_dir, manifest)]
        points += [Metric(k, v, now, 0) for k, v in final_metrics(metrics, champion).items()]
        for start in range(0, len(points), METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=points[start : start + METRICS_PER_BATCH])
        for path in model_files(model_dir, manifest):
            client.log_artifact(run_id, str(path), artifact_path="model")
    except Exception as exc:  # any MLflow failure: it must never fail the training job
        error = _describe(exc)
        logger.warning("job %s: MLflow logging failed: %s", job.pk, error, exc_info=True)
        if client is not None and run_id:
            _terminate_quietly(client, run_id, "FAILED")
        return RunLog(error=error)
    return RunLog(run_id=run_id)


def training_run_finish(*, run_id: str, version: ModelVersion | None, error: str = "") -> str:
    """Tie the run to the registered version and close it; returns an error text or "".

    With `error` (registration failed) the run is closed as failed with that reason.
    """
    if not run_id or not _enabled():
        return ""
    try:
        from mlflow.entities import Param, RunTag

        client = _client()

        if error:
            client.set_tag(run_id, "platform.outcome", f"registration failed: {error}"[:5000])
            client.set_terminated(run_id, "FAILED")
            return ""
        if version is None or version.mlflow_run_id != run_id:
            # Cancelled before registration, or a redelivered run whose version another
            # attempt registered (with its own run): this run produced no version.
            client.set_tag(run_id, "platform.outcome", "not registered")
            client.set_terminated(run_id, "KILLED")
            return ""
        client.log_batch(
            run_id,
            params=[Param("model_version_id", str(version.pk))],
            tags=[
                RunTag("platform.model_version_id", str(version.pk)),
                RunTag("platform.model_version", f"v{version.version}"),
                RunTag("platform.status", version.status),
                RunTag("platform.outcome", "registered"),
            ],
        )
        client.set_terminated(run_id, "FINISHED")
    except Exception as exc:  # any MLflow failure: it must never fail the training job
        error = _describe(exc)
        logger.warning("MLflow run %s: finishing failed: %s", run_id, error, exc_info=True)
        return error
    return ""


def _terminate_quietly(client: MlflowClient, run_id: str, status: str) -> None:
    try:
        client.set_terminated(run_id, status)
    except Exception:  # best effort on a server that just failed
        logger.debug("MLflow run %s: could not mark it %s", run_id, status, exc_info=True)
