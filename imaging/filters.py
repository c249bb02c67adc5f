"""Filters of the study list: modality, date range, text search, AI status."""

from __future__ import annotations

import django_filters
from django.db.models import Q, QuerySet

from imaging.models import AIStatus, Study


class StudyFilter(django_filters.FilterSet):
    """`?modality=CT&study_date_after=2024-01-01&study_date_before=...&ai_status=done&q=chest`."""

    modality = django_filters.CharFilter(method="filter_modality", label="Modality in study")
    study_date = django_filters.DateFromToRangeFilter()
    ai_status = django_filters.MultipleChoiceFilter(choices=AIStatus.choices)
    q = django_filters.CharFilter(
        method="filter_text", label="Text in description, patient id or accession number"
    )
    patient_id = django_filters.CharFilter(field_name="patient__patient_id")
    accession_number = django_filters.CharFilter()

    class Meta:
        model = Study
        fields = ["modality", "study_date", "ai_status", "q", "patient_id", "accession_number"]

    def filter_modality(self, queryset: QuerySet[Study], name: str, value: str) -> QuerySet[Study]:
        # ModalitiesInStudy is a sorted comma list: match whole codes, not substrings.
        code = value.strip().upper()
        return queryset.filter(
            Q(modalities_in_study=code)
            | Q(modalities_in_study__startswith=f"{code},")
            | Q(modalities_in_study__endswith=f",{code}")
            | Q(modalities_in_study__contains=f",{code},")
        )

    def filter_text(self, queryset: QuerySet[Study], name: str, value: str) -> QuerySet[Study]:
        value = value.strip()
        if not value:
            return queryset
        return queryset.filter(
            Q(study_description__icontains=value)
            | Q(patient__patient_id__icontains=value)
            | Q(accession_number__icontains=value)
        )
