"""Django admin of findings and radiologists' feedback, for the staff who run the platform.

Everything here is read-only: findings are written by the worker (exactly once per job),
feedback and added findings by radiologists through the API, which keeps each change in
the feedback history. The admin shows them, with each finding's verdicts and their
history inline, so staff can see what the models found and what radiologists said.
"""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Count
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from annotations.models import (
    AddedFinding,
    FeedbackHistory,
    Finding,
    FindingFeedback,
    FindingKind,
)
from projects.admin_mixins import ReadOnlyAdminMixin


def _what(obj) -> str:
    """A nodule's centre and size, or a grade."""
    if obj.kind == FindingKind.NODULE:
        centre = ", ".join(f"{v:.1f}" for v in obj.center_lps_mm or [])
        size = f"{obj.diameter_mm:.1f} mm" if obj.diameter_mm else "?"
        return f"{size} at ({centre}) LPS mm"
    return f"grade {obj.grade}" if obj.grade is not None else "-"


def _correction(feedback) -> str:
    parts = []
    if feedback.corrected_center_lps_mm:
        centre = ", ".join(f"{v:.1f}" for v in feedback.corrected_center_lps_mm)
        parts.append(f"centre ({centre})")
    if feedback.corrected_diameter_mm:
        parts.append(f"{feedback.corrected_diameter_mm:.1f} mm")
    if feedback.corrected_grade is not None:
        parts.append(f"grade {feedback.corrected_grade}")
    return ", ".join(parts) or "-"


class FeedbackHistoryInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = FeedbackHistory
    extra = 0
    fields = ["recorded_at", "verdict", "correction", "comment", "time_spent_s"]
    readonly_fields = fields
    verbose_name_plural = "history (every verdict given, oldest first)"

    @admin.display(description="correction")
    def correction(self, obj: FeedbackHistory) -> str:
        return _correction(obj)


class FindingFeedbackInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = FindingFeedback
    extra = 0
    show_change_link = True
    fields = ["radiologist", "verdict", "correction", "comment", "updated_at", "history"]
    readonly_fields = fields
    verbose_name_plural = "feedback (current verdict per radiologist, with its history)"

    def get_queryset(self, request):
        return (
            super().get_queryset(request).select_related("radiologist").prefetch_related("history")
        )

    @admin.display(description="correction")
    def correction(self, obj: FindingFeedback) -> str:
        return _correction(obj)

    @admin.display(description="history")
    def history(self, obj: FindingFeedback) -> str:
        rows = [
            (f"{h.recorded_at:%Y-%m-%d %H:%M:%S}", h.verdict, _correction(h))
            for h in obj.history.all()
        ]
        if not rows:
            return "-"
        return format_html(
            '<ol style="margin:0">{}</ol>',
            format_html_join("", "<li>{} {} ({})</li>", rows),
        )


@admin.register(Finding)
class FindingAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "kind",
        "project",
        "study",
        "what",
        "score",
        "model_version",
        "verdicts",
        "created_at",
    ]
    list_filter = ["project", "kind", "model_version__task", "feedback__verdict"]
    search_fields = [
        "id__exact",
        "study__study_instance_uid",
        "series__series_instance_uid",
        "study__patient__patient_id",
    ]
    list_select_related = ["project", "study", "model_version__project"]
    fields = [
        "project",
        "study",
        "series",
        "job_link",
        "model_version_link",
        "index",
        "kind",
        "center_lps_mm",
        "center_voxel",
        "diameter_mm",
        "score",
        "grade",
        "class_probabilities",
        "heatmap_path",
        "mask_path",
        "created_at",
    ]
    readonly_fields = fields
    inlines = [FindingFeedbackInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_verdicts=Count("feedback", distinct=True))

    @admin.display(description="finding")
    def what(self, obj: Finding) -> str:
        return _what(obj)

    @admin.display(description="verdicts", ordering="n_verdicts")
    def verdicts(self, obj: Finding) -> int:
        return getattr(obj, "n_verdicts", 0)

    @admin.display(description="job")
    def job_link(self, obj: Finding) -> str:
        url = reverse("admin:registry_job_change", args=[obj.job_id])
        return format_html('<a href="{}">{}</a>', url, obj.job)

    @admin.display(description="model version")
    def model_version_link(self, obj: Finding) -> str:
        url = reverse("admin:registry_modelversion_change", args=[obj.model_version_id])
        return format_html('<a href="{}">{}</a>', url, obj.model_version)


@admin.register(FindingFeedback)
class FindingFeedbackAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["finding", "radiologist", "verdict", "correction", "updated_at"]
    list_filter = ["verdict", "finding__project", "finding__kind", "finding__model_version__task"]
    search_fields = ["radiologist__username", "finding__study__study_instance_uid", "comment"]
    list_select_related = ["finding", "radiologist"]
    fields = [
        "finding",
        "radiologist",
        "verdict",
        "correction",
        "comment",
        "time_spent_s",
        "created_at",
        "updated_at",
    ]
    readonly_fields = fields
    inlines = [FeedbackHistoryInline]

    @admin.display(description="correction")
    def correction(self, obj: FindingFeedback) -> str:
        return _correction(obj)


@admin.register(AddedFinding)
class AddedFindingAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["id", "kind", "project", "study", "what", "radiologist", "created_at"]
    list_filter = ["project", "kind"]
    search_fields = [
        "id__exact",
        "study__study_instance_uid",
        "series__series_instance_uid",
        "radiologist__username",
        "comment",
    ]
    list_select_related = ["project", "study", "radiologist"]
    fields = [
        "project",
        "study",
        "series",
        "radiologist",
        "kind",
        "center_lps_mm",
        "diameter_mm",
        "grade",
        "comment",
        "time_spent_s",
        "created_at",
    ]
    readonly_fields = fields

    @admin.display(description="finding")
    def what(self, obj: AddedFinding) -> str:
        return _what(obj)
