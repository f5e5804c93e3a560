from django.urls import path

from segments import views

app_name = "segments"
urlpatterns = [
    path("", views.segment_list, name="list"),
    path("new/", views.segment_create, name="create"),
    path("<int:pk>/", views.segment_detail, name="detail"),
    path("<int:pk>/edit/", views.segment_edit, name="edit"),
    path("<int:pk>/refresh/", views.segment_refresh, name="refresh"),
    path("contact/<int:contact_id>/segments/", views.contact_segments, name="contact_segments"),
]
