import datetime as dt
import re
from collections import Counter
from decimal import Decimal
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from django.db.models import Count, Sum
from django.urls import reverse
from django.utils import timezone

from channels.models import Channel, Delivery
from contacts import roles
from contacts.models import (
    Contact,
    ContactTag,
    Event,
    Identity,
    IdentityKind,
    StaffProfile,
    Store,
    Tag,
    TagGroup,
)
from contacts.selectors import contact_visible_to
from contacts.services import contact_tag_add
from journeys.demo import catalog
from journeys.demo.services import demo_seed
from journeys.models import Enrollment, Journey, JourneyStatus, StepKind
from journeys.services import enrollments_advance_due
from membership.models import Member, PointsEntry, Tier
from membership.services import points_for_amount
from segments import influence
from segments.models import Influence, RFMRun, RFMScore, Segment

pytestmark = pytest.mark.django_db

CHINESE_NAME = re.compile(r"^[\u4e00-\u9fff]{2,4}$")
CN_MOBILE_E164 = re.compile(r"^\+861[3-9]\d{9}$")


def seed(contacts: int = 50, **options) -> str:
    out = StringIO()
    call_command("seed_demo", contacts=contacts, stdout=out, stderr=StringIO(), **options)
    return out.getvalue()


@pytest.fixture
def seeded():
    return seed()


def test_contacts_look_like_chinese_customers(seeded):
    contacts = list(Contact.objects.all())
    assert len(contacts) == 50
    named = [c for c in contacts if c.name]
    assert len(named) > 30
    assert all(CHINESE_NAME.match(c.name) for c in named)
    phones = [c.phone for c in contacts if c.phone]
    assert len(phones) > 30
    assert all(CN_MOBILE_E164.match(p) for p in phones)
    assert len(set(phones)) == len(phones)
    cities = {(c.province, c.city) for c in contacts}
    assert {city for _, city in cities} <= {row[1] for row in catalog.CITIES}
    assert {c.source for c in contacts} <= {row[0] for row in catalog.SOURCES}
    assert len({c.lifecycle_stage for c in contacts}) >= 3
    assert all(c.last_seen_at >= c.created_at for c in contacts)
    # Seen first when they arrived: the 360 page shows both dates.
    assert all(c.first_seen_at == c.created_at for c in contacts)


def test_every_phone_and_wechat_identity_is_recorded(seeded):
    for contact in Contact.objects.exclude(phone=""):
        assert Identity.objects.filter(
            contact=contact, kind=IdentityKind.PHONE, value=contact.phone
        ).exists()
    kinds = dict(Identity.objects.values_list("kind").annotate(n=Count("id")))
    assert kinds[IdentityKind.WECHAT_UNIONID] > 25
    assert kinds[IdentityKind.MINIPROGRAM_OPENID] > 15
    assert (
        not Identity.objects.filter(kind=IdentityKind.MINIPROGRAM_OPENID)
        .exclude(app_id=catalog.DEMO_MINIPROGRAM_APP_ID)
        .exists()
    )
    assert (
        not Identity.objects.filter(kind=IdentityKind.WECHAT_OPENID)
        .exclude(app_id=catalog.DEMO_OFFICIAL_ACCOUNT_APP_ID)
        .exists()
    )


def test_events_span_ninety_days_and_purchases_carry_their_amount(seeded):
    now = timezone.now()
    demo_events = Event.objects.filter(event_id__startswith="demo-")
    assert demo_events.count() > 50 * 10
    assert not demo_events.filter(occurred_at__lt=now - dt.timedelta(days=90)).exists()
    assert not demo_events.filter(occurred_at__gt=now).exists()
    purchases = demo_events.filter(name="purchase")
    assert 0 < purchases.count() < demo_events.count() / 4
    for event in purchases:
        assert event.value is not None and event.value > 0
        assert Decimal(str(event.properties["amount"])) == event.value
        assert event.properties["order_id"] and event.properties["product"]
    assert not demo_events.exclude(name="purchase").filter(value__isnull=False).exists()
    for contact in Contact.objects.all():
        first = Event.objects.filter(contact=contact).order_by("occurred_at").first()
        assert first.occurred_at >= contact.created_at


def test_points_ledgers_add_up_and_tiers_follow_growth(seeded):
    tiers = list(Tier.objects.order_by("-min_growth"))
    assert [t.name for t in reversed(tiers)] == ["普通会员", "银卡会员", "金卡会员", "黑金会员"]
    members = Member.objects.all()
    assert members.count() > 5
    for member in members:
        entries = list(member.points_entries.order_by("created_at", "pk"))
        assert member.points_balance == sum(e.delta for e in entries)
        running = 0
        for entry in entries:
            running += entry.delta
            assert entry.balance_after == running >= 0
        earned = [e for e in entries if e.reason == PointsEntry.Reason.PURCHASE]
        assert member.growth_value == sum(e.delta for e in earned)
        for entry in earned:
            assert entry.source_event.contact_id == member.contact_id
            assert entry.delta == points_for_amount(entry.source_event.value)
            assert entry.idempotency_key == f"event:{entry.source_event.event_id}"
        expected = next(t for t in tiers if t.min_growth <= member.growth_value)
        assert member.tier == expected
    buyers = Event.objects.filter(name="purchase").values("contact").distinct().count()
    assert Member.objects.filter(growth_value__gt=0).count() == buyers


def test_tags_segments_journey_and_login_are_ready(seeded):
    assert set(TagGroup.objects.values_list("name", flat=True)) >= {"兴趣", "价值", "渠道"}
    assert ContactTag.objects.count() > 50
    high_value = Tag.objects.get(name="高价值")
    for name in ("高价值客户", "VIP 关怀"):
        segment = Segment.objects.get(name=name)
        tagged = ContactTag.objects.filter(tag=high_value).count()
        assert segment.member_count == segment.memberships.count() == tagged
    assert Segment.objects.get(name="新客（近7天）").member_count > 0
    shanghai = Segment.objects.get(name="上海护肤兴趣客户")
    assert all(
        c.city == "上海" for c in Contact.objects.filter(segment_memberships__segment=shanghai)
    )

    journey = Journey.objects.get(name="VIP 关怀旅程")
    assert journey.status == JourneyStatus.LIVE
    assert journey.trigger_segment.name == "VIP 关怀"
    wait, send = journey.steps.order_by("position")
    assert (wait.kind, wait.wait_seconds) == (StepKind.WAIT, 60)
    assert (send.kind, send.title) == (StepKind.SEND, "专属关怀")
    assert send.channel == Channel.objects.get(name="控制台（演示）")
    # Contacts already in the segment when the journey went live are not messaged.
    assert not Enrollment.objects.exists()

    user = get_user_model().objects.get(username="demo")
    assert user.is_superuser and user.check_password("demo12345")
    assert "demo / demo12345" in seeded


def test_tagging_a_contact_high_value_sends_the_vip_message_after_a_minute(
    seeded, django_capture_on_commit_callbacks
):
    contact = Contact.objects.exclude(contact_tags__tag__name="高价值").first()
    with django_capture_on_commit_callbacks(execute=True):
        contact_tag_add(contact=contact, tag=Tag.objects.get(name="高价值"))
    enrollment = Enrollment.objects.get(contact=contact, journey__name="VIP 关怀旅程")

    enrollments_advance_due()  # runs the wait step
    assert not Delivery.objects.filter(contact=contact).exists()
    Enrollment.objects.filter(pk=enrollment.pk).update(next_run_at=timezone.now())
    enrollments_advance_due()
    delivery = Delivery.objects.get(contact=contact)
    assert delivery.payload["title"] == "专属关怀"


def test_rfm_layers_and_koc_influence_are_computed_as_the_nightly_passes_do(seeded):
    run = RFMRun.objects.get()
    buyers = set(Event.objects.filter(name="purchase").values_list("contact_id", flat=True))
    assert run.contacts == len(buyers) > 0
    assert set(RFMScore.objects.values_list("contact_id", flat=True)) == buyers
    assert sum(run.layer_counts.values()) == run.contacts
    assert "RFM layers: " in seeded and f"{run.contacts:,} buyers" in seeded

    # Some contacts joined on an earlier contact's invitation, after that contact joined.
    referrals = Event.objects.filter(name=influence.REFERRAL_EVENT).select_related("contact")
    assert referrals.exists()
    invitees: dict[int, set[int]] = {}
    for event in referrals:
        referrer = Contact.objects.get(pk=event.properties["referrer_contact_id"])
        assert referrer.pk != event.contact_id
        assert referrer.created_at < event.occurred_at == event.contact.created_at
        invitees.setdefault(referrer.pk, set()).add(event.contact_id)
    scored = {row.contact_id: row for row in Influence.objects.all()}
    for referrer, invited in invitees.items():
        assert scored[referrer].invites_accepted == len(invited)
    sharers = set(Event.objects.filter(name="share").values_list("contact_id", flat=True))
    assert set(scored) == sharers | set(invitees)
    # An invitee's arrival and first purchase name the ambassador: reach and referred orders.
    reached: dict[int, set[int]] = {}
    for event in Event.objects.filter(properties__has_key="from_contact_id"):
        assert event.name in ("page_view", "qr_scanned")
        reached.setdefault(event.properties["from_contact_id"], set()).add(event.contact_id)
    referred = Counter(
        event.properties["referrer_contact_id"]
        for event in Event.objects.filter(
            name="purchase", properties__has_key="referrer_contact_id"
        )
    )
    assert reached and referred
    assert set(reached) | set(referred) <= set(invitees)
    for referrer, visitors in reached.items():
        assert scored[referrer].share_reach >= len(visitors)
    for referrer, purchases in referred.items():
        assert scored[referrer].referred_purchases == purchases
    kocs = Influence.objects.filter(is_koc=True)
    assert kocs.exists()
    assert f"{kocs.count():,} of them KOCs" in seeded


def test_the_rfm_and_koc_pages_show_the_demo_at_once(seeded, client):
    client.force_login(get_user_model().objects.get(username="demo"))
    rfm_page = client.get(reverse("segments:rfm"), headers={"accept-language": "zh-hans"})
    koc_page = client.get(
        reverse("segments:koc"), {"koc": "1"}, headers={"accept-language": "zh-hans"}
    )
    assert rfm_page.status_code == koc_page.status_code == 200
    top = Influence.objects.filter(is_koc=True).order_by("-score").first()
    for page in (rfm_page, koc_page):
        assert "尚未计算" not in page.content.decode()
    assert top.contact.display_name in koc_page.content.decode()


def test_running_twice_duplicates_nothing(seeded):
    counts = {
        model: model.objects.count()
        for model in (Contact, Identity, Event, ContactTag, Member, PointsEntry, Tier, Tag)
    }
    counts.update({RFMRun: RFMRun.objects.count(), Influence: Influence.objects.count()})
    computed_at = influence.influence_last_computed_at()
    counts.update({Segment: Segment.objects.count(), Journey: Journey.objects.count()})
    output = seed()
    assert "already loaded" in output
    for model, count in counts.items():
        assert model.objects.count() == count, model.__name__
    # Unchanged data: the scores already computed are kept, not worked out again.
    assert influence.influence_last_computed_at() == computed_at
    assert "RFM layers: already computed" in output
    assert get_user_model().objects.filter(username="demo").count() == 1


def test_a_big_load_puts_back_every_index_and_foreign_key():
    loaded = [Contact, Identity, Event, ContactTag, Member, PointsEntry]

    def constraints():
        with connection.cursor() as cursor:
            return {
                model: set(connection.introspection.get_constraints(cursor, model._meta.db_table))
                for model in loaded
            }

    before = constraints()
    result = demo_seed(contacts=30, defer_indexes=True)
    assert result.contacts == Contact.objects.count() == 30
    assert constraints() == before


def test_same_seed_gives_same_data():
    seed(contacts=20, seed=7)
    first = list(Contact.objects.order_by("pk").values_list("name", "phone", "city"))
    revenue = Event.objects.filter(name="purchase").aggregate(s=Sum("value"))["s"]
    Contact.objects.all().delete()
    seed(contacts=20, seed=7)
    assert list(Contact.objects.order_by("pk").values_list("name", "phone", "city")) == first
    assert Event.objects.filter(name="purchase").aggregate(s=Sum("value"))["s"] == revenue


def test_store_staff_and_analyst_demo_users_see_what_their_roles_allow(seeded, client):
    store = Store.objects.get(code="sh-jingan")
    staff = get_user_model().objects.get(username="store")
    analyst = get_user_model().objects.get(username="analyst")
    assert staff.check_password("store12345") and analyst.check_password("analyst12345")
    assert not staff.is_superuser and not analyst.is_superuser
    assert roles.user_role_names(staff) == [roles.STORE_STAFF]
    assert roles.user_role_names(analyst) == [roles.ANALYST]
    assert StaffProfile.objects.get(user=staff).store == store
    assert "store / store12345" in seeded and "analyst / analyst12345" in seeded

    # The store's customers are the demo contacts in its city; the user owns some of them.
    store_contacts = Contact.objects.filter(store=store)
    assert store_contacts.exists()
    assert set(store_contacts.values_list("city", flat=True)) == {"上海"}
    owned = Contact.objects.filter(owner=staff)
    assert 0 < owned.count() <= store_contacts.count()
    assert set(contact_visible_to(user=staff)) == set(store_contacts)
    assert contact_visible_to(user=analyst).count() == 50

    client.force_login(staff)
    page = client.get(reverse("contacts:detail", args=[owned.first().pk]))
    assert page.status_code == 200
    outside = Contact.objects.exclude(store=store).first()
    assert client.get(reverse("contacts:detail", args=[outside.pk])).status_code == 404
    client.force_login(analyst)
    assert client.get(reverse("contacts:detail", args=[outside.pk])).status_code == 200
    assert (
        client.post(reverse("contacts:edit", args=[outside.pk]), {"name": "x"}).status_code == 403
    )


def test_a_second_seed_keeps_the_demo_users_and_their_contacts(seeded):
    staff = get_user_model().objects.get(username="store")
    staff.set_password("changed-by-the-owner")
    staff.save()
    moved = Contact.objects.filter(owner=staff).first()
    Contact.objects.filter(pk=moved.pk).update(owner=None)
    before = set(Contact.objects.filter(store__code="sh-jingan").values_list("pk", flat=True))

    again = seed()

    staff.refresh_from_db()
    assert staff.check_password("changed-by-the-owner")
    assert "store (password unchanged)" in again
    assert get_user_model().objects.filter(username__in=["store", "analyst"]).count() == 2
    assert (
        set(Contact.objects.filter(store__code="sh-jingan").values_list("pk", flat=True)) == before
    )
    assert Contact.objects.get(pk=moved.pk).owner is None
