from django.urls import path

from annotations import api

P = "projects/<slug:project>"

urlpatterns = [
    path(f"{P}/findings", api.FindingListView.as_view(), name="finding-list"),
    path(f"{P}/findings/<int:pk>", api.FindingDetailView.as_view(), name="finding-detail"),
    path(f"{P}/findings/<int:pk>/heatmap", api.FindingFileView.as_view(), name="finding-heatmap"),
    path(f"{P}/findings/<int:pk>/mask", api.FindingMaskView.as_view(), name="finding-mask"),
    path(
        f"{P}/findings/<int:pk>/feedback",
        api.FindingFeedbackView.as_view(),
        name="finding-feedback",
    ),
    path(
        f"{P}/findings/<int:pk>/feedback/history",
        api.FeedbackHistoryView.as_view(),
        name="finding-feedback-history",
    ),
    path(
        f"{P}/studies/<str:study_uid>/findings",
        api.StudyFindingListView.as_view(),
        name="study-findings",
    ),
    path(f"{P}/added-findings", api.AddedFindingListView.as_view(), name="added-finding-list"),
]
