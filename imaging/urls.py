from django.urls import path

from imaging import api

P = "projects/<slug:project>"

urlpatterns = [
    path(f"{P}/uploads", api.UploadView.as_view(), name="upload"),
    path(f"{P}/studies", api.StudyListView.as_view(), name="study-list"),
    path(f"{P}/studies/<str:study_uid>", api.StudyDetailView.as_view(), name="study-detail"),
    path(f"{P}/studies/<str:study_uid>/series", api.SeriesListView.as_view(), name="series-list"),
    path(f"{P}/quarantine", api.QuarantineListView.as_view(), name="quarantine-list"),
]
