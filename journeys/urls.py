from django.urls import path

from journeys import views

app_name = "journeys"
urlpatterns = [
    path("", views.journey_list, name="list"),
    path("<int:pk>/", views.journey_detail, name="detail"),
    path("<int:pk>/activate/", views.journey_activate, name="activate"),
    path("<int:pk>/pause/", views.journey_pause, name="pause"),
    path(
        "contact/<int:contact_id>/enrollments/",
        views.contact_enrollments,
        name="contact_enrollments",
    ),
    path(
        "contact/<int:survivor_id>/merge/<int:duplicate_id>/",
        views.contact_merge_preview,
        name="contact_merge_preview",
    ),
]
