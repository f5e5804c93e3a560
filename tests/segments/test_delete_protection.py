"""A segment another rule reads cannot be deleted: "not in the blacklist" would then match the
blacklisted contacts too. Refused in the service and in the admin, as archiving is."""

import pytest
from django.urls import reverse

from core.errors import ValidationFailed
from segments import scoring
from segments.models import Segment, SegmentKind, SegmentMembership
from segments.services import (
    segment_create,
    segment_delete,
    segment_static_add,
    segment_update,
    segments_delete,
)
from tests.factories import ContactFactory, JourneyFactory

pytestmark = pytest.mark.django_db


def not_in(segment: Segment) -> dict:
    return {
        "op": "and",
        "conditions": [{"type": "segment", "match": "not_in", "segment": segment.pk}],
    }


@pytest.fixture
def blacklist():
    return segment_create(name="黑名单", kind=SegmentKind.STATIC)


def test_a_segment_another_reads_cannot_be_deleted(blacklist):
    blacklisted, other = ContactFactory(), ContactFactory()
    segment_static_add(segment=blacklist, contact_ids=[blacklisted.pk])
    target = segment_create(name="可触达客户", rule=not_in(blacklist))

    with pytest.raises(ValidationFailed) as refused:
        segment_delete(segment=blacklist)

    assert refused.value.code == "segment_in_use"
    assert "可触达客户" in refused.value.message
    assert Segment.objects.filter(pk=blacklist.pk).exists()
    assert set(target.memberships.values_list("contact_id", flat=True)) == {other.pk}


def test_an_archived_reader_also_protects_it(blacklist):
    target = segment_create(name="可触达客户", rule=not_in(blacklist))
    Segment.objects.filter(pk=target.pk).update(is_archived=True)

    with pytest.raises(ValidationFailed):
        segment_delete(segment=blacklist)


def test_a_profile_fit_rule_reading_it_protects_it(blacklist):
    condition = not_in(blacklist)
    scoring.score_rule_create(
        data={"name": "非黑名单加分", "kind": "attribute", "condition": condition, "points": 5}
    )

    with pytest.raises(ValidationFailed) as refused:
        segment_delete(segment=blacklist)

    assert "非黑名单加分" in refused.value.message


def test_once_nothing_reads_it_it_is_deleted_with_its_members(blacklist):
    segment_static_add(segment=blacklist, contact_ids=[ContactFactory().pk])
    target = segment_create(name="可触达客户", rule=not_in(blacklist))
    segment_update(segment=target, rule={"op": "and", "conditions": []})

    segment_delete(segment=blacklist)

    assert not Segment.objects.filter(pk=blacklist.pk).exists()
    assert not SegmentMembership.objects.filter(segment_id=blacklist.pk).exists()


def test_a_reader_and_what_it_reads_can_be_deleted_together(blacklist):
    target = segment_create(name="可触达客户", rule=not_in(blacklist))

    assert segments_delete(segments=Segment.objects.filter(pk__in=[blacklist.pk, target.pk])) == 2

    assert not Segment.objects.exists()


def test_a_segment_a_journey_starts_from_is_refused_with_a_clear_error(blacklist):
    JourneyFactory(name="欢迎旅程", trigger_segment=blacklist)

    with pytest.raises(ValidationFailed) as refused:
        segment_delete(segment=blacklist)

    assert "欢迎旅程" in refused.value.message


def test_the_admin_refuses_to_delete_a_segment_another_reads(admin_client, blacklist):
    segment_create(name="可触达客户", rule=not_in(blacklist))
    url = reverse("admin:segments_segment_delete", args=[blacklist.pk])

    page = admin_client.get(url)
    response = admin_client.post(url, {"post": "yes"})

    assert "可触达客户" in page.content.decode()
    assert response.status_code == 200  # the confirmation page again, listing what reads it
    assert Segment.objects.filter(pk=blacklist.pk).exists()


def test_the_admin_bulk_delete_refuses_too_but_takes_a_reader_with_what_it_reads(
    admin_client, blacklist
):
    target = segment_create(name="可触达客户", rule=not_in(blacklist))
    other = segment_create(name="其他", kind=SegmentKind.STATIC)
    url = reverse("admin:segments_segment_changelist")

    admin_client.post(
        url, {"action": "delete_selected", "_selected_action": [blacklist.pk], "post": "yes"}
    )
    assert Segment.objects.filter(pk=blacklist.pk).exists()

    admin_client.post(
        url,
        {
            "action": "delete_selected",
            "_selected_action": [blacklist.pk, target.pk],
            "post": "yes",
        },
    )
    assert list(Segment.objects.all()) == [other]
