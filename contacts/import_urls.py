from django.urls import path

from contacts import import_views

app_name = "contacts_io"
urlpatterns = [
    path("", import_views.import_upload, name="import"),
    path("<int:pk>/mapping/", import_views.import_mapping, name="import_mapping"),
    path("export/", import_views.export_start, name="export"),
    path("jobs/<int:pk>/", import_views.job_detail, name="job"),
    path("jobs/<int:pk>/download/", import_views.job_download, name="job_download"),
]
