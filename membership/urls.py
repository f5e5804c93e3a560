from django.urls import path

from membership import views

app_name = "membership"
urlpatterns = [
    path("", views.membership_index, name="index"),
    path("contact/<int:contact_id>/card/", views.contact_card, name="contact_card"),
    path(
        "contact/<int:survivor_id>/merge/<int:duplicate_id>/",
        views.contact_merge_preview,
        name="contact_merge_preview",
    ),
]
