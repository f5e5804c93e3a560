import datetime as dt
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone, translation

from channels.models import Delivery
from contacts.models import (
    Consent,
    Contact,
    Event,
    Identity,
    MergeBlock,
    MergeRecord,
)
from contacts.selectors import (
    contact_get_by_identity,
    contact_merge_preview,
    contact_stats,
    contact_visible_to,
)
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
    merge_block_add,
    merge_block_remove,
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
    user_with_role,
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


def test_empty_custom_values_of_the_survivor_are_filled_and_undo_empties_them_again():
    survivor = ContactFactory(
        attributes={"skin": "", "hobbies": [], "shoe_size": None, "vip": False, "note": "老客"}
    )
    duplicate = ContactFactory(
        attributes={
            "skin": "油性",
            "hobbies": ["瑜伽"],
            "shoe_size": 38,
            "vip": True,
            "note": "新客",
            "city_code": "0571",
        }
    )
    preview = contact_merge_preview(survivor=survivor, duplicate=duplicate)["fields"]

    record = contact_merge(survivor=survivor, duplicate=duplicate)

    survivor.refresh_from_db()
    assert survivor.attributes == {
        "skin": "油性",  # empty text, empty choice list, null: gaps the duplicate fills
        "hobbies": ["瑜伽"],
        "shoe_size": 38,
        "vip": False,  # "no" is an answer, not a gap
        "note": "老客",
        "city_code": "0571",
    }
    taken = {r["name"].removeprefix("attributes.") for r in preview if r["from_duplicate"]}
    assert taken == {"skin", "hobbies", "shoe_size", "city_code"}
    contact_merge_undo(record=record)
    survivor.refresh_from_db()
    assert survivor.attributes == {
        "skin": "",
        "hobbies": [],
        "shoe_size": None,
        "vip": False,
        "note": "老客",
    }


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
                properties={"order_id": "9"},
            )
        ]
    )
    assert Member.objects.get(contact=older).points_balance == 99


# --- Never-merge pairs ------------------------------------------------------------------------


def _merged_by_identify() -> tuple[Contact, Contact, MergeRecord]:
    older = identify(identities=[IdentityInput("wechat_unionid", "u-twin")]).contact
    newer = identify(identities=[IdentityInput("phone", "13800138020")]).contact
    identify(
        identities=[
            IdentityInput("wechat_unionid", "u-twin"),
            IdentityInput("phone", "13800138020"),
        ]
    )
    return older, newer, MergeRecord.objects.get(survivor=older, duplicate=newer)


def test_an_undone_merge_is_not_redone_by_the_next_identify():
    older, newer, record = _merged_by_identify()
    operator = UserFactory()
    contact_merge_undo(record=record, actor=operator)
    block = MergeBlock.objects.get()
    assert (block.low_id, block.high_id) == tuple(sorted([older.pk, newer.pk]))
    assert block.actor == operator
    assert block.reason == "merge undone"

    result = identify(
        identities=[
            IdentityInput("wechat_unionid", "u-twin"),
            IdentityInput("phone", "13800138020"),
            IdentityInput("anonymous_id", "dev-twin"),
        ],
        traits={"city": "成都"},
    )

    assert result.merged == []
    assert result.conflicts == [newer.pk]
    assert result.contact.pk == older.pk
    assert MergeRecord.objects.count() == 1
    assert Contact.objects.get(pk=newer.pk).merged_into_id is None
    # Which of the two the new identity and traits belong to is unknown: neither gets them.
    assert not Identity.objects.filter(kind="anonymous_id").exists()
    assert set(Contact.objects.values_list("city", flat=True)) == {""}


def test_a_blocked_pair_still_merges_with_a_third_contact():
    older, newer, record = _merged_by_identify()
    contact_merge_undo(record=record)
    third = identify(identities=[IdentityInput("external_id", "crm-twin")]).contact

    result = identify(
        identities=[
            IdentityInput("wechat_unionid", "u-twin"),
            IdentityInput("phone", "13800138020"),
            IdentityInput("external_id", "crm-twin"),
        ]
    )

    assert result.contact.pk == older.pk
    assert result.merged == [third.pk]
    assert result.conflicts == [newer.pk]


def test_a_manual_merge_of_a_blocked_pair_is_refused_until_the_block_is_removed():
    a, b = ContactFactory(), ContactFactory()
    operator = UserFactory()
    merge_block_add(contact=b, other=a, actor=operator)
    merge_block_add(contact=a, other=b, actor=operator)  # once is enough: still one row
    assert MergeBlock.objects.count() == 1

    with translation.override("en"), pytest.raises(DomainError) as exc:
        contact_merge(survivor=a, duplicate=b, actor=operator)
    assert exc.value.code == "merge_blocked"
    assert "not the same person" in exc.value.message
    assert MergeRecord.objects.count() == 0
    assert Contact.objects.get(pk=b.pk).merged_into_id is None

    assert merge_block_remove(contact=a, other=b, actor=operator) is True
    assert merge_block_remove(contact=a, other=b, actor=operator) is False
    contact_merge(survivor=a, duplicate=b, actor=operator)
    assert Contact.objects.get(pk=b.pk).merged_into_id == a.pk
    assert list(
        AuditLog.objects.filter(action__startswith="contact.merge")
        .order_by("pk")
        .values_list("action", flat=True)
    ) == ["contact.merge_block", "contact.merge_unblock", "contact.merge"]


def test_a_contact_cannot_be_blocked_from_itself():
    a = ContactFactory()
    with pytest.raises(DomainError) as exc:
        merge_block_add(contact=a, other=a)
    assert exc.value.code == "same_contact"
    assert not MergeBlock.objects.exists()


def test_operator_marks_two_contacts_as_different_people_and_takes_it_back(
    operator_client, operator
):
    a, b = ContactFactory(name="林小雨"), ContactFactory(name="林晓雨")
    preview_url = reverse("contacts:merge_preview", args=[a.pk, b.pk])
    block_url = reverse("contacts:merge_block", args=[a.pk, b.pk])
    unblock_url = reverse("contacts:merge_unblock", args=[a.pk, b.pk])
    assert block_url in operator_client.get(preview_url).content.decode()

    response = operator_client.post(block_url)
    assert response.status_code == 302
    assert response["Location"] == reverse("contacts:detail", args=[a.pk]) + "#contact-merges"
    assert MergeBlock.objects.filter(actor=operator).count() == 1
    page = operator_client.get(reverse("contacts:detail", args=[a.pk])).content.decode()
    assert "林晓雨" in page and unblock_url in page

    # The preview now refuses to merge and offers to remove the mark instead.
    page = operator_client.get(preview_url).content.decode()
    assert unblock_url in page and block_url not in page
    operator_client.post(preview_url)
    assert Contact.objects.get(pk=b.pk).merged_into_id is None

    fragment = operator_client.post(unblock_url, HTTP_HX_REQUEST="true").content.decode()
    assert 'id="contact-merges"' in fragment and unblock_url not in fragment
    assert not MergeBlock.objects.exists()
    assert AuditLog.objects.filter(action="contact.merge_unblock", actor=operator).count() == 1

    operator_client.post(block_url)
    response = operator_client.post(unblock_url, {"then": "merge"})
    assert response["Location"] == preview_url
    operator_client.post(preview_url)
    assert Contact.objects.get(pk=b.pk).merged_into_id == a.pk


def test_blocking_needs_the_merge_permission(client):
    from contacts import roles

    roles.roles_sync()
    a, b = ContactFactory(), ContactFactory()
    client.force_login(user_with_role("analyst"))
    for name in ("contacts:merge_block", "contacts:merge_unblock"):
        assert client.post(reverse(name, args=[a.pk, b.pk])).status_code == 403
        assert client.get(reverse(name, args=[a.pk, b.pk])).status_code in (403, 405)
    assert not MergeBlock.objects.exists()
