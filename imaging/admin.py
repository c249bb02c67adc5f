from django.contrib import admin

from imaging.models import Instance, Patient, QuarantinedFile, Series, Study, SyncState, UploadBatch


@admin.register(Patient)
class PatientAdmin(admin.ModelAdmin):
    list_display = ["patient_id", "project", "patient_sex", "patient_birth_date"]
    list_filter = ["project"]
    search_fields = ["patient_id"]


class SeriesInline(admin.TabularInline):
    model = Series
    fields = ["series_instance_uid", "modality", "series_description", "number_of_instances"]
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = [
        "study_instance_uid",
        "project",
        "study_date",
        "modalities_in_study",
        "number_of_instances",
        "ai_status",
    ]
    list_filter = ["project", "ai_status"]
    search_fields = ["study_instance_uid", "study_description", "patient__patient_id"]
    list_select_related = ["project"]
    raw_id_fields = ["patient"]
    inlines = [SeriesInline]


@admin.register(Series)
class SeriesAdmin(admin.ModelAdmin):
    list_display = ["series_instance_uid", "modality", "series_description", "number_of_instances"]
    search_fields = ["series_instance_uid"]
    raw_id_fields = ["study"]


@admin.register(Instance)
class InstanceAdmin(admin.ModelAdmin):
    list_display = ["sop_instance_uid", "instance_number", "series"]
    search_fields = ["sop_instance_uid"]
    raw_id_fields = ["series"]


@admin.register(QuarantinedFile)
class QuarantinedFileAdmin(admin.ModelAdmin):
    list_display = ["original_name", "project", "reason", "created_at"]
    list_filter = ["project"]
    readonly_fields = ["project", "reason", "original_name", "sha256", "stored_path", "created_at"]


@admin.register(UploadBatch)
class UploadBatchAdmin(admin.ModelAdmin):
    list_display = ["created_at", "project", "source", "uploaded_by", "accepted", "rejected"]
    list_filter = ["project", "source"]


admin.site.register(SyncState)
