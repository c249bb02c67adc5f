import logging

from django.apps import AppConfig

logger = logging.getLogger(__name__)


class RegistryConfig(AppConfig):
    """The Django side of ai_engine: model versions and jobs. The rest of ai_engine imports no Django."""

    name = "ai_engine.registry"
    label = "registry"
    verbose_name = "Model registry and jobs"

    def ready(self) -> None:
        from imaging.signals import study_indexed

        study_indexed.connect(
            queue_inference_for_indexed_study, dispatch_uid="registry.auto_inference"
        )


def queue_inference_for_indexed_study(sender, *, study, created: bool = False, **kwargs) -> None:
    """New or changed study: queue the project's fitting champions on it (idempotent)."""
    from ai_engine.registry.services import inference_queue_for_study

    try:
        inference_queue_for_study(study=study)
    except Exception:
        # Ingest has committed; a failure here must not turn the upload into an error.
        # The batch action (or the next sync) queues the study later.
        logger.exception("could not queue inference for study %s", study.pk)
