"""Errors of the model registry and jobs (user-facing: each carries an HTTP status)."""

from __future__ import annotations

from rest_framework import status

from projects.exceptions import PlatformError


class RegistryError(PlatformError):
    """Base of registry and job errors."""


class InvalidTransition(RegistryError):
    """A job or model version cannot move to the requested state from where it is."""

    status_code = status.HTTP_409_CONFLICT
    code = "invalid_transition"


class NoChampion(RegistryError):
    """The project has no champion model for the task; train or promote one first."""

    status_code = status.HTTP_409_CONFLICT
    code = "no_champion"


class NotComparable(RegistryError):
    """Two versions' metrics were measured on different validation sets."""

    code = "not_comparable"


class ModelStoreConflict(RegistryError):
    """A version folder already exists in the model store; versions are never overwritten."""

    status_code = status.HTTP_409_CONFLICT
    code = "model_store_conflict"


class NoTrainingData(RegistryError):
    """There is no ground truth (accepted/corrected/added findings) to train on."""

    status_code = status.HTTP_409_CONFLICT
    code = "no_training_data"


class TrainArgsRefused(RegistryError):
    """Extra training arguments the platform cannot pass on (`training.train_args_problem`)."""

    status_code = status.HTTP_400_BAD_REQUEST
    code = "train_args_refused"


class TrainingConflict(RegistryError):
    """A training run of the task with other training arguments is already queued or running."""

    status_code = status.HTTP_409_CONFLICT
    code = "training_running"


class JobCancelled(Exception):
    """Raised inside a running job when its cancellation was requested (not user-facing)."""


class InferenceUnavailable(RegistryError):
    """The ai_engine predict function for a task is not installed or failed to load."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    code = "inference_unavailable"


class StudyNotReady(InferenceUnavailable):
    """The study lacks the series the task needs, maybe because ingest is still indexing it."""

    status_code = status.HTTP_409_CONFLICT
    code = "study_not_ready"
