from django.urls import path

from contacts import api

urlpatterns = [
    path("identify", api.IdentifyApi.as_view(), name="api-identify"),
    path("events", api.EventsApi.as_view(), name="api-events"),
    path("contacts/<int:contact_id>", api.ContactDetailApi.as_view(), name="api-contact"),
]
