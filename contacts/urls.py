from django.urls import path

from contacts import views

app_name = "contacts"
urlpatterns = [
    path("", views.contact_list, name="list"),
    path("bulk/tag/", views.contact_bulk_tag, name="bulk_tag"),
    path("follow-ups/", views.follow_up_list, name="followups"),
    path("follow-ups/<int:note_id>/done/", views.follow_up_done, name="followup_done"),
    path("bulk/jobs/<int:job_id>/", views.contact_bulk_job, name="bulk_job"),
    path("erasures/", views.erasure_list, name="erasures"),
    path("<int:pk>/", views.contact_detail, name="detail"),
    path("<int:pk>/edit/", views.contact_edit, name="edit"),
    path("<int:pk>/unmask/", views.contact_unmask, name="unmask"),
    path("<int:pk>/tags/add/", views.contact_tag_add, name="tag_add"),
    path("<int:pk>/tags/<int:tag_id>/remove/", views.contact_tag_remove, name="tag_remove"),
    path("<int:pk>/notes/add/", views.contact_note_add, name="note_add"),
    path("<int:pk>/notes/<int:note_id>/done/", views.contact_note_done, name="note_done"),
    path("<int:pk>/consent/", views.contact_consent, name="consent"),
    path("<int:pk>/personal-data/", views.contact_data_copy, name="data_copy"),
    path("<int:pk>/erase/", views.contact_erase_confirm, name="erase"),
    path("<int:pk>/merge/", views.contact_merge_search, name="merge"),
    path("<int:pk>/merge/<int:other_pk>/", views.contact_merge_preview, name="merge_preview"),
    path("<int:pk>/merge/<int:other_pk>/block/", views.contact_merge_block, name="merge_block"),
    path(
        "<int:pk>/merge/<int:other_pk>/unblock/",
        views.contact_merge_unblock,
        name="merge_unblock",
    ),
    path("merges/<int:record_id>/undo/", views.contact_merge_undo, name="merge_undo"),
]
