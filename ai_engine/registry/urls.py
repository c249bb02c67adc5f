from django.urls import path

from ai_engine.registry import api

P = "projects/<slug:project>"

urlpatterns = [
    path(f"{P}/jobs", api.JobListView.as_view(), name="job-list"),
    path(f"{P}/jobs/<int:pk>", api.JobDetailView.as_view(), name="job-detail"),
    path(f"{P}/jobs/<int:pk>/cancel", api.JobCancelView.as_view(), name="job-cancel"),
    path(f"{P}/models", api.ModelVersionListView.as_view(), name="model-version-list"),
    path(f"{P}/models/alerts", api.AlertListView.as_view(), name="model-alert-list"),
    path(
        f"{P}/models/rollback",
        api.ModelVersionRollbackView.as_view(),
        name="model-version-rollback",
    ),
    path(f"{P}/models/<int:pk>", api.ModelVersionDetailView.as_view(), name="model-version-detail"),
    path(
        f"{P}/models/<int:pk>/promote",
        api.ModelVersionPromoteView.as_view(),
        name="model-version-promote",
    ),
    path(
        f"{P}/models/<int:pk>/monitoring",
        api.ModelVersionMonitoringView.as_view(),
        name="model-version-monitoring",
    ),
    path(f"{P}/ai-settings", api.AISettingsView.as_view(), name="ai-settings"),
    path(
        f"{P}/active-learning", api.ActiveLearningQueueView.as_view(), name="active-learning-queue"
    ),
]
