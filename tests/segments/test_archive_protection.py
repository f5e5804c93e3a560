"""An archived segment is no longer refreshed: whatever still reads it would read frozen
membership. Archiving is therefore refused, as deleting is, while a segment that is not
archived, a profile-fit lead scoring rule or a journey reads it; restoring stays allowed."""

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import translation

from contacts.services import contact_tag_add
from core.errors import ValidationFailed
from journeys.models import Enrollment, JourneyStatus
from segments import scoring
from segments.models import Segment, SegmentKind
from segments.services import segment_archive, segment_create, segment_delete, segment_refresh
from tests.factories import ContactFactory, JourneyFactory, TagFactory
from tests.segments.test_admin import admin_post, change_url, errors

pytestmark = pytest.mark.django_db


def reads(segment: Segment, match: str = "in") -> dict:
    return {"op": "and", "conditions": [{"type": "segment", "match": match, "segment": segment.pk}]}


def tagged(tag) -> dict:
    return {"op": "and", "conditions": [{"type": "tag", "match": "any", "tags": [tag.pk]}]}


def is_archived(segment: Segment) -> bool:
    return Segment.objects.get(pk=segment.pk).is_archived


@pytest.fixture
def vip():
    return segment_create(name="VIP 关怀", rule=tagged(TagFactory(name="高价值")))


@pytest.mark.parametrize(
    "status",
    [JourneyStatus.LIVE, JourneyStatus.PAUSED, JourneyStatus.DRAFT, JourneyStatus.ARCHIVED],
)
def test_a_segment_a_journey_starts_from_cannot_be_archived(vip, status):
    # Any status: a draft or paused journey can go live, an archived one be activated again,
    # and it would then wait for entries into a segment that no longer changes.
    JourneyFactory(name="VIP 关怀旅程", trigger_segment=vip, status=status)

    with translation.override("en"), pytest.raises(ValidationFailed) as refused:
        segment_archive(segment=vip)

    assert refused.value.code == "segment_in_use"
    assert refused.value.message == (
        "journey “VIP 关怀旅程” use this segment; change them before archiving it."
    )
    assert refused.value.details == {"readers": ["journey “VIP 关怀旅程”"], "segments": []}
    assert not is_archived(vip)


def test_a_live_journey_keeps_firing_because_its_segment_stays_live(vip):
    """The audit's case: archiving the trigger froze it, and the live journey never fired again."""
    journey = JourneyFactory(name="VIP 关怀旅程", trigger_segment=vip, status=JourneyStatus.LIVE)
    with pytest.raises(ValidationFailed):
        segment_archive(segment=vip)

    contact = ContactFactory()
    contact_tag_add(contact=contact, tag=vip.tags_read.get())
    segment_refresh(segment=Segment.objects.get(pk=vip.pk))

    assert Enrollment.objects.filter(journey=journey, contact=contact).exists()


def test_a_profile_fit_scoring_rule_reading_it_blocks_archiving(vip):
    scoring.score_rule_create(
        data={"name": "VIP 加分", "kind": "attribute", "condition": reads(vip), "points": 5}
    )

    with translation.override("en"), pytest.raises(ValidationFailed) as refused:
        segment_archive(segment=vip)

    assert refused.value.details["readers"] == ["lead scoring rule “VIP 加分”"]
    assert not is_archived(vip)


def test_every_reader_is_named_and_archived_readers_do_not_count(vip):
    live_reader = segment_create(name="VIP 上海", rule=reads(vip))
    archived_reader = segment_create(name="旧 VIP", rule=reads(vip, "not_in"))
    segment_archive(segment=archived_reader)
    JourneyFactory(name="VIP 关怀旅程", trigger_segment=vip)

    with translation.override("en"), pytest.raises(ValidationFailed) as refused:
        segment_archive(segment=vip)

    assert refused.value.details == {
        "readers": ["segment “VIP 上海”", "journey “VIP 关怀旅程”"],
        "segments": ["VIP 上海"],
    }
    with translation.override("zh-hans"), pytest.raises(ValidationFailed) as refused:
        segment_archive(segment=vip)
    assert refused.value.message == (
        "分群“VIP 上海”、旅程“VIP 关怀旅程”正在使用此分群，请先修改它们再归档。"
    )
    assert "旧 VIP" not in refused.value.message

    segment_archive(segment=live_reader)
    Segment.objects.get(pk=vip.pk).journeys.all().delete()
    segment_archive(segment=vip)
    assert is_archived(vip)


def test_archive_and_delete_agree(vip):
    JourneyFactory(trigger_segment=vip)

    for refuse in (segment_archive, segment_delete):
        with pytest.raises(ValidationFailed) as refused:
            refuse(segment=vip)
        assert refused.value.code == "segment_in_use"
    assert Segment.objects.filter(pk=vip.pk, is_archived=False).exists()


def test_restoring_is_allowed_whatever_reads_it():
    tag = TagFactory(name="高价值")
    segment = segment_create(name="VIP 关怀", rule=tagged(tag))
    segment_archive(segment=segment)
    # A journey set up on the archived segment meanwhile (e.g. in the admin).
    JourneyFactory(trigger_segment=segment, status=JourneyStatus.LIVE)
    member = ContactFactory()
    contact_tag_add(contact=member, tag=tag)

    segment_archive(segment=Segment.objects.get(pk=segment.pk), archived=False)

    segment.refresh_from_db()
    assert not segment.is_archived
    assert list(segment.memberships.values_list("contact_id", flat=True)) == [member.pk]


def test_a_static_list_a_journey_starts_from_is_protected_too():
    static = segment_create(name="活动名单", kind=SegmentKind.STATIC)
    JourneyFactory(trigger_segment=static)

    with pytest.raises(ValidationFailed):
        segment_archive(segment=static)


# The operator's page -----------------------------------------------------------------------------


def test_the_archive_button_shows_the_refusal_as_an_error(operator_client, vip):
    JourneyFactory(name="VIP 关怀旅程", trigger_segment=vip, status=JourneyStatus.LIVE)

    response = operator_client.post(
        reverse("segments:archive", args=[vip.pk]),
        {"archived": "1"},
        HTTP_ACCEPT_LANGUAGE="zh-hans",
    )

    assert response.status_code == 302
    assert response["Location"] == reverse("segments:detail", args=[vip.pk])
    [message] = list(get_messages(response.wsgi_request))
    assert message.level_tag == "error"
    assert "旅程“VIP 关怀旅程”" in message.message
    assert not is_archived(vip)
    # The page it lands on shows the message.
    page = operator_client.get(response["Location"], HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert "旅程“VIP 关怀旅程”" in page.content.decode()


def test_the_restore_button_still_restores(operator_client, vip):
    segment_archive(segment=vip)
    JourneyFactory(trigger_segment=vip)

    response = operator_client.post(reverse("segments:archive", args=[vip.pk]), {"archived": "0"})

    assert response.status_code == 302
    [message] = list(get_messages(response.wsgi_request))
    assert message.level_tag == "success"
    assert not is_archived(vip)


def test_the_admin_refuses_archiving_on_the_form(operator_client, vip):
    JourneyFactory(name="VIP 关怀旅程", trigger_segment=vip)

    response = admin_post(operator_client, change_url(vip), is_archived=True)

    [error] = errors(response, "is_archived")
    assert error.code == "segment_in_use" and "VIP 关怀旅程" in error.message
    assert not is_archived(vip)
