from django.db.models import QuerySet

from contacts.models import Contact
from segments.models import Segment, SegmentMembership


def segment_list(*, include_archived: bool = False) -> QuerySet[Segment]:
    qs = Segment.objects.all()
    return qs if include_archived else qs.filter(is_archived=False)


def segment_members(*, segment: Segment) -> QuerySet[Contact]:
    return Contact.objects.filter(segment_memberships__segment=segment)


def segments_for_contact(*, contact: Contact) -> QuerySet[SegmentMembership]:
    return SegmentMembership.objects.filter(contact=contact).select_related("segment")
