"""Ids and dates no row can have: refused by name or matching nothing, never a server error.

SQLite cannot bind an integer beyond 64 bits and PostgreSQL fails casting it to bigint; a date at
the end of the calendar has no next day.
"""

import datetime as dt
from urllib.parse import quote

import pytest
from django.urls import reverse
from django.utils import timezone

from contacts import exporters
from contacts.models import ContactTag, Event
from contacts.services import tags_resolve
from core.errors import ValidationFailed
from core.ids import MAX_ID, parse_id
from tests.factories import ContactFactory, EventFactory, TagFactory

pytestmark = pytest.mark.django_db

HUGE = 2**63
GOOD_EVENT = {
    "event_id": "good-1",
    "name": "view_product",
    "occurred_at": "2026-01-02T10:00:00+08:00",
}


@pytest.fixture
def english_client(operator_client):
    operator_client.cookies["django_language"] = "en"
    return operator_client


def _messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# --- The events API ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "contact_id,reason",
    [
        (HUGE, f"contact_id: Ensure this value is less than or equal to {MAX_ID}."),
        (10**30, f"contact_id: Ensure this value is less than or equal to {MAX_ID}."),
        (0, "contact_id: Ensure this value is greater than or equal to 1."),
    ],
)
def test_an_event_for_an_impossible_contact_id_is_rejected_alone(api, contact_id, reason):
    contact = ContactFactory()
    bad = {**GOOD_EVENT, "event_id": "bad-1", "contact_id": contact_id}
    response = api.post(
        "/api/v1/events",
        {"events": [{**GOOD_EVENT, "contact_id": contact.pk}, bad]},
        format="json",
    )
    assert response.status_code == 200
    answer = response.json()
    assert (answer["accepted"], answer["rejected"]) == (1, 1)
    assert answer["results"][1]["reason"] == reason
    assert list(Event.objects.values_list("event_id", flat=True)) == ["good-1"]


def test_an_event_for_the_largest_possible_id_is_an_unknown_contact(api):
    response = api.post(
        "/api/v1/events", {"events": [{**GOOD_EVENT, "contact_id": MAX_ID}]}, format="json"
    )
    assert response.json()["results"][0]["reason"] == f"Contact {MAX_ID} does not exist."


# --- Tags by id and by name -------------------------------------------------------------------


@pytest.mark.parametrize("ref", [HUGE, str(HUGE), "9" * 5000, "²", "١٢", 0, -3, True, 1.5])
def test_tag_references_no_tag_can_have_are_unknown_tags(api, ref):
    TagFactory()
    contact = ContactFactory()
    response = api.post(f"/api/v1/contacts/{contact.pk}/tags", {"tags": [ref]}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unknown_tag"
    assert not ContactTag.objects.exists()


def test_removing_a_tag_by_an_impossible_id_is_an_unknown_tag(api):
    contact = ContactFactory()
    response = api.delete(f"/api/v1/contacts/{contact.pk}/tags/{HUGE}")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unknown_tag"


@pytest.mark.parametrize("ref", ["兴趣\x00/护肤", "兴趣/护\x00肤", "\x00"])
def test_a_tag_reference_with_a_nul_character_is_refused_by_name(api, ref):
    TagFactory(name="护肤", group__name="兴趣")
    contact = ContactFactory()
    response = api.post(
        f"/api/v1/contacts/{contact.pk}/tags", {"tags": ["兴趣/护肤", ref]}, format="json"
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_tag"
    assert "NUL" in error["message"]
    assert not ContactTag.objects.exists()


def test_a_nul_in_a_removed_tag_is_refused_by_name(api):
    contact = ContactFactory()
    response = api.delete(f"/api/v1/contacts/{contact.pk}/tags/{quote('兴趣/a' + chr(0))}")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_tag"


def test_tags_are_still_found_by_id_padded_id_and_name():
    tag = TagFactory(name="护肤", group__name="兴趣")
    assert tags_resolve(refs=[tag.pk, f" {tag.pk} ", f"00{tag.pk}", "兴趣/护肤"]) == [tag]
    with pytest.raises(ValidationFailed):
        tags_resolve(refs=[MAX_ID])


@pytest.mark.parametrize(
    "raw,expected",
    [(1, 1), ("42", 42), (" 7 ", 7), (MAX_ID, MAX_ID), (str(MAX_ID), MAX_ID), ("0" * 30 + "5", 5)]
    + [(v, None) for v in (HUGE, str(HUGE), 0, -1, "-1", "²", "1e3", "", None, True, 2.0)]
    + [("9" * 5000, None)],
)
def test_parse_id_accepts_only_ids_a_row_can_have(raw, expected):
    assert parse_id(raw) == expected


# --- The timeline and the 360 page ------------------------------------------------------------


def test_timeline_refuses_a_cursor_no_event_can_have(api):
    contact = ContactFactory()
    response = api.get(f"/api/v1/contacts/{contact.pk}/timeline", {"before": HUGE})
    assert response.status_code == 400
    assert "before" in response.json()["error"]["details"]


@pytest.mark.parametrize("before", [str(HUGE), "²", "-1", "abc"])
def test_the_360_page_ignores_a_cursor_no_event_can_have(operator_client, before):
    contact = ContactFactory()
    EventFactory(contact=contact, name="page_view")
    url = reverse("contacts:detail", args=[contact.pk])
    assert operator_client.get(url, {"before": before}).status_code == 200


# --- The contact list, its bulk action and the export -----------------------------------------


def test_a_created_to_on_the_last_day_of_the_calendar_bounds_nothing(english_client, operator):
    contacts = ContactFactory.create_batch(2)
    page = english_client.get(reverse("contacts:list"), {"created_to": "9999-12-31"})
    assert page.status_code == 200
    html = page.content.decode()
    assert all(c.name in html for c in contacts)
    assert "Some filters are invalid" not in html

    filters = {"created_to": "9999-12-31", "created_from": "0001-01-01"}
    qs = exporters.export_queryset(user=operator, filters=filters)
    assert sorted(qs.values_list("pk", flat=True)) == sorted(c.pk for c in contacts)


def test_a_created_from_on_the_first_day_of_the_calendar_bounds_nothing(english_client):
    contact = ContactFactory()
    page = english_client.get(reverse("contacts:list"), {"created_from": "0001-01-01"})
    assert page.status_code == 200
    assert contact.name in page.content.decode()


def test_created_to_still_ends_with_its_day(operator):
    today = timezone.localdate()
    old = ContactFactory()
    old.created_at = timezone.now() - dt.timedelta(days=3)
    old.save(update_fields=["created_at"])
    ContactFactory()
    to = (today - dt.timedelta(days=2)).isoformat()
    qs = exporters.export_queryset(user=operator, filters={"created_to": to})
    assert list(qs.values_list("pk", flat=True)) == [old.pk]


@pytest.mark.parametrize("tag", [str(HUGE), "²", "0"])
def test_the_list_shows_a_tag_filter_no_tag_can_have_as_invalid(english_client, tag):
    ContactFactory()
    page = english_client.get(reverse("contacts:list"), {"tag": tag})
    assert page.status_code == 200
    assert "Some filters are invalid and were ignored." in page.content.decode()


def test_bulk_tagging_selected_ids_no_contact_can_have_is_refused(english_client):
    tag = TagFactory()
    contact = ContactFactory()
    response = english_client.post(
        reverse("contacts:bulk_tag"),
        {"bulk_tag": tag.pk, "op": "add", "scope": "selected", "ids": [contact.pk, str(HUGE)]},
        follow=True,
    )
    assert response.status_code == 200
    assert f"“{HUGE}” is not a contact id." in _messages(response)
    assert not ContactTag.objects.exists()


def test_bulk_tagging_all_matching_an_impossible_tag_is_refused_with_the_reason(english_client):
    tag = TagFactory()
    ContactFactory.create_batch(2)
    response = english_client.post(
        reverse("contacts:bulk_tag"),
        {"bulk_tag": tag.pk, "op": "add", "scope": "all", "tag": str(HUGE)},
        follow=True,
    )
    (message,) = _messages(response)
    assert message.startswith("Fix the filter before applying a bulk action to all matches.")
    assert "Tags:" in message
    assert not ContactTag.objects.exists()


def test_bulk_tagging_all_created_up_to_the_end_of_the_calendar_tags_everyone(english_client):
    tag = TagFactory()
    contacts = ContactFactory.create_batch(2)
    english_client.post(
        reverse("contacts:bulk_tag"),
        {"bulk_tag": tag.pk, "op": "add", "scope": "all", "created_to": "9999-12-31"},
    )
    tagged = ContactTag.objects.values_list("contact_id", flat=True)
    assert sorted(tagged) == sorted(c.pk for c in contacts)


@pytest.mark.parametrize("segment", [HUGE, str(HUGE), "²", "0"])
def test_an_export_of_a_segment_no_segment_can_have_is_refused(operator, segment):
    with pytest.raises(ValidationFailed) as exc:
        exporters.export_queryset(user=operator, filters={"segment": segment})
    assert exc.value.message in ("Unknown segment.", "未知的分群。")
