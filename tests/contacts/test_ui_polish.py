"""Open follow-ups that are overdue (or due today) say so in words, on the 360 page's notes and
on the "My follow-ups" list alike."""

import datetime as dt
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone, translation

from contacts import roles, selectors
from contacts.models import Contact, Note
from contacts.services import note_add
from tests.factories import ContactFactory, EventFactory, user_with_role

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
FOLLOW_UPS = reverse("contacts:followups")
LANGUAGES = ["zh-hans", "en"]


@pytest.fixture(autouse=True)
def _roles(db):
    roles.roles_sync()


def _words(language: str) -> dict[str, str]:
    with translation.override(language):
        return {
            "overdue": translation.gettext("Overdue"),
            "today": translation.gettext("Due today"),
        }


def _overdue_badge(language: str) -> str:
    return f'<span class="badge badge-delivery-failed">{_words(language)["overdue"]}</span>'


def _today_badge(language: str) -> str:
    return f'<span class="badge badge-status-paused">{_words(language)["today"]}</span>'


def _later_today() -> dt.datetime:
    """A time still to come today (local day), however late the test runs."""
    bounds = selectors.follow_up_bounds()
    return bounds.now + min(dt.timedelta(hours=1), (bounds.tomorrow - bounds.now) / 2)


def _follow_up(contact: Contact, *, due: dt.datetime, body: str, author=None) -> Note:
    return note_add(contact=contact, author=author, body=body, follow_up_at=due)


def _notes_region(html: str) -> str:
    start = html.index('<section id="contact-notes"')
    return html[start : html.index("</section>", start)]


def _note_item(region: str, body: str) -> str:
    (item,) = [chunk for chunk in region.split("<li")[1:] if body in chunk]
    return item


def _follow_up_row(html: str, note: Note) -> str:
    start = html.index(f'<tr id="follow-up-{note.pk}"')
    return html[start : html.index("</tr>", start)]


def test_the_words_are_translated():
    assert _words("zh-hans") == {"overdue": "已逾期", "today": "今日到期"}
    assert _words("en") == {"overdue": "Overdue", "today": "Due today"}


# --- The 360 page ----------------------------------------------------------------------------


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_360_page_marks_overdue_and_due_today_follow_ups(operator_client, language):
    contact = ContactFactory()
    now = timezone.now()
    _follow_up(contact, due=now - dt.timedelta(days=2), body="逾期回访")
    done = _follow_up(contact, due=now - dt.timedelta(days=3), body="已做回访")
    Note.objects.filter(pk=done.pk).update(done_at=now - dt.timedelta(days=1))
    _follow_up(contact, due=_later_today(), body="今天回访")
    _follow_up(contact, due=now + dt.timedelta(days=3), body="下周回访")
    note_add(contact=contact, author=None, body="普通备注")

    page = operator_client.get(
        reverse("contacts:detail", args=[contact.pk]), HTTP_ACCEPT_LANGUAGE=language
    ).content.decode()

    region = _notes_region(page)
    overdue, today = _note_item(region, "逾期回访"), _note_item(region, "今天回访")
    assert _overdue_badge(language) in overdue and _today_badge(language) not in overdue
    assert _today_badge(language) in today and _overdue_badge(language) not in today
    for quiet in ("已做回访", "下周回访", "普通备注"):
        item = _note_item(region, quiet)
        assert _overdue_badge(language) not in item and _today_badge(language) not in item
    assert region.count(_words(language)["overdue"]) == 1


def test_the_notes_fragment_marks_a_new_overdue_follow_up_until_it_is_done(operator_client):
    contact = ContactFactory()
    due = timezone.localtime(timezone.now() - dt.timedelta(hours=2))

    added = operator_client.post(
        reverse("contacts:note_add", args=[contact.pk]),
        {"body": "补打电话", "follow_up_at": due.strftime("%Y-%m-%dT%H:%M")},
        **HX,
    ).content.decode()

    assert added.lstrip().startswith('<section id="contact-notes"')
    assert _overdue_badge("zh-hans") in _note_item(_notes_region(added), "补打电话")

    note = Note.objects.get(body="补打电话")
    done = operator_client.post(
        reverse("contacts:note_done", args=[contact.pk, note.pk]), **HX
    ).content.decode()

    item = _note_item(_notes_region(done), "补打电话")
    assert "已逾期" not in item and "badge-ok" in item


# --- My follow-ups ---------------------------------------------------------------------------


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_follow_up_list_marks_overdue_and_due_today_rows(client, language):
    operator = user_with_role("operator")
    contact = ContactFactory(owner=operator)
    overdue = _follow_up(
        contact, author=operator, due=timezone.now() - dt.timedelta(days=1), body="昨天该回访"
    )
    today = _follow_up(contact, author=operator, due=_later_today(), body="今天回访")
    later = _follow_up(
        contact, author=operator, due=timezone.now() + dt.timedelta(days=30), body="下月回访"
    )
    client.force_login(operator)

    for response in (
        client.get(FOLLOW_UPS, HTTP_ACCEPT_LANGUAGE=language),
        client.get(FOLLOW_UPS, HTTP_ACCEPT_LANGUAGE=language, **HX),
    ):
        html = response.content.decode()
        assert _overdue_badge(language) in _follow_up_row(html, overdue)
        assert _today_badge(language) in _follow_up_row(html, today)
        later_row = _follow_up_row(html, later)
        assert _overdue_badge(language) not in later_row
        assert _today_badge(language) not in later_row


def test_a_row_marked_done_loses_its_overdue_mark(client):
    operator = user_with_role("operator")
    note = _follow_up(
        ContactFactory(owner=operator),
        author=operator,
        due=timezone.now() - dt.timedelta(hours=3),
        body="逾期回访",
    )
    client.force_login(operator)
    assert _overdue_badge("zh-hans") in _follow_up_row(
        client.get(FOLLOW_UPS).content.decode(), note
    )

    response = client.post(reverse("contacts:followup_done", args=[note.pk]), **HX)

    row = _follow_up_row(response.content.decode(), note)
    assert "已逾期" not in row and '<span class="badge badge-ok">' in row


@pytest.mark.parametrize("language", ["zh-hans", "en"])
def test_timeline_amounts_are_grouped_like_the_rest_of_the_page(operator_client, language):
    contact = ContactFactory()
    EventFactory(
        contact=contact,
        name="purchase",
        value=Decimal("1650.00"),
        properties={"order_id": "o-1"},
    )
    operator_client.cookies["django_language"] = language

    page = operator_client.get(reverse("contacts:detail", args=[contact.pk])).content.decode()

    assert "¥1,650.00" in page and "¥1650.00" not in page


def test_a_choice_fields_error_lists_the_choices_as_the_language_lists_words():
    from contacts.models import CustomField, CustomFieldKind
    from contacts.services.custom_fields import custom_fields_validate
    from core.errors import ValidationFailed

    CustomField.objects.create(
        key="skin", label="肤质", kind=CustomFieldKind.SINGLE_CHOICE, choices=["干性", "油性"]
    )
    for language, listed in (("zh-hans", "干性、油性"), ("en", "干性, 油性")):
        with translation.override(language), pytest.raises(ValidationFailed) as caught:
            custom_fields_validate(values={"skin": "中性"})
        assert listed in str(caught.value.message)
