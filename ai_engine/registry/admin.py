"""Django admin of the registry, for the staff who run the platform.

Model versions, promotions, jobs, alerts, snapshots and active-learning scores are written
by the registry's services and the worker, so their admin pages are read-only: state
changes go through admin actions that call `ai_engine.registry.services` (the champion
rule, promotion, rollback and job cancellation live there and nowhere else), and a refusal
shows as an error message. Only the per-project AI settings and a version's notes are
edited here. Open monitoring alerts show their figures on the alert and version pages.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from django.contrib import admin, messages
from django.db.models import Count, Prefetch, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from ai_engine.registry import services
from ai_engine.registry.exceptions import RegistryError
from ai_engine.registry.models import (
    ActiveLearningScore,
    DataSnapshot,
    Job,
    ModelAlert,
    ModelVersion,
    ProjectAISettings,
    PromotionEvent,
)
from projects.admin_mixins import ReadOnlyAdminMixin

#: The manifest file of a model folder (`ai_engine.modelfolder.MANIFEST`). Read as plain
#: JSON here: importing ai_engine.modelfolder would load torch into the web process.
MODEL_MANIFEST = "model.json"


def _pretty_json(value) -> str:
    if value in (None, {}, []):
        return "-"
    return format_html(
        '<pre style="margin:0;white-space:pre-wrap">{}</pre>',
        json.dumps(value, indent=2, sort_keys=True, default=str),
    )


def _percent(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def _link(obj, text: str | None = None) -> str:
    if obj is None:
        return "-"
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, text or str(obj))


def _run_service(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    items: Iterable,
    call: Callable,
    describe: Callable[[object, object], str],
) -> None:
    """Call `call(item)` for each item; report each outcome (a refusal as an error message)."""
    for item in items:
        try:
            outcome = call(item)
        except RegistryError as exc:
            modeladmin.message_user(request, exc.message, level=messages.ERROR)
        else:
            modeladmin.message_user(request, describe(item, outcome), level=messages.SUCCESS)


class ReadOnlyInline(ReadOnlyAdminMixin, admin.TabularInline):
    extra = 0
    show_change_link = True

    def get_readonly_fields(self, request, obj=None):
        return [*self.fields]


# -- filters ----------------------------------------------------------------------------------


class OpenAlertFilter(admin.SimpleListFilter):
    title = "monitoring"
    parameter_name = "flagged"

    def lookups(self, request, model_admin):
        return [("yes", "Flagged (open alert)"), ("no", "Not flagged")]

    def queryset(self, request, queryset):
        flagged = ModelAlert.objects.filter(resolved_at__isnull=True).values("version_id")
        if self.value() == "yes":
            return queryset.filter(pk__in=flagged)
        if self.value() == "no":
            return queryset.exclude(pk__in=flagged)
        return queryset


class AlertStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("open", "Open"), ("resolved", "Resolved")]

    def queryset(self, request, queryset):
        if self.value() == "open":
            return queryset.filter(resolved_at__isnull=True)
        if self.value() == "resolved":
            return queryset.filter(resolved_at__isnull=False)
        return queryset


# -- settings -------------------------------------------------------------------------------


@admin.register(ProjectAISettings)
class ProjectAISettingsAdmin(admin.ModelAdmin):
    list_display = [
        "project",
        "auto_inference",
        "retrain_after_labels",
        "monitoring_window",
        "alert_margin",
        "updated_at",
    ]
    list_filter = ["auto_inference"]
    search_fields = ["project__slug", "project__name"]
    autocomplete_fields = ["project"]
    readonly_fields = ["updated_at"]


# -- snapshots and versions -----------------------------------------------------------------


class VersionOfSnapshotInline(ReadOnlyInline):
    model = ModelVersion
    fk_name = "data_snapshot"
    fields = ["version", "task", "status", "validation_metric_name", "validation_metric"]
    verbose_name_plural = "model versions trained on this snapshot"


@admin.register(DataSnapshot)
class DataSnapshotAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "short_hash",
        "project",
        "task",
        "n_items",
        "n_labels",
        "versions",
        "created_at",
    ]
    list_filter = ["project", "task"]
    search_fields = ["sha256", "project__slug"]
    list_select_related = ["project"]
    fields = ["project", "task", "sha256", "n_items", "n_labels", "datalist_path", "created_at"]
    readonly_fields = fields
    inlines = [VersionOfSnapshotInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_versions=Count("versions"))

    @admin.display(description="SHA-256", ordering="sha256")
    def short_hash(self, obj: DataSnapshot) -> str:
        return obj.sha256[:12]

    @admin.display(description="versions", ordering="n_versions")
    def versions(self, obj: DataSnapshot) -> int:
        return obj.n_versions


class PromotionInline(ReadOnlyInline):
    model = PromotionEvent
    fk_name = "version"
    fields = ["created_at", "reason", "previous", "by", "detail"]
    show_change_link = False
    verbose_name_plural = "promotions (champion changes to this version)"


class AlertInline(ReadOnlyInline):
    model = ModelAlert
    fields = ["created_at", "resolved_at", "message", "figures_table"]

    @admin.display(description="figures")
    def figures_table(self, obj: ModelAlert) -> str:
        return _figures_table(obj.figures)


def _figures_table(figures: dict) -> str:
    """The alert's figures side by side: baseline vs rolling, with the drop and the margin."""
    if not figures:
        return "-"
    drop = figures.get("drop") or {}
    margin = figures.get("margin")
    rows = []
    for name in ("acceptance", "agreement"):
        fell = drop.get(name)
        flagged = fell is not None and margin is not None and fell > margin
        rows.append(
            (
                name,
                _percent(figures.get(f"baseline_{name}")),
                _percent(figures.get(f"rolling_{name}")),
                "-" if fell is None else f"{-fell:+.0%}",
                "FLAGGED" if flagged else "ok",
            )
        )
    body = format_html_join(
        "",
        "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td><td><strong>{}</strong></td></tr>",
        rows,
    )
    return format_html(
        "<table><thead><tr><th></th><th>baseline</th><th>rolling</th><th>change</th>"
        "<th></th></tr></thead><tbody>{}</tbody></table>"
        "<p>window: last {} verdicts ({} counted); margin {}</p>",
        body,
        figures.get("window", "-"),
        figures.get("verdicts", "-"),
        _percent(margin),
    )


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = [
        "project",
        "task",
        "version",
        "status",
        "provenance",
        "validation",
        "snapshot",
        "monitoring",
        "created_at",
        "promoted_at",
    ]
    list_display_links = ["version"]
    list_filter = ["project", "task", "status", "provenance", OpenAlertFilter]
    search_fields = [
        "project__slug",
        "notes",
        "data_snapshot__sha256",
        "validation_set_hash",
        "mlflow_run_id",
    ]
    list_select_related = ["project", "data_snapshot"]
    actions = ["promote_to_champion", "roll_back"]
    inlines = [AlertInline, PromotionInline]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "project",
                    "task",
                    "version",
                    "status",
                    "monitoring",
                    "created_at",
                    "promoted_at",
                ]
            },
        ),
        (
            "Metrics",
            {
                "fields": [
                    "validation_metric_name",
                    "validation_metric",
                    "validation_set_hash",
                    "metrics_json",
                    "baseline_acceptance",
                    "baseline_agreement",
                ]
            },
        ),
        (
            "How it was made",
            {
                "fields": [
                    "provenance",
                    "parent_link",
                    "data_snapshot_link",
                    "snapshot_hash",
                    "created_by",
                    "path",
                    "networks",
                    "made_by_params",
                    "mlflow_run_id",
                ]
            },
        ),
        ("Notes (the champion rule writes here too)", {"fields": ["notes"]}),
    ]
    readonly_fields = [
        "project",
        "task",
        "version",
        "status",
        "monitoring",
        "created_at",
        "promoted_at",
        "validation_metric_name",
        "validation_metric",
        "validation_set_hash",
        "metrics_json",
        "baseline_acceptance",
        "baseline_agreement",
        "provenance",
        "parent_link",
        "data_snapshot_link",
        "snapshot_hash",
        "created_by",
        "path",
        "networks",
        "made_by_params",
        "mlflow_run_id",
    ]

    def get_queryset(self, request):
        open_alerts = ModelAlert.objects.filter(resolved_at__isnull=True)
        return (
            super()
            .get_queryset(request)
            .prefetch_related(Prefetch("alerts", queryset=open_alerts, to_attr="open_alerts"))
        )

    # Versions are registered by training and import, and kept forever.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_promote_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("registry.change_modelversion")

    # -- computed fields --

    @admin.display(description="validation")
    def validation(self, obj: ModelVersion) -> str:
        if obj.validation_metric is None:
            return "-"
        return f"{obj.validation_metric_name} {obj.validation_metric:.4f}"

    @admin.display(description="data snapshot", ordering="data_snapshot__sha256")
    def snapshot(self, obj: ModelVersion) -> str:
        return obj.data_snapshot.sha256[:12] if obj.data_snapshot else "-"

    @admin.display(description="data snapshot SHA-256")
    def snapshot_hash(self, obj: ModelVersion) -> str:
        return obj.data_snapshot.sha256 if obj.data_snapshot else "-"

    @admin.display(description="monitoring")
    def monitoring(self, obj: ModelVersion) -> str:
        alerts = getattr(obj, "open_alerts", None)
        if alerts is None:
            alerts = list(obj.alerts.filter(resolved_at__isnull=True))
        if not alerts:
            if obj.baseline_acceptance is None:
                return "no baseline yet"
            return format_html(
                "ok (baseline acceptance {}, agreement {})",
                _percent(obj.baseline_acceptance),
                _percent(obj.baseline_agreement),
            )
        alert = alerts[0]
        return format_html(
            '<strong style="color:#ba2121">&#9888; {}</strong>', _link(alert, alert.message)
        )

    @admin.display(description="metrics")
    def metrics_json(self, obj: ModelVersion) -> str:
        return _pretty_json(obj.metrics)

    @admin.display(description="parent")
    def parent_link(self, obj: ModelVersion) -> str:
        return _link(obj.parent)

    @admin.display(description="data snapshot")
    def data_snapshot_link(self, obj: ModelVersion) -> str:
        snap = obj.data_snapshot
        if snap is None:
            return "-"
        return _link(
            snap, f"{snap.n_items} items, {snap.n_labels} labels ({snap.created_at:%Y-%m-%d})"
        )

    def _manifest(self, obj: ModelVersion) -> dict | str:
        path = Path(obj.path) / MODEL_MANIFEST
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return f"{path} is missing"
        except (OSError, ValueError) as exc:
            return f"{path} cannot be read: {exc}"

    @admin.display(description="networks (model.json)")
    def networks(self, obj: ModelVersion) -> str:
        manifest = self._manifest(obj)
        if isinstance(manifest, str):
            return manifest
        return _pretty_json(
            {name: spec.get("network") for name, spec in (manifest.get("components") or {}).items()}
        )

    @admin.display(description="made by (model.json)")
    def made_by_params(self, obj: ModelVersion) -> str:
        manifest = self._manifest(obj)
        if isinstance(manifest, str):
            return manifest
        return _pretty_json(
            {"made_by": manifest.get("made_by"), **(manifest.get("made_by_params") or {})}
        )

    # -- actions --

    @admin.action(
        description="Promote to champion (retires the current champion)", permissions=["promote"]
    )
    def promote_to_champion(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        tasks = {(v.project_id, v.task) for v in queryset}
        if len(tasks) != queryset.count():
            self.message_user(
                request,
                "Select one version per project and task to promote: each task has one champion.",
                level=messages.ERROR,
            )
            return
        _run_service(
            self,
            request,
            queryset.select_related("project"),
            lambda v: services.model_version_promote(version=v, by=request.user),
            lambda v, _: f"{v.project}/{v.task}: v{v.version} is now the champion.",
        )

    @admin.action(
        description="Roll back the champion of the selected versions' tasks",
        permissions=["promote"],
    )
    def roll_back(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        pairs = {(v.project, v.task) for v in queryset.select_related("project")}
        _run_service(
            self,
            request,
            sorted(pairs, key=lambda p: (p[0].slug, p[1])),
            lambda p: services.model_version_rollback(project=p[0], task=p[1], by=request.user),
            lambda p, restored: f"{p[0]}/{p[1]}: rolled back to v{restored.version}.",
        )


@admin.register(PromotionEvent)
class PromotionEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["created_at", "version", "reason", "previous", "by"]
    list_filter = ["reason", "version__project", "version__task"]
    search_fields = ["version__project__slug", "by__username"]
    list_select_related = ["version__project", "previous__project", "by"]
    fields = ["version", "previous", "reason", "by", "detail_json", "created_at"]
    readonly_fields = fields

    @admin.display(description="detail")
    def detail_json(self, obj: PromotionEvent) -> str:
        return _pretty_json(obj.detail)


# -- alerts ---------------------------------------------------------------------------------


@admin.register(ModelAlert)
class ModelAlertAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "version",
        "state",
        "acceptance",
        "agreement",
        "window",
        "margin",
        "message",
        "created_at",
    ]
    list_filter = [AlertStateFilter, "version__project", "version__task"]
    search_fields = ["message", "version__project__slug"]
    list_select_related = ["version__project"]
    fields = [
        "version",
        "state",
        "message",
        "figures_table",
        "figures_json",
        "created_at",
        "resolved_at",
    ]
    readonly_fields = fields

    @admin.display(description="state", ordering="resolved_at")
    def state(self, obj: ModelAlert) -> str:
        if obj.resolved_at is None:
            return format_html('<strong style="color:#ba2121">{}</strong>', "OPEN")
        return f"resolved {obj.resolved_at:%Y-%m-%d %H:%M}"

    def _pair(self, obj: ModelAlert, name: str) -> str:
        figures = obj.figures or {}
        return (
            f"{_percent(figures.get(f'baseline_{name}'))} -> "
            f"{_percent(figures.get(f'rolling_{name}'))}"
        )

    @admin.display(description="acceptance (baseline -> rolling)")
    def acceptance(self, obj: ModelAlert) -> str:
        return self._pair(obj, "acceptance")

    @admin.display(description="agreement (baseline -> rolling)")
    def agreement(self, obj: ModelAlert) -> str:
        return self._pair(obj, "agreement")

    @admin.display(description="window")
    def window(self, obj: ModelAlert) -> str:
        return str((obj.figures or {}).get("window", "-"))

    @admin.display(description="margin")
    def margin(self, obj: ModelAlert) -> str:
        return _percent((obj.figures or {}).get("margin"))

    @admin.display(description="figures")
    def figures_table(self, obj: ModelAlert) -> str:
        return _figures_table(obj.figures)

    @admin.display(description="figures (raw)")
    def figures_json(self, obj: ModelAlert) -> str:
        return _pretty_json(obj.figures)


# -- jobs -----------------------------------------------------------------------------------


@admin.register(Job)
class JobAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "kind",
        "task",
        "project",
        "status",
        "progress_percent",
        "attempts",
        "lost_attempts",
        "short_message",
        "has_error",
        "created_at",
        "finished_at",
    ]
    list_filter = ["project", "kind", "task", "status", "queue", "cancel_requested"]
    search_fields = [
        "id__exact",
        "celery_task_id",
        "study__study_instance_uid",
        "project__slug",
        "message",
        "error",
    ]
    list_select_related = ["project"]
    actions = ["cancel"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "project",
                    "kind",
                    "task",
                    "status",
                    "progress_percent",
                    "eta_at",
                    "message",
                    "error",
                    "cancel_requested",
                ]
            },
        ),
        (
            "Attempts",
            {
                "fields": [
                    "attempts",
                    "lost_attempts",
                    "attempt_started_at",
                    "celery_task_id",
                    "queue",
                ]
            },
        ),
        (
            "What it runs on and made",
            {
                "fields": [
                    "study",
                    "model_version_link",
                    "produced_version_link",
                    "params_json",
                    "result_json",
                ]
            },
        ),
        (
            "Times",
            {"fields": ["created_by", "created_at", "started_at", "finished_at", "updated_at"]},
        ),
    ]

    def get_readonly_fields(self, request, obj=None):
        return [f for _, opts in self.fieldsets for f in opts["fields"]]

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("registry.change_job")

    @admin.display(description="progress", ordering="progress")
    def progress_percent(self, obj: Job) -> str:
        return f"{obj.progress:.0%}"

    @admin.display(description="message")
    def short_message(self, obj: Job) -> str:
        return obj.message if len(obj.message) <= 80 else obj.message[:79] + "\u2026"

    @admin.display(description="error", boolean=True)
    def has_error(self, obj: Job) -> bool:
        return bool(obj.error)

    @admin.display(description="model version")
    def model_version_link(self, obj: Job) -> str:
        return _link(obj.model_version)

    @admin.display(description="produced version")
    def produced_version_link(self, obj: Job) -> str:
        return _link(obj.produced_version)

    @admin.display(description="params")
    def params_json(self, obj: Job) -> str:
        return _pretty_json(obj.params)

    @admin.display(description="result")
    def result_json(self, obj: Job) -> str:
        return _pretty_json(obj.result)

    @admin.action(
        description="Cancel (queued: now; running: ask it to stop)", permissions=["cancel"]
    )
    def cancel(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        _run_service(
            self,
            request,
            queryset.order_by("pk"),
            lambda job: services.job_cancel(job=job, by=request.user),
            lambda job, done: (
                f"Job {done.pk}: "
                + ("cancelled." if done.status == Job.Status.CANCELLED else "asked to stop.")
            ),
        )


# -- active learning ------------------------------------------------------------------------


@admin.register(ActiveLearningScore)
class ActiveLearningScoreAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "project",
        "task",
        "strategy",
        "rank",
        "score",
        "study",
        "model_version",
        "created_at",
    ]
    list_filter = ["project", "task", "strategy"]
    search_fields = ["study__study_instance_uid", "project__slug"]
    list_select_related = ["project", "study", "model_version__project"]
    fields = [
        "project",
        "task",
        "strategy",
        "rank",
        "score",
        "study",
        "model_version",
        "job",
        "components_json",
        "created_at",
    ]
    readonly_fields = fields

    @admin.display(description="components")
    def components_json(self, obj: ActiveLearningScore) -> str:
        return _pretty_json(obj.components)
