"""The merge preview's panels from the apps above contacts: membership, segments, journeys and
messages. Each shows what the survivor and the duplicate hold and what the survivor holds after
the merge; each preview is checked against what a real merge then does (the receivers' work,
before the re-evaluation that runs after commit).
"""

import datetime as dt
import html

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from channels.models import Delivery, DeliveryStatus
from channels.selectors import deliveries_merge_preview
from contacts import roles
from contacts.models import Contact
from contacts.services import contact_merge, contact_tag_add
from core.errors import DomainError
from journeys.models import Enrollment, EnrollmentStatus
from journeys.selectors import enrollments_merge_preview
from membership.models import Member, PointsEntry, Tier
from membership.selectors import MemberSnapshot, member_merge_preview
from membership.services import member_get_or_create, points_apply
from segments.models import SegmentMembership
from segments.selectors import segment_merge_preview
from segments.services import segment_archive, segment_create, segment_static_add
from tests.factories import (
    ChannelFactory,
    ContactFactory,
    JourneyFactory,
    StoreFactory,
    TagFactory,
    TierFactory,
    UserFactory,
    user_with_role,
)

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
PANELS = {
    "membership": "merge-membership",
    "segments": "merge-segments",
    "journeys": "merge-journeys",
    "channels": "merge-deliveries",
}


def _url(app: str, survivor: Contact, duplicate: Contact) -> str:
    return reverse(f"{app}:contact_merge_preview", args=[survivor.pk, duplicate.pk])


def _ago(days: int) -> dt.datetime:
    return timezone.now() - dt.timedelta(days=days)


# --- membership ------------------------------------------------------------------------------


@pytest.fixture
def tiers() -> dict[str, Tier]:
    return {
        name: TierFactory(name=name, min_growth=growth)
        for name, growth in (("普卡", 0), ("银卡", 100), ("金卡", 300))
    }


def _earn(contact: Contact, points: int, key: str, *, growth: int | None = None) -> None:
    points_apply(
        member=member_get_or_create(contact=contact),
        delta=points,
        growth=points if growth is None else growth,
        reason=PointsEntry.Reason.ADJUSTMENT if points >= 0 else PointsEntry.Reason.REDEMPTION,
        idempotency_key=key,
    )


def _member(contact: Contact) -> tuple | None:
    member = Member.objects.filter(contact=contact).select_related("tier").first()
    if member is None:
        return None
    return (
        member.tier.name,
        member.points_balance,
        member.growth_value,
        member.joined_at,
        member.points_entries.count(),
    )


def _shown(snapshot: MemberSnapshot | None) -> tuple | None:
    if snapshot is None:
        return None
    return (
        snapshot.tier.name if snapshot.tier else None,
        snapshot.points_balance,
        snapshot.growth_value,
        snapshot.joined_at,
        snapshot.entries,
    )


def test_two_memberships_fold_into_the_sums_with_the_tier_of_the_summed_growth(tiers):
    survivor, duplicate = ContactFactory(), ContactFactory()
    _earn(survivor, 150, "s-1")
    _earn(duplicate, 200, "d-1")
    _earn(duplicate, -80, "d-2", growth=0)
    Member.objects.filter(contact=duplicate).update(joined_at=_ago(400))
    before = (_member(survivor), _member(duplicate))

    preview = member_merge_preview(survivor=survivor, duplicate=duplicate)

    assert preview.outcome == "folded" and preview.error == ""
    assert (_shown(preview.survivor), _shown(preview.duplicate)) == before
    # Two silver members make one gold: 150 + 200 growth reaches 300.
    assert _shown(preview.after) == ("金卡", 270, 350, before[1][3], 3)
    contact_merge(survivor=survivor, duplicate=duplicate)
    assert _member(survivor) == _shown(preview.after)
    assert _member(duplicate) is None


def test_the_folded_tier_is_recomputed_not_the_higher_one_kept(tiers):
    survivor, duplicate = ContactFactory(), ContactFactory()
    _earn(survivor, 50, "s-1")
    _earn(duplicate, 30, "d-1")
    # Given gold by hand, above what its growth value reaches.
    Member.objects.filter(contact=survivor).update(tier=tiers["金卡"])

    preview = member_merge_preview(survivor=survivor, duplicate=duplicate)

    assert preview.survivor.tier.name == "金卡"
    assert preview.after.tier.name == "普卡"
    contact_merge(survivor=survivor, duplicate=duplicate)
    assert _member(survivor) == _shown(preview.after)


def test_a_lone_membership_moves_or_stays_unchanged(tiers):
    survivor, duplicate, third = ContactFactory(), ContactFactory(), ContactFactory()
    _earn(duplicate, 40, "d-1")
    # A tier its growth value does not reach: moving the membership does not re-tier it.
    Member.objects.filter(contact=duplicate).update(tier=tiers["金卡"])

    moved = member_merge_preview(survivor=survivor, duplicate=duplicate)
    kept = member_merge_preview(survivor=duplicate, duplicate=third)
    neither = member_merge_preview(survivor=survivor, duplicate=third)

    assert (moved.outcome, moved.survivor, _shown(moved.after)) == (
        "moved",
        None,
        _member(duplicate),
    )
    assert (kept.outcome, kept.duplicate, _shown(kept.after)) == ("kept", None, _member(duplicate))
    assert (neither.outcome, neither.after) == ("none", None)
    contact_merge(survivor=survivor, duplicate=duplicate)
    assert _member(survivor) == _shown(moved.after)


def test_a_fold_no_tier_fits_is_shown_as_the_refusal_the_merge_gives(tiers):
    survivor, duplicate = ContactFactory(), ContactFactory()
    _earn(survivor, 20, "s-1")
    _earn(duplicate, 30, "d-1")
    # The lowest tier was raised since: no tier fits 50 growth any more.
    Tier.objects.filter(pk=tiers["普卡"].pk).update(min_growth=1000)

    preview = member_merge_preview(survivor=survivor, duplicate=duplicate)

    assert preview.after.tier is None and preview.error
    with pytest.raises(DomainError) as refused:
        contact_merge(survivor=survivor, duplicate=duplicate)
    assert refused.value.message == preview.error
    assert Contact.objects.get(pk=duplicate.pk).merged_into_id is None


def test_the_membership_preview_reads_both_members_in_two_queries(tiers, django_assert_num_queries):
    survivor, duplicate = ContactFactory(), ContactFactory()
    _earn(survivor, 20, "s-1")
    _earn(duplicate, 30, "d-1")
    with django_assert_num_queries(2):  # both members with their counts; the folded tier
        member_merge_preview(survivor=survivor, duplicate=duplicate)


# --- segments --------------------------------------------------------------------------------


def tagged(tag, match: str = "any") -> dict:
    return {"op": "and", "conditions": [{"type": "tag", "match": match, "tags": [tag.pk]}]}


def _place_since(segment, contact, days: int) -> dt.datetime:
    at = _ago(days).replace(microsecond=0)
    SegmentMembership.objects.filter(segment=segment, contact=contact).update(entered_at=at)
    return at


def _static(name: str, *contacts: Contact):
    segment = segment_create(name=name, kind="static")
    segment_static_add(segment=segment, contact_ids=[c.pk for c in contacts])
    return segment


def _places(contact: Contact) -> dict[int, dt.datetime]:
    return dict(
        SegmentMembership.objects.filter(contact=contact).values_list("segment_id", "entered_at")
    )


def test_the_segments_preview_says_what_the_merge_does_with_each_place():
    vip_tag, opted_out, shared = TagFactory(name="高价值"), TagFactory(name="已退订"), TagFactory()
    survivor, duplicate = ContactFactory(), ContactFactory()
    contact_tag_add(contact=duplicate, tag=vip_tag)
    contact_tag_add(contact=survivor, tag=opted_out)
    for contact in (survivor, duplicate):
        contact_tag_add(contact=contact, tag=shared)
    both_list = _static("两人都在的名单", survivor, duplicate)
    own_list = _static("保留者的名单", survivor)
    their_list = _static("被合并者的名单", duplicate)
    everyone = segment_create(name="共同标签", rule=tagged(shared))
    vip = segment_create(name="VIP", rule=tagged(vip_tag))
    reachable = segment_create(name="可触达", rule=tagged(opted_out, match="none"))
    frozen = segment_create(name="去年可触达", rule=tagged(opted_out, match="none"))
    segment_archive(segment=frozen)
    for days, segment in enumerate((both_list, own_list, everyone), start=1):
        _place_since(segment, survivor, days)
    for days, segment in enumerate((both_list, their_list, everyone, vip, reachable, frozen), 10):
        _place_since(segment, duplicate, days)
    mine, theirs = _places(survivor), _places(duplicate)

    preview = segment_merge_preview(survivor=survivor, duplicate=duplicate)

    outcomes = {row.segment.name: row.outcome for row in preview.rows}
    assert outcomes == {
        "两人都在的名单": "kept_once",
        "保留者的名单": "kept",
        "被合并者的名单": "moved",
        "共同标签": "kept_once",
        "去年可触达": "moved",
        # Live rules: only the merge can tell whether the merged contact matches them.
        "VIP": "if_matches",
        "可触达": "if_matches",
    }
    assert [row.segment.name for row in preview.rows] == sorted(outcomes)
    assert {
        row.segment.pk: row.survivor_entered_at for row in preview.rows if row.survivor_entered_at
    } == mine
    assert {
        row.segment.pk: row.duplicate_entered_at for row in preview.rows if row.duplicate_entered_at
    } == theirs
    assert (preview.survivor_count, preview.duplicate_count) == (3, 6)
    assert (preview.after_count, preview.undecided_count) == (5, 2)

    contact_merge(survivor=survivor, duplicate=duplicate)

    decided = {
        row.segment.pk: row.entered_at_after for row in preview.rows if row.outcome != "if_matches"
    }
    # The VIP tag came with the duplicate, so the merged contact matches VIP (since the
    # duplicate's entry); with the survivor's opt-out tag it no longer matches 可触达.
    assert _places(survivor) == {**decided, vip.pk: theirs[vip.pk]}
    assert reachable.pk not in _places(survivor)
    assert _places(duplicate) == {}


def test_the_segments_preview_reads_both_contacts_places_in_one_query(
    django_assert_num_queries,
):
    survivor, duplicate = ContactFactory(), ContactFactory()
    _static("名单一", survivor, duplicate)
    _static("名单二", duplicate)
    with django_assert_num_queries(1):
        preview = segment_merge_preview(survivor=survivor, duplicate=duplicate)
        [row.segment.name for row in preview.rows]


# --- journeys --------------------------------------------------------------------------------


def test_the_journeys_preview_says_what_the_merge_does_with_each_enrollment():
    survivor, duplicate = ContactFactory(), ContactFactory()
    own, theirs, shared, finished, again = (
        JourneyFactory(name=name)
        for name in ("保留者的旅程", "被合并者的旅程", "两人都在", "已走完", "再次进入")
    )
    now = timezone.now()
    for journey, contact, status, occurrence in (
        (own, survivor, EnrollmentStatus.ACTIVE, 1),
        (theirs, duplicate, EnrollmentStatus.COMPLETED, 1),
        (shared, survivor, EnrollmentStatus.ACTIVE, 1),
        (shared, duplicate, EnrollmentStatus.ACTIVE, 1),
        (finished, survivor, EnrollmentStatus.ACTIVE, 1),
        (finished, duplicate, EnrollmentStatus.COMPLETED, 1),
        (again, survivor, EnrollmentStatus.COMPLETED, 1),
        (again, duplicate, EnrollmentStatus.ACTIVE, 2),
    ):
        Enrollment.objects.create(
            journey=journey,
            contact=contact,
            status=status,
            occurrence=occurrence,
            next_run_at=now if status == EnrollmentStatus.ACTIVE else None,
        )

    rows = enrollments_merge_preview(survivor=survivor, duplicate=duplicate)

    assert [(row.journey.name, row.occurrence, row.outcome) for row in rows] == [
        ("两人都在", 1, "ends"),
        ("保留者的旅程", 1, "kept"),
        ("再次进入", 1, "kept"),
        ("再次进入", 2, "moved"),
        ("已走完", 1, "stays"),
        ("被合并者的旅程", 1, "moved"),
    ]
    contact_merge(survivor=survivor, duplicate=duplicate)
    after = {
        (e.journey_id, e.occurrence): e.status for e in Enrollment.objects.filter(contact=survivor)
    }
    assert after == {(row.journey.pk, row.occurrence): row.after.status for row in rows}
    left = {e.journey.name: e.status for e in Enrollment.objects.filter(contact=duplicate)}
    assert left == {"两人都在": EnrollmentStatus.EXITED, "已走完": EnrollmentStatus.COMPLETED}


# --- messages --------------------------------------------------------------------------------


def test_every_delivery_moves_and_the_preview_counts_them_by_status(django_assert_num_queries):
    survivor, duplicate = ContactFactory(), ContactFactory()
    channel = ChannelFactory()
    for n, (contact, status) in enumerate(
        (
            (survivor, DeliveryStatus.SENT),
            (survivor, DeliveryStatus.SENT),
            (survivor, DeliveryStatus.FAILED),
            (duplicate, DeliveryStatus.SENT),
            (duplicate, DeliveryStatus.PENDING),
            (duplicate, DeliveryStatus.PENDING),
        )
    ):
        Delivery.objects.create(
            idempotency_key=f"k-{n}", contact=contact, channel=channel, status=status
        )

    with django_assert_num_queries(1):
        preview = deliveries_merge_preview(survivor=survivor, duplicate=duplicate)

    assert [(r.status, r.survivor, r.duplicate, r.after) for r in preview.rows] == [
        ("pending", 0, 2, 2),
        ("sent", 2, 1, 3),
        ("failed", 1, 0, 1),
    ]
    assert (preview.after_total, preview.duplicate_waiting) == (6, 2)
    contact_merge(survivor=survivor, duplicate=duplicate)
    after = {
        status: Delivery.objects.filter(contact=survivor, status=status).count()
        for status in DeliveryStatus.values
    }
    assert {s: n for s, n in after.items() if n} == {r.status: r.after for r in preview.rows}


# --- the panels on the page ------------------------------------------------------------------


@pytest.fixture
def _roles(db):
    roles.roles_sync()


@pytest.fixture
def filled_pair(tiers):
    """Two contacts with something in every panel, phones only (no names: the panels name
    them by their masked phone numbers)."""
    survivor = ContactFactory(name="", nickname="", phone="+8613800138000")
    duplicate = ContactFactory(name="", nickname="", phone="+8613900139000")
    _earn(survivor, 150, "s-1")
    _earn(duplicate, 200, "d-1")
    _static("春季名单", duplicate)
    vip = TagFactory(name="高价值")
    contact_tag_add(contact=duplicate, tag=vip)
    segment_create(name="高价值客户", rule=tagged(vip))
    Enrollment.objects.create(journey=JourneyFactory(name="新客旅程"), contact=duplicate)
    Delivery.objects.create(
        idempotency_key="k-1", contact=duplicate, channel=ChannelFactory(), status="pending"
    )
    return survivor, duplicate


def test_the_merge_preview_page_loads_one_panel_per_app(operator_client, filled_pair):
    survivor, duplicate = filled_pair

    page = operator_client.get(reverse("contacts:merge_preview", args=[survivor.pk, duplicate.pk]))

    content = page.content.decode()
    for app, dom_id in PANELS.items():
        assert f'id="{dom_id}"' in content
        assert f'hx-get="{_url(app, survivor, duplicate)}"' in content


@pytest.mark.parametrize("app", PANELS)
def test_each_panel_is_a_page_and_a_fragment(operator_client, filled_pair, app):
    survivor, duplicate = filled_pair
    operator_client.cookies[settings.LANGUAGE_COOKIE_NAME] = "en"
    url = _url(app, survivor, duplicate)

    page = html.unescape(operator_client.get(url).content.decode())
    fragment = html.unescape(operator_client.get(url, **HX).content.decode())

    assert "<html" in page and "<html" not in fragment
    assert fragment.lstrip().startswith(f'<section id="{PANELS[app]}"')
    shown = {
        "membership": ["金卡"],  # 150 + 200 growth
        "segments": [
            "春季名单",
            "高价值客户",
            "if the merged contact matches the rule, otherwise removed",
            "+ 1 decided by its rule",
        ],
        "journeys": ["新客旅程"],
        "channels": ["1 message of the duplicate is not sent yet"],
    }[app]
    for content in (page, fragment):
        assert all(text in content for text in shown)
        # Named by masked phone numbers, with their ids.
        assert f"+86138****8000 #{survivor.pk}" in content
        assert "13800138000" not in content and "13900139000" not in content


@pytest.mark.parametrize("app", PANELS)
def test_a_panel_answers_404_for_a_contact_the_user_may_not_see(client, _roles, app):
    jingan, xuhui = StoreFactory(name="静安店"), StoreFactory(name="徐汇店")
    clerk = user_with_role("store_staff", store=jingan)
    mine, elsewhere = ContactFactory(store=jingan), ContactFactory(store=xuhui)
    client.force_login(clerk)

    for survivor, duplicate in ((mine, elsewhere), (elsewhere, mine), (mine, mine)):
        assert client.get(_url(app, survivor, duplicate), **HX).status_code == 404


@pytest.mark.parametrize("app", PANELS)
def test_a_panel_answers_404_for_a_contact_merged_away(operator_client, app):
    survivor, duplicate, third = ContactFactory(), ContactFactory(), ContactFactory()
    contact_merge(survivor=survivor, duplicate=duplicate)

    assert operator_client.get(_url(app, survivor, duplicate), **HX).status_code == 404
    assert operator_client.get(_url(app, third, survivor), **HX).status_code == 200


def test_store_staff_see_the_panels_of_their_own_customers_but_no_segments(client, _roles, tiers):
    store = StoreFactory(name="静安店")
    clerk = user_with_role("store_staff", store=store)
    survivor, duplicate = ContactFactory(store=store), ContactFactory(store=store)
    _static("春季名单", duplicate)
    _earn(duplicate, 40, "d-1")
    client.force_login(clerk)
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "en"

    for app in PANELS:
        assert client.get(_url(app, survivor, duplicate), **HX).status_code == 200
    segments = client.get(_url("segments", survivor, duplicate), **HX).content.decode()
    assert "You may not see segments." in segments and "春季名单" not in segments


def test_the_membership_panel_needs_the_view_member_permission(client, filled_pair):
    survivor, duplicate = filled_pair
    merger = UserFactory(username="merger", is_superuser=False)
    merger.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="contacts", codename__in=["view_contact", "merge_contact"]
        )
    )
    client.force_login(merger)

    page = client.get(reverse("contacts:merge_preview", args=[survivor.pk, duplicate.pk]))

    assert page.status_code == 200
    assert _url("membership", survivor, duplicate) not in page.content.decode()
    assert _url("segments", survivor, duplicate) in page.content.decode()
    assert client.get(_url("membership", survivor, duplicate), **HX).status_code == 403


def test_analysts_may_read_the_panels_with_personal_data_masked(client, _roles, filled_pair):
    survivor, duplicate = filled_pair
    client.force_login(user_with_role("analyst"))

    for app in PANELS:
        response = client.get(_url(app, survivor, duplicate), **HX)
        content = response.content.decode()
        assert response.status_code == 200
        assert "+86138****8000" in content
        assert "13800138000" not in content and "13900139000" not in content
