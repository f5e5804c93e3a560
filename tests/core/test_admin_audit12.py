"""A change list of a large table is not counted row by row on every page load."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from contacts.models import Contact
from core.admin import LargeTablePaginator
from tests.factories import ContactFactory

pytestmark = pytest.mark.django_db


def _counts(queries, table: str) -> list[str]:
    return [q["sql"] for q in queries if "COUNT(" in q["sql"].upper() and table in q["sql"]]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the estimate is PostgreSQL's")
def test_an_unfiltered_large_list_shows_the_estimate_instead_of_counting(admin_client, monkeypatch):
    ContactFactory.create_batch(3)
    ContactFactory(name="王五")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE contacts_contact")
    # Four rows stand for a large table here.
    monkeypatch.setattr(LargeTablePaginator, "estimate_from", 2)
    url = reverse("admin:contacts_contact_changelist")

    with CaptureQueriesContext(connection) as queries:
        page = admin_client.get(url)

    assert page.status_code == 200
    assert page.context["cl"].result_count == 4
    assert _counts(queries, Contact._meta.db_table) == []

    # Searched, it is counted exactly.
    with CaptureQueriesContext(connection) as queries:
        found = admin_client.get(url, {"q": "王五"})
    assert found.context["cl"].result_count == 1
    assert _counts(queries, Contact._meta.db_table)


def test_a_small_or_filtered_list_is_counted_exactly(admin_client):
    ContactFactory.create_batch(3)
    url = reverse("admin:contacts_contact_changelist")
    assert admin_client.get(url).context["cl"].result_count == 3
    assert admin_client.get(url, {"gender__exact": "female"}).context["cl"].result_count == 0
