from django.urls import path

from segments import rfm_views, scoring_views, views

app_name = "segments"
urlpatterns = [
    path("", views.segment_list, name="list"),
    path("new/", views.segment_create, name="create"),
    path("<int:pk>/", views.segment_detail, name="detail"),
    path("<int:pk>/edit/", views.segment_edit, name="edit"),
    path("<int:pk>/refresh/", views.segment_refresh, name="refresh"),
    path("<int:pk>/refresh/status/", views.segment_refresh_status, name="refresh_status"),
    path("<int:pk>/duplicate/", views.segment_duplicate, name="duplicate"),
    path("<int:pk>/archive/", views.segment_archive, name="archive"),
    path("<int:pk>/auto-tags/", views.segment_auto_tag_add, name="auto_tag_add"),
    path(
        "<int:pk>/auto-tags/<int:rule_id>/delete/",
        views.segment_auto_tag_remove,
        name="auto_tag_remove",
    ),
    path("<int:pk>/import/", views.segment_static_import, name="static_import"),
    path(
        "<int:pk>/import/<int:job_id>/unmatched.csv",
        views.segment_static_import_unmatched,
        name="static_import_unmatched",
    ),
    path("<int:pk>/explain/", views.segment_explain, name="explain"),
    path("preview/", views.segment_preview, name="preview"),
    path("static-members/", views.segment_static_members, name="static_members"),
    path("static-picker/", views.segment_static_picker, name="static_picker"),
    path("contact/<int:contact_id>/segments/", views.contact_segments, name="contact_segments"),
    path(
        "contact/<int:survivor_id>/merge/<int:duplicate_id>/",
        views.contact_merge_preview,
        name="contact_merge_preview",
    ),
    path("rfm/", rfm_views.rfm_overview, name="rfm"),
    path("rfm/recompute/", rfm_views.rfm_recompute, name="rfm_recompute"),
    path("rfm/<slug:layer>/", rfm_views.rfm_layer, name="rfm_layer"),
    path("scoring/", scoring_views.scoring_overview, name="scoring"),
    path("scoring/rules/new/", scoring_views.scoring_rule_create, name="scoring_rule_create"),
    path("scoring/rules/<int:pk>/", scoring_views.scoring_rule_edit, name="scoring_rule_edit"),
    path(
        "scoring/rules/<int:pk>/delete/",
        scoring_views.scoring_rule_delete,
        name="scoring_rule_delete",
    ),
    path("scoring/settings/", scoring_views.scoring_settings, name="scoring_settings"),
    path("scoring/thresholds/", scoring_views.scoring_threshold_set, name="scoring_threshold_set"),
    path(
        "scoring/thresholds/<int:pk>/delete/",
        scoring_views.scoring_threshold_delete,
        name="scoring_threshold_delete",
    ),
    path("koc/", scoring_views.koc_list, name="koc"),
    path("koc/recompute/", scoring_views.koc_recompute, name="koc_recompute"),
]
