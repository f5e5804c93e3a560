import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from channels.models import Delivery
from contacts.models import (
    Consent,
    Contact,
    Event,
    Identity,
    MergeRecord,
)
from contacts.selectors import contact_get_by_identity, contact_stats, contact_visible_to
from contacts.services import (
    EventInput,
    IdentityInput,
    consent_record,
    contact_merge,
    contact_merge_undo,
    contact_tag_add,
    event_record,
    events_record,
    identify,
    note_add,
)
from core.errors import DomainError
from core.models import AuditLog
from journeys.models import Enrollment, EnrollmentStatus
from membership.models import Member, PointsEntry
from membership.services import member_get_or_create, points_apply
from segments.models import SegmentMembership
from segments.services import segment_create
from tests.factories import (
    ChannelFactory,
    ContactFactory,
    IdentityFactory,
    JourneyFactory,
    TagFactory,
    TierFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

# Events the merge and undo add themselves; everything else must come back exactly.
BOOKKEEPING_EVENTS = {"contact_merged", "merge_undone", "segment_entered", "segment_exited"}


def _earn(contact: Contact, points: int, key: str) -> None:
    points_apply(
        member=member_get_or_create(contact=contact),
        delta=points,
        growth=points,
        reason=PointsEntry.Reason.ADJUSTMENT,
        idempotency_key=key,
    )


def _state(contact: Contact) -> dict:
    """Everything that belongs to a contact, by id, so two states can be compared exactly."""
    contact = Contact.objects.get(pk=contact.pk)
    member = Member.objects.filter(contact=contact).first()
    fields = {
        f.attname: getattr(contact, f.attname)
        for f in Contact._meta.concrete_fields
        if f.attname != "updated_at"
    }
    return {
        "fields": fields,
        "identities": sorted(contact.identities.values_list("pk", flat=True)),
        "events": sorted(
            contact.events.exclude(name__in=BOOKKEEPING_EVENTS).values_list("pk", flat=True)
        ),
        "tags": sorted(contact.contact_tags.values_list("pk", "tag_id")),
        "notes": sorted(contact.notes.values_list("pk", flat=True)),
        "consent_records": sorted(contact.consent_records.values_list("pk", flat=True)),
        "consents": sorted(
            contact.consents.values_list("pk", "channel", "purpose", "granted", "record_id")
        ),
        "member": (
            None
            if member is None
            else (
                member.pk,
                member.points_balance,
                member.growth_value,
                member.tier_id,
                member.joined_at,
            )
        ),
        "points": sorted(
            PointsEntry.objects.filter(member__contact=contact).values_list("pk", flat=True)
        ),
        "enrollments": sorted(
            Enrollment.objects.filter(contact=contact).values_list(
                "pk", "status", "next_run_at", "finished_at"
            )
        ),
        "deliveries": sorted(Delivery.objects.filter(contact=contact).values_list("pk", flat=True)),
    }


def _ledger_ok(member: Member) -> bool:
    member.refresh_from_db()
    return member.points_balance == sum(member.points_entries.values_list("delta", flat=True))


@pytest.fixture
def tiers():
    return TierFactory(name="普卡", min_growth=0), TierFactory(name="金卡", min_growth=500)


@pytest.fixture
def pair(tiers):
    """Two profiles of one customer, each with a bit of everything."""
    operator = UserFactory()
    older = ContactFactory(name="林小雨", city="", email="", birthday=None)
    newer = ContactFactory(
        name="小雨", city="杭州", email="lin@example.cn", birthday=dt.date(1992, 3, 4)
    )
    IdentityFactory(contact=older, kind="wechat_unionid", value="u-1")
    IdentityFactory(contact=newer, kind="miniprogram_openid", app_id="wxapp", value="o-1")
    shared, only_newer = TagFactory(name="护肤"), TagFactory(name="彩妆")
    contact_tag_add(contact=older, tag=shared)
    contact_tag_add(contact=newer, tag=shared)
    contact_tag_add(contact=newer, tag=only_newer)
    event_record(contact=newer, name="page_view")
    note_add(contact=newer, author=operator, body="喜欢保湿类")
    consent_record(contact=older, channel="sms", purpose="marketing", granted=True, source="form")
    consent_record(
        contact=newer, channel="sms", purpose="marketing", granted=False, source="sms_reply"
    )
    consent_record(contact=newer, channel="email", purpose="marketing", granted=True, source="form")
    _earn(older, 300, "older-1")
    _earn(newer, 250, "newer-1")
    journey_a, journey_b = JourneyFactory(), JourneyFactory()
    Enrollment.objects.create(journey=journey_a, contact=older, next_run_at=timezone.now())
    Enrollment.objects.create(journey=journey_a, contact=newer, next_run_at=timezone.now())
    Enrollment.objects.create(journey=journey_b, contact=newer, next_run_at=timezone.now())
    channel = ChannelFactory()
    Delivery.objects.create(idempotency_key="d-older", contact=older, channel=channel)
    Delivery.objects.create(idempotency_key="d-newer", contact=newer, channel=channel)
    return older, newer, operator


def test_merge_moves_everything_to_the_survivor_and_fills_its_blanks(pair):
    survivor, duplicate, operator = pair
    identities = set(Identity.objects.filter(contact=duplicate).values_list("pk", flat=True))
    events = set(Event.objects.filter(contact=duplicate).values_list("pk", flat=True))

    record = contact_merge(survivor=survivor, duplicate=duplicate, actor=operator)

    survivor.refresh_from_db()
    duplicate.refresh_from_db()
    assert survivor.name == "林小雨"  # kept its own value
    assert survivor.city == "杭州"  # filled from the duplicate
    assert survivor.email == "lin@example.cn"
    assert survivor.birthday == dt.date(1992, 3, 4)
    assert duplicate.merged_into == survivor
    assert identities <= set(survivor.identities.values_list("pk", flat=True))
    assert events <= set(survivor.events.values_list("pk", flat=True))
    assert sorted(survivor.contact_tags.values_list("tag__name", flat=True)) == ["彩妆", "护肤"]
    assert survivor.notes.count() == 1
    assert survivor.consent_records.count() == 3
    # The most recent state per channel and purpose wins: the later withdrawal.
    states = dict(
        ((c.channel, c.purpose), c.granted) for c in Consent.objects.filter(contact=survivor)
    )
    assert states == {("sms", "marketing"): False, ("email", "marketing"): True}
    assert Delivery.objects.filter(contact=survivor).count() == 2
    assert record.snapshot["survivor"]["city"] == ""
    assert record.snapshot["duplicate"]["city"] == "杭州"
    assert set(record.moved) >= {
        "contacts.identity",
        "contacts.event",
        "membership.pointsentry",
        "journeys.enrollment",
        "channels.delivery",
    }
    assert survivor.events.filter(name="contact_merged").exists()
    audit = AuditLog.objects.get(action="contact.merge")
    assert audit.actor == operator
    assert audit.details["duplicate_id"] == duplicate.pk


def test_a_merged_contact_is_hidden_and_lookups_follow_it(pair):
    survivor, duplicate, operator = pair
    contact_merge(survivor=survivor, duplicate=duplicate)
    assert list(contact_visible_to(user=operator).values_list("pk", flat=True)) == [survivor.pk]
    assert contact_stats()["total"] == 1
    assert contact_get_by_identity(kind="miniprogram_openid", value="o-1", app_id="wxapp") == (
        survivor
    )
    # A late event sent with the old contact id lands on the survivor.
    events_record(
        items=[
            EventInput(
                name="page_view",
                occurred_at=timezone.now(),
                event_id="late-1",
                contact_id=duplicate.pk,
            )
        ]
    )
    assert Event.objects.get(event_id="late-1").contact_id == survivor.pk


def test_merging_two_members_folds_the_wallets_and_keeps_the_ledger_consistent(pair, tiers):
    survivor, duplicate, _ = pair
    contact_merge(survivor=survivor, duplicate=duplicate)
    member = Member.objects.get(contact=survivor)
    assert member.points_balance == 550
    assert member.growth_value == 550
    assert member.tier == tiers[1]  # 550 growth reaches the gold tier
    assert _ledger_ok(member)
    assert not Member.objects.filter(contact=duplicate).exists()


def test_a_duplicate_member_moves_whole_when_the_survivor_is_not_one(tiers):
    survivor, duplicate = ContactFactory(), ContactFactory()
    _earn(duplicate, 80, "d-1")
    record = contact_merge(survivor=survivor, duplicate=duplicate)
    assert Member.objects.get(contact=survivor).points_balance == 80
    assert not Member.objects.filter(contact=duplicate).exists()
    contact_merge_undo(record=record)
    assert Member.objects.get(contact=duplicate).points_balance == 80
    assert not Member.objects.filter(contact=survivor).exists()


def test_the_same_journey_occurrence_is_not_doubled_but_ended_on_the_duplicate(pair):
    survivor, duplicate, _ = pair
    contact_merge(survivor=survivor, duplicate=duplicate)
    journeys = list(
        Enrollment.objects.filter(contact=survivor).values_list("journey_id", "occurrence")
    )
    assert len(journeys) == len(set(journeys)) == 2
    left = Enrollment.objects.get(contact=duplicate)
    assert left.status == EnrollmentStatus.EXITED


def test_merge_then_undo_restores_exactly_the_original_state(pair):
    survivor, duplicate, operator = pair
    before = (_state(survivor), _state(duplicate))

    record = contact_merge(survivor=survivor, duplicate=duplicate, actor=operator)
    assert (_state(survivor), _state(duplicate)) != before
    restored = contact_merge_undo(record=record, actor=operator)

    assert restored.pk == duplicate.pk
    assert (_state(survivor), _state(duplicate)) == before
    record.refresh_from_db()
    assert record.undone_at is not None
    assert AuditLog.objects.filter(action="contact.merge_undo").count() == 1
    assert Event.objects.filter(name="merge_undone").count() == 2


def test_undo_keeps_what_changed_on_the_survivor_since_the_merge(pair):
    survivor, duplicate, _ = pair
    record = contact_merge(survivor=survivor, duplicate=duplicate)
    Contact.objects.filter(pk=survivor.pk).update(city="上海")
    contact_merge_undo(record=record)
    survivor.refresh_from_db()
    assert survivor.city == "上海"  # changed after the merge: not the merge's to take back
    assert survivor.email == ""  # filled by the merge: given back


def test_undo_twice_is_refused(pair):
    survivor, duplicate, _ = pair
    record = contact_merge(survivor=survivor, duplicate=duplicate)
    contact_merge_undo(record=record)
    with pytest.raises(DomainError) as exc:
        contact_merge_undo(record=record)
    assert exc.value.code == "already_undone"


def test_undo_is_refused_while_the_survivor_is_merged_into_a_third_contact():
    a, b, c = ContactFactory(), ContactFactory(), ContactFactory()
    first = contact_merge(survivor=b, duplicate=a)
    contact_merge(survivor=c, duplicate=b)
    with pytest.raises(DomainError) as exc:
        contact_merge_undo(record=first)
    assert exc.value.code == "merged_since"


def test_merging_a_contact_into_itself_or_twice_is_refused():
    a, b, c = ContactFactory(), ContactFactory(), ContactFactory()
    with pytest.raises(DomainError):
        contact_merge(survivor=a, duplicate=a)
    contact_merge(survivor=a, duplicate=b)
    with pytest.raises(DomainError) as exc:
        contact_merge(survivor=c, duplicate=b)
    assert exc.value.code == "already_merged"
    assert MergeRecord.objects.count() == 1


def test_undo_is_refused_when_the_survivor_spent_the_folded_points(pair):
    survivor, duplicate, _ = pair
    record = contact_merge(survivor=survivor, duplicate=duplicate)
    points_apply(
        member=Member.objects.get(contact=survivor),
        delta=-500,
        reason=PointsEntry.Reason.REDEMPTION,
        idempotency_key="spend",
    )
    with pytest.raises(DomainError) as exc:
        contact_merge_undo(record=record)
    assert exc.value.code == "points_spent"
    assert Contact.objects.get(pk=duplicate.pk).merged_into_id == survivor.pk


def test_the_duplicate_leaves_its_segments_and_the_survivor_joins_them(
    django_capture_on_commit_callbacks,
):
    tag = TagFactory(name="高价值")
    survivor, duplicate = ContactFactory(), ContactFactory()
    contact_tag_add(contact=duplicate, tag=tag)
    segment = segment_create(
        name="高价值客户", rule={"type": "tag", "match": "any", "tags": [tag.pk]}
    )
    assert list(segment.memberships.values_list("contact_id", flat=True)) == [duplicate.pk]

    with django_capture_on_commit_callbacks(execute=True):
        record = contact_merge(survivor=survivor, duplicate=duplicate)
    assert list(SegmentMembership.objects.values_list("contact_id", flat=True)) == [survivor.pk]

    with django_capture_on_commit_callbacks(execute=True):
        contact_merge_undo(record=record)
    assert list(SegmentMembership.objects.values_list("contact_id", flat=True)) == [duplicate.pk]


# --- identify ------------------------------------------------------------------------------


def test_identify_merges_contacts_linked_by_a_strong_identity_oldest_survives():
    older = identify(identities=[IdentityInput("wechat_unionid", "u-9")]).contact
    newer = identify(identities=[IdentityInput("phone", "13800138009")]).contact
    result = identify(
        identities=[IdentityInput("phone", "13800138009"), IdentityInput("wechat_unionid", "u-9")]
    )
    assert result.contact.pk == older.pk
    assert result.merged == [newer.pk]
    assert result.conflicts == []
    assert Contact.objects.get(pk=newer.pk).merged_into_id == older.pk
    assert MergeRecord.objects.get().reason == "identify"
    assert set(Identity.objects.values_list("contact_id", flat=True)) == {older.pk}


def test_anonymous_behaviour_joins_the_known_contact_when_identified():
    anonymous = identify(identities=[IdentityInput("anonymous_id", "dev-1")]).contact
    events_record(
        items=[
            EventInput(
                name="view_product",
                occurred_at=timezone.now() - dt.timedelta(minutes=3),
                event_id="anon-view",
                identities=[IdentityInput("anonymous_id", "dev-1")],
            )
        ]
    )
    # The known customer was created later (in another system), but holds the strong id.
    known = ContactFactory()
    IdentityFactory(contact=known, kind="external_id", value="crm-77")
    Contact.objects.filter(pk=anonymous.pk).update(
        created_at=known.created_at - dt.timedelta(days=1)
    )

    result = identify(
        identities=[IdentityInput("anonymous_id", "dev-1"), IdentityInput("external_id", "crm-77")]
    )

    assert result.contact.pk == known.pk
    assert result.merged == [anonymous.pk]
    assert Event.objects.get(event_id="anon-view").contact_id == known.pk
    assert contact_get_by_identity(kind="anonymous_id", value="dev-1") == known


def test_identify_with_only_a_new_strong_identity_does_not_merge_weakly_linked_contacts():
    a = identify(identities=[IdentityInput("wechat_openid", "oa", app_id="wxoa")]).contact
    b = identify(identities=[IdentityInput("anonymous_id", "dev-2")]).contact
    result = identify(
        identities=[
            IdentityInput("wechat_openid", "oa", app_id="wxoa"),
            IdentityInput("anonymous_id", "dev-2"),
            IdentityInput("email", "new@example.cn"),
        ]
    )
    assert result.contact.pk == a.pk
    assert result.conflicts == [b.pk]
    assert result.merged == []


def test_strong_identity_kinds_are_a_setting(settings):
    settings.SCRM_STRONG_IDENTITY_KINDS = ["external_id"]
    identify(identities=[IdentityInput("external_id", "x-1")])
    other = identify(identities=[IdentityInput("wechat_unionid", "u-x")]).contact
    result = identify(
        identities=[IdentityInput("wechat_unionid", "u-x"), IdentityInput("external_id", "x-1")]
    )
    assert result.merged == [other.pk]
    settings.SCRM_STRONG_IDENTITY_KINDS = []
    third = identify(identities=[IdentityInput("external_id", "x-3")]).contact
    result = identify(
        identities=[IdentityInput("external_id", "x-3"), IdentityInput("external_id", "x-1")]
    )
    assert result.merged == []
    assert third.pk in [result.contact.pk, *result.conflicts]


def test_identify_purchase_after_merge_pays_the_survivor(tiers):
    older = identify(identities=[IdentityInput("wechat_unionid", "u-p")]).contact
    identify(identities=[IdentityInput("phone", "13800138010")])
    identify(
        identities=[IdentityInput("wechat_unionid", "u-p"), IdentityInput("phone", "13800138010")]
    )
    events_record(
        items=[
            EventInput(
                name="purchase",
                occurred_at=timezone.now(),
                event_id="order-9",
                identities=[IdentityInput("phone", "13800138010")],
                value=Decimal("99.00"),
            )
        ]
    )
    assert Member.objects.get(contact=older).points_balance == 99
