"""The active and completed counts on the journey pages count what the user may see: store
staff their own and their store's customers, as in the enrollment table below them; nobody
counts the enrollments left with merged-away contacts."""

import re

import pytest
from django.urls import reverse

from contacts import roles
from contacts.models import Contact
from journeys import selectors
from journeys.models import Enrollment, EnrollmentStatus
from tests.factories import ContactFactory, JourneyFactory, StoreFactory, user_with_role

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
ACTIVE, COMPLETED = EnrollmentStatus.ACTIVE, EnrollmentStatus.COMPLETED


@pytest.fixture(autouse=True)
def _roles(db):
    roles.roles_sync()


@pytest.fixture
def world():
    """One journey; per visibility group, one active and one completed enrollment, except the
    store's customers, who have two completed ones."""
    jingan, xuhui = StoreFactory(name="静安店"), StoreFactory(name="徐汇店")
    clerk = user_with_role("store_staff", store=jingan)
    journey = JourneyFactory(name="新客欢迎")

    def enrol(status, **contact):
        Enrollment.objects.create(journey=journey, contact=ContactFactory(**contact), status=status)

    for status in (ACTIVE, COMPLETED, COMPLETED):
        enrol(status, store=jingan)
    for status in (ACTIVE, COMPLETED):
        enrol(status, owner=clerk)  # the clerk's own customers, of no store
        enrol(status, store=xuhui)
        enrol(status)
    return {"journey": journey, "clerk": clerk, "jingan": jingan}


def _list_counts(html: str, journey) -> tuple[str, str]:
    row = html[html.index(reverse("journeys:detail", args=[journey.pk])) :]
    row = row[: row.index("</tr>")]
    active, completed = re.findall(r'<td class="num">([^<]*)</td>', row)
    return active, completed


def _detail_counts(html: str) -> dict[str, str]:
    pairs = re.findall(
        r'<span class="stat-label">([^<]+)</span><span class="mini-value">([^<]*)</span>', html
    )
    return dict(pairs)


def test_store_staff_count_only_the_enrollments_they_may_see(client, world):
    client.force_login(world["clerk"])

    listing = client.get(reverse("journeys:list"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    fragment = client.get(reverse("journeys:list"), **HX).content.decode()
    detail = client.get(
        reverse("journeys:detail", args=[world["journey"].pk]), HTTP_ACCEPT_LANGUAGE="en"
    ).content.decode()

    # Their store's 1 active + 2 completed and their own 1 active + 1 completed.
    assert _list_counts(listing, world["journey"]) == ("2", "3")
    assert _list_counts(fragment, world["journey"]) == ("2", "3")
    assert _detail_counts(detail) == {"Active": "2", "Completed": "3"}


def test_the_detail_counts_match_the_enrollment_table(client, world):
    client.force_login(world["clerk"])

    detail = client.get(
        reverse("journeys:detail", args=[world["journey"].pk]), HTTP_ACCEPT_LANGUAGE="en"
    ).content.decode()

    table = detail[detail.index('<section id="journey-enrollments"') :]
    shown = re.findall(r'<span class="badge badge-status-(\w+)">', table)
    counts = _detail_counts(detail)
    assert int(counts["Active"]) == shown.count("active")
    assert int(counts["Completed"]) == shown.count("completed")


@pytest.mark.parametrize("role", ["operator", "analyst"])
def test_roles_that_see_every_contact_count_them_all(client, world, role):
    client.force_login(user_with_role(role))

    listing = client.get(reverse("journeys:list")).content.decode()
    detail = client.get(
        reverse("journeys:detail", args=[world["journey"].pk]), HTTP_ACCEPT_LANGUAGE="en"
    ).content.decode()

    assert _list_counts(listing, world["journey"]) == ("4", "5")
    assert _detail_counts(detail) == {"Active": "4", "Completed": "5"}


def test_a_store_clerk_without_a_store_counts_only_their_own(client, world):
    loner = user_with_role("store_staff")
    Enrollment.objects.create(
        journey=world["journey"], contact=ContactFactory(owner=loner), status=COMPLETED
    )
    client.force_login(loner)

    listing = client.get(reverse("journeys:list")).content.decode()

    assert _list_counts(listing, world["journey"]) == ("0", "1")


def test_merged_away_contacts_count_for_nobody(client, operator, world):
    survivor = ContactFactory(store=world["jingan"])
    duplicate = ContactFactory(store=world["jingan"])
    for contact in (survivor, duplicate):
        Enrollment.objects.create(journey=world["journey"], contact=contact, status=COMPLETED)
    Contact.objects.filter(pk=duplicate.pk).update(merged_into=survivor)

    for user, expected in ((operator, ("4", "6")), (world["clerk"], ("2", "4"))):
        client.force_login(user)
        listing = client.get(reverse("journeys:list")).content.decode()
        assert _list_counts(listing, world["journey"]) == expected


def test_counts_are_grouped_by_thousands(client, operator):
    journey = JourneyFactory()
    contacts = ContactFactory.create_batch(1001)
    Enrollment.objects.bulk_create(
        Enrollment(journey=journey, contact=contact, status=COMPLETED) for contact in contacts
    )
    client.force_login(operator)

    for language in ("zh-hans", "en"):
        listing = client.get(reverse("journeys:list"), HTTP_ACCEPT_LANGUAGE=language)
        assert _list_counts(listing.content.decode(), journey) == ("0", "1,001")


def test_the_list_counts_in_one_query(django_assert_num_queries, world):
    for _ in range(3):
        JourneyFactory()
    visible = Contact.objects.filter(store=world["jingan"])

    with django_assert_num_queries(1):
        rows = {j.pk: (j.active_count, j.completed_count) for j in selectors.journey_list()}
    with django_assert_num_queries(1):
        scoped = {
            j.pk: (j.active_count, j.completed_count)
            for j in selectors.journey_list(contacts=visible)
        }

    assert rows[world["journey"].pk] == (4, 5) and scoped[world["journey"].pk] == (1, 2)
    assert len(rows) == len(scoped) == 4
