import datetime as dt
import random
from collections import defaultdict
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from contacts.services import contact_merge
from segments import influence, tasks
from segments.models import Influence
from tests.factories import ContactFactory, EventFactory, UserFactory

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


def _ev(contact, name, value=None, days_ago=1, **properties):
    return EventFactory(
        contact=contact,
        name=name,
        value=value,
        properties=properties,
        occurred_at=timezone.now() - dt.timedelta(days=days_ago),
    )


def _row(contact) -> Influence:
    return Influence.objects.get(contact=contact)


def test_components_from_referrals_purchases_shares_and_reach():
    koc, a, b, c = (ContactFactory() for _ in range(4))
    # Two invitees; the repeat of a's acceptance and a self-referral do not count.
    _ev(a, "referral_accepted", referrer_contact_id=koc.pk)
    _ev(a, "referral_accepted", referrer_contact_id=koc.pk)
    _ev(b, "referral_accepted", referrer_contact_id=str(koc.pk))
    _ev(koc, "referral_accepted", referrer_contact_id=koc.pk)
    # Referred purchases (value = revenue); koc's own purchase naming itself is ignored.
    _ev(a, "purchase", value=Decimal("120.50"), referrer_contact_id=koc.pk)
    _ev(b, "purchase", value=Decimal("79.50"), referrer_contact_id=koc.pk)
    _ev(koc, "purchase", value=Decimal("999"), referrer_contact_id=koc.pk)
    _ev(c, "purchase", value=Decimal("50"))
    # Shares and who came through them.
    _ev(koc, "share", share_id="s1")
    _ev(koc, "share", share_id="s2")
    _ev(a, "page_view", share_id="s1")
    _ev(a, "page_view", share_id="s2")
    _ev(c, "qr_scanned", from_contact_id=koc.pk)
    _ev(koc, "page_view", share_id="s1")
    _ev(c, "page_view", share_id="unknown")
    # Outside the window.
    _ev(c, "referral_accepted", days_ago=400, referrer_contact_id=koc.pk)

    result = influence.influence_compute()

    row = _row(koc)
    assert (row.invites_accepted, row.referred_purchases, row.referred_revenue) == (
        2,
        2,
        Decimal("200.00"),
    )
    assert (row.shares, row.share_reach) == (2, 2)
    assert row.score == pytest.approx(5 * 2 + 3 * 2 + 0.01 * 200 + 1 * 2 + 0.5 * 2)
    assert result["contacts"] == 1
    assert not Influence.objects.filter(contact__in=[a, b, c]).exists()


def test_referrals_to_a_merged_contact_count_for_the_survivor():
    survivor, duplicate, invitee = ContactFactory(), ContactFactory(), ContactFactory()
    _ev(invitee, "referral_accepted", referrer_contact_id=duplicate.pk)
    _ev(survivor, "share", share_id="x")
    contact_merge(survivor=survivor, duplicate=duplicate)

    influence.influence_compute()

    assert _row(survivor).invites_accepted == 1
    assert not Influence.objects.filter(contact=duplicate).exists()


def _oracle(events, window_start):
    """Plain-Python influence over generated events, for comparison."""
    invitees, purchases, revenue, shares, reached = (
        defaultdict(set),
        defaultdict(int),
        defaultdict(Decimal),
        defaultdict(int),
        defaultdict(set),
    )
    owner = {
        e["props"]["share_id"]: e["contact"]
        for e in events
        if e["name"] == "share" and e["at"] >= window_start
    }
    for e in events:
        if e["at"] < window_start:
            continue
        props, who = e["props"], e["contact"]
        if e["name"] == "referral_accepted" and props["referrer_contact_id"] != who:
            invitees[props["referrer_contact_id"]].add(who)
        elif e["name"] == "purchase" and props.get("referrer_contact_id") not in (None, who):
            purchases[props["referrer_contact_id"]] += 1
            revenue[props["referrer_contact_id"]] += e["value"]
        elif e["name"] == "share":
            shares[who] += 1
        elif e["name"] == "page_view":
            sharer = owner.get(props["share_id"])
            if sharer is not None and sharer != who:
                reached[sharer].add(who)
    people = set(invitees) | set(purchases) | set(shares) | set(reached)
    return {
        pk: influence.influence_score(
            {
                "invites_accepted": len(invitees[pk]),
                "referred_purchases": purchases[pk],
                "referred_revenue": revenue[pk],
                "shares": shares[pk],
                "share_reach": len(reached[pk]),
            }
        )
        for pk in people
    }


@override_settings(SCRM_KOC_MIN_SCORE=10, SCRM_KOC_TOP_PERCENT=20)
def test_ranking_and_koc_flags_on_generated_data():
    rng = random.Random(7)
    contacts = [ContactFactory().pk for _ in range(40)]
    now = timezone.now()
    generated = []
    for i in range(300):
        who = rng.choice(contacts)
        kind = rng.choice(["referral_accepted", "purchase", "share", "page_view"])
        props: dict = {}
        value = None
        if kind == "referral_accepted":
            props["referrer_contact_id"] = rng.choice(contacts[:10])
        elif kind == "purchase":
            value = Decimal(rng.randint(10, 900))
            if rng.random() < 0.6:
                props["referrer_contact_id"] = rng.choice(contacts[:10])
        elif kind == "share":
            props["share_id"] = f"share-{i}"
        else:
            props["share_id"] = f"share-{rng.randint(0, 299)}"
        at = now - dt.timedelta(days=rng.randint(0, 500))
        generated.append({"name": kind, "contact": who, "props": props, "value": value, "at": at})
        EventFactory(contact_id=who, name=kind, properties=props, value=value, occurred_at=at)

    influence.influence_compute(now=now)

    expected = _oracle(generated, now - dt.timedelta(days=365))
    stored = dict(Influence.objects.values_list("contact_id", "score"))
    assert stored.keys() == expected.keys()
    for pk, score in expected.items():
        assert stored[pk] == pytest.approx(score, abs=1e-3)
    ranked = sorted(expected.items(), key=lambda t: (-t[1], t[0]))
    top_n = -(-len(ranked) * 20 // 100)
    kocs = {pk for pk, s in ranked[:top_n] if s >= 10}
    assert set(Influence.objects.filter(is_koc=True).values_list("contact_id", flat=True)) == kocs
    assert [r.contact_id for r in influence.koc_ranking(limit=5)] == [pk for pk, _ in ranked[:5]]


def test_recompute_is_idempotent_and_drops_stale_rows():
    koc, a = ContactFactory(), ContactFactory()
    share = _ev(koc, "share", share_id="s")
    influence.influence_compute()
    first = list(Influence.objects.values_list("contact_id", "score", "shares"))
    influence.influence_compute()
    assert list(Influence.objects.values_list("contact_id", "score", "shares")) == first

    share.delete()
    result = influence.influence_compute()
    assert result["removed"] == 1 and not Influence.objects.exists()
    assert a.pk  # a never had influence


def test_koc_needs_the_minimum_score_even_at_the_top():
    lonely = ContactFactory()
    _ev(lonely, "share", share_id="s")
    influence.influence_compute()
    assert _row(lonely).is_koc is False


def test_task_computes_influence():
    koc = ContactFactory()
    for i in range(25):
        _ev(koc, "share", share_id=f"s{i}")
    assert tasks.influence_compute()["kocs"] == 1
    assert _row(koc).is_koc


# --- Page -------------------------------------------------------------------------------------


def _user(*codenames):
    user = UserFactory(is_superuser=False, is_staff=False)
    for codename in codenames:
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label="segments", codename=codename)
        )
    return user


def test_koc_page_ranks_with_components_and_links(operator_client):
    koc = ContactFactory(name="分享达人")
    other = ContactFactory(name="普通客户")
    for i in range(30):
        _ev(koc, "share", share_id=f"s{i}")
    _ev(other, "share", share_id="o")
    influence.influence_compute()

    html = operator_client.get(reverse("segments:koc")).content.decode()
    assert html.index("分享达人") < html.index("普通客户")
    assert reverse("contacts:detail", args=[koc.pk]) in html
    assert _zh("Recompute now") in html

    only = operator_client.get(reverse("segments:koc") + "?koc=1", **HX).content.decode()
    assert only.lstrip().startswith('<section id="koc-table"')
    assert "分享达人" in only and "普通客户" not in only


def test_koc_page_permissions(client, django_capture_on_commit_callbacks):
    client.force_login(_user())
    assert client.get(reverse("segments:koc")).status_code == 403

    client.force_login(_user("view_segment"))
    page = client.get(reverse("segments:koc"))
    assert page.status_code == 200 and _zh("Recompute now") not in page.content.decode()
    assert client.post(reverse("segments:koc_recompute")).status_code == 403

    koc = ContactFactory()
    _ev(koc, "share", share_id="s")
    client.force_login(_user("view_segment", "change_segment"))
    # The recompute is queued after commit (as a job the page watches).
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("segments:koc_recompute"))
    assert response.status_code == 302
    assert Influence.objects.filter(contact=koc).exists()


def _zh(msgid: str) -> str:
    """The text as the default (Chinese) UI shows it."""
    from django.utils import translation

    with translation.override("zh-hans"):
        return translation.gettext(msgid)
