from django.urls import path

from segments import api

urlpatterns = [
    path("segments", api.SegmentListApi.as_view(), name="api-segments"),
    path(
        "segments/<int:segment_id>/members",
        api.SegmentMembersApi.as_view(),
        name="api-segment-members",
    ),
    path(
        "segments/<int:segment_id>/members/<int:contact_id>",
        api.SegmentMemberApi.as_view(),
        name="api-segment-member",
    ),
    path(
        "contacts/<int:contact_id>/segments",
        api.ContactSegmentsApi.as_view(),
        name="api-contact-segments",
    ),
]
