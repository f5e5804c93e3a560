"""The audit log's filters read only the newest entries (no DISTINCT scan of a log of millions
of rows per page load), and derived rows cannot be added or edited in the admin."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from core.admin import RecentValuesFilter
from core.models import AuditLog
from segments.models import DirtyContact, RFMLayer, RFMScore
from tests.factories import ContactFactory

pytestmark = pytest.mark.django_db

AUDIT = reverse("admin:core_auditlog_changelist")


def _rfm_score(contact) -> RFMScore:
    """A stored score of R 5, F 3, M 3 (what the nightly RFM run writes)."""
    return RFMScore.objects.create(
        contact=contact,
        recency_days=3,
        frequency=2,
        monetary=100,
        r_score=5,
        f_score=3,
        m_score=3,
        layer=RFMLayer.choices[0][0],
        computed_at=timezone.now(),
    )


@pytest.fixture
def english(settings):
    settings.LANGUAGE_CODE = "en"


def _entries(action: str, object_type: str, n: int = 1) -> None:
    AuditLog.objects.bulk_create(
        [AuditLog(action=action, object_type=object_type, object_id=str(i)) for i in range(n)]
    )


def test_filter_choices_come_from_the_newest_entries_without_a_distinct_scan(
    admin_client, monkeypatch, english
):
    monkeypatch.setattr(RecentValuesFilter, "recent", 3)
    _entries("contact.unmask", "contacts.contact")  # older than the newest three
    _entries("contacts.export", "core.job", n=3)

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(AUDIT)

    assert response.status_code == 200
    choices = {
        spec.title: [choice["display"] for choice in spec.choices(response.context["cl"])]
        for spec in response.context["cl"].filter_specs
    }
    assert choices["action"] == ["All", "contacts.export"]
    assert choices["object type"] == ["All", "core.job"]
    audit_table = AuditLog._meta.db_table
    assert not [
        q["sql"] for q in queries if "DISTINCT" in q["sql"].upper() and audit_table in q["sql"]
    ]


def test_filtering_by_an_older_value_still_works_and_shows_it_chosen(admin_client, monkeypatch):
    monkeypatch.setattr(RecentValuesFilter, "recent", 3)
    _entries("contact.unmask", "contacts.contact")
    _entries("contacts.export", "core.job", n=3)

    response = admin_client.get(AUDIT, {"action__exact": "contact.unmask"})

    assert [e.action for e in response.context["cl"].result_list] == ["contact.unmask"]
    action = response.context["cl"].filter_specs[0]
    selected = [c["display"] for c in action.choices(response.context["cl"]) if c["selected"]]
    assert selected == ["contact.unmask"]


def test_filtering_by_object_type(admin_client):
    _entries("contact.unmask", "contacts.contact", n=2)
    _entries("contacts.export", "core.job")

    response = admin_client.get(AUDIT, {"object_type__exact": "core.job"})

    assert [e.object_type for e in response.context["cl"].result_list] == ["core.job"]


@pytest.mark.parametrize("model", [DirtyContact, RFMScore])
def test_derived_rows_are_neither_added_nor_edited(admin_client, model):
    contact = ContactFactory()
    if model is DirtyContact:
        row = DirtyContact.objects.create(contact_id=contact.pk, topics=1)
    else:
        row = _rfm_score(contact)
    opts = model._meta
    name = f"admin:{opts.app_label}_{opts.model_name}"
    pk = row.contact_id if model is DirtyContact else row.pk

    assert admin_client.get(reverse(f"{name}_changelist")).status_code == 200
    assert admin_client.get(reverse(f"{name}_add")).status_code == 403
    assert admin_client.post(reverse(f"{name}_change", args=[pk]), {}).status_code == 403
    change = admin_client.get(reverse(f"{name}_change", args=[pk]))
    assert change.status_code == 200
    assert not change.context["has_change_permission"]
    assert model.objects.count() == 1


def test_rfm_scores_filter_by_fixed_choices_without_a_distinct_scan(admin_client):
    contact = ContactFactory()
    _rfm_score(contact)
    url = reverse("admin:segments_rfmscore_changelist")

    with CaptureQueriesContext(connection) as queries:
        listed = admin_client.get(url, {"r_score__exact": "5"})
    missed = admin_client.get(url, {"r_score__exact": "4"})

    assert [row.pk for row in listed.context["cl"].result_list] == [contact.pk]
    assert list(missed.context["cl"].result_list) == []
    assert not [q["sql"] for q in queries if "DISTINCT" in q["sql"].upper()]
