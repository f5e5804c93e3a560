"""A segment's size history (the growth sparkline) for days before anything recorded it.

The daily refresh records one point a day from the day a segment exists. A segment created
today over data that goes back months (a demo, a migration from another system) would show no
growth for a month; its past points are worked out here from the data instead.
"""

import datetime as dt

from django.utils import timezone

from contacts.models import Contact
from segments.models import Segment, SegmentKind, SegmentSize
from segments.services import segment_queryset


def day_end(day: dt.date) -> dt.datetime:
    """The last moment of a local day (the brand's time zone)."""
    midnight = dt.datetime.combine(day + dt.timedelta(days=1), dt.time.min)
    return timezone.make_aware(midnight) - dt.timedelta(microseconds=1)


def segment_size_as_of(*, segment: Segment, day: dt.date) -> int:
    """How many contacts the segment's rule matches as of the end of `day`.

    Time windows ("in the last 30 days", "created within 7 days") are measured from that
    moment, and contacts created after it are left out. What the data does not keep a history
    of is read as it is now: profile values, tags and the members of other segments.
    """
    moment = day_end(day)
    existing = Contact.objects.filter(created_at__lte=moment).values("pk")
    return segment_queryset(segment=segment, now=moment, scope=existing).count()


def segment_size_backfill(
    *, segment: Segment, days: int = 30, every: int = 1, today: dt.date | None = None
) -> int:
    """Record the segment's size for past days that have no point yet; return how many.

    The days are `every`, 2 × `every` … days before today, up to `days` days back; today is
    the refresh's to record. A point already recorded is never replaced, so running this
    again (or alongside the refresh) changes nothing. Static lists keep no history of who was
    on them when, so they get none.
    """
    if segment.kind != SegmentKind.DYNAMIC or days < 1 or every < 1:
        return 0
    today = today or timezone.localdate()
    wanted = [today - dt.timedelta(days=back) for back in range(every, days, every)]
    recorded = set(
        SegmentSize.objects.filter(segment=segment, day__in=wanted).values_list("day", flat=True)
    )
    points = [
        SegmentSize(
            segment=segment, day=day, member_count=segment_size_as_of(segment=segment, day=day)
        )
        for day in wanted
        if day not in recorded
    ]
    # ignore_conflicts: a refresh that recorded one of these days meanwhile keeps its count.
    SegmentSize.objects.bulk_create(points, ignore_conflicts=True)
    return len(points)
