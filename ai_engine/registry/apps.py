from django.apps import AppConfig


class RegistryConfig(AppConfig):
    """The Django side of ai_engine: model versions and jobs. The rest of ai_engine imports no Django."""

    name = "ai_engine.registry"
    label = "registry"
    verbose_name = "Model registry and jobs"
