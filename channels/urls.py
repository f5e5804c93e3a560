from django.urls import path

from channels import views

app_name = "channels"
urlpatterns = [
    path("", views.channel_list, name="list"),
    path("deliveries/", views.delivery_list, name="deliveries"),
    path(
        "contact/<int:contact_id>/deliveries/",
        views.contact_deliveries,
        name="contact_deliveries",
    ),
    path(
        "contact/<int:survivor_id>/merge/<int:duplicate_id>/",
        views.contact_merge_preview,
        name="contact_merge_preview",
    ),
]
