from django.urls import path

from contacts import api

urlpatterns = [
    path("identify", api.IdentifyApi.as_view(), name="api-identify"),
    path("events", api.EventsApi.as_view(), name="api-events"),
    path("erasures", api.ErasuresApi.as_view(), name="api-erasures"),
    path("contacts/lookup", api.ContactLookupApi.as_view(), name="api-contact-lookup"),
    path("contacts/<int:contact_id>", api.ContactDetailApi.as_view(), name="api-contact"),
    path("contacts/<int:contact_id>/tags", api.ContactTagsApi.as_view(), name="api-contact-tags"),
    # A tag is named by its id or by "group/name", hence a path converter.
    path(
        "contacts/<int:contact_id>/tags/<path:tag_id>",
        api.ContactTagDeleteApi.as_view(),
        name="api-contact-tag",
    ),
    path(
        "contacts/<int:contact_id>/consents",
        api.ContactConsentsApi.as_view(),
        name="api-contact-consents",
    ),
    path(
        "contacts/<int:contact_id>/timeline",
        api.ContactTimelineApi.as_view(),
        name="api-contact-timeline",
    ),
    path(
        "contacts/<int:contact_id>/personal-data",
        api.ContactPersonalDataApi.as_view(),
        name="api-contact-personal-data",
    ),
]
