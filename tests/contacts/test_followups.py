"""My follow-ups (我的跟进): who sees which follow-up, how they fall into buckets, marking done."""

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from django.urls import reverse
from django.utils import timezone, translation

from contacts import roles, selectors
from contacts.models import Contact, Event, Note
from contacts.services import note_add
from tests.factories import ContactFactory, StoreFactory, UserFactory, user_with_role

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
SHANGHAI = ZoneInfo("Asia/Shanghai")
URL = reverse("contacts:followups")


@pytest.fixture(autouse=True)
def _roles(db):
    roles.roles_sync()


def _follow_up(contact: Contact, *, author=None, due: dt.datetime, body: str = "回访") -> Note:
    return note_add(contact=contact, author=author, body=body, follow_up_at=due)


def _ids(qs) -> set[int]:
    return set(qs.values_list("pk", flat=True))


def _done_url(note: Note) -> str:
    return reverse("contacts:followup_done", args=[note.pk])


# --- Who sees which follow-up ----------------------------------------------------------------


def test_a_follow_up_is_mine_when_i_wrote_it_or_own_the_contact():
    operator, colleague = user_with_role("operator"), user_with_role("operator")
    due = timezone.now() + dt.timedelta(days=1)
    written = _follow_up(ContactFactory(), author=operator, due=due)
    on_my_customer = _follow_up(ContactFactory(owner=operator), author=colleague, due=due)
    theirs = _follow_up(ContactFactory(), author=colleague, due=due)
    done = _follow_up(ContactFactory(owner=operator), author=operator, due=due)
    Note.objects.filter(pk=done.pk).update(done_at=timezone.now())
    Note.objects.create(contact=ContactFactory(owner=operator), author=operator, body="plain note")

    assert _ids(selectors.follow_ups_open(user=operator, staff_id=operator.pk)) == {
        written.pk,
        on_my_customer.pk,
    }
    assert _ids(selectors.follow_ups_open(user=operator, staff_id=colleague.pk)) == {
        on_my_customer.pk,
        theirs.pk,
    }
    assert _ids(selectors.follow_ups_open(user=operator, staff_id=None)) == {
        written.pk,
        on_my_customer.pk,
        theirs.pk,
    }


def test_store_staff_see_only_their_own_follow_ups_on_contacts_they_may_see():
    store, other_store = StoreFactory(), StoreFactory()
    clerk = user_with_role("store_staff", store=store)
    colleague = user_with_role("store_staff", store=store)
    due = timezone.now() + dt.timedelta(hours=2)
    mine = _follow_up(ContactFactory(store=store), author=clerk, due=due)
    owned_elsewhere = _follow_up(
        ContactFactory(store=other_store, owner=clerk), author=colleague, due=due
    )
    # The customer moved to another store: the clerk wrote the follow-up but no longer sees them.
    moved = _follow_up(ContactFactory(store=other_store), author=clerk, due=due)
    colleagues = _follow_up(ContactFactory(store=store), author=colleague, due=due)

    assert not selectors.follow_ups_can_see_others(user=clerk)
    expected = {mine.pk, owned_elsewhere.pk}
    # Asking for everyone's, or a colleague's, still gives only their own.
    for staff_id in (clerk.pk, None, colleague.pk):
        assert _ids(selectors.follow_ups_open(user=clerk, staff_id=staff_id)) == expected
    assert moved.pk not in _ids(selectors.follow_ups_open(user=colleague, staff_id=None))
    assert colleagues.pk in _ids(selectors.follow_ups_open(user=colleague, staff_id=None))


def test_who_may_look_at_other_staff_members_follow_ups():
    assert selectors.follow_ups_can_see_others(user=UserFactory())  # superuser
    assert selectors.follow_ups_can_see_others(user=user_with_role("admin"))
    assert selectors.follow_ups_can_see_others(user=user_with_role("operator"))
    assert not selectors.follow_ups_can_see_others(user=user_with_role("analyst"))
    assert not selectors.follow_ups_can_see_others(user=user_with_role("store_staff"))


def test_follow_ups_of_a_merged_away_contact_are_not_listed():
    operator = user_with_role("operator")
    survivor, duplicate = ContactFactory(owner=operator), ContactFactory(owner=operator)
    note = _follow_up(duplicate, author=operator, due=timezone.now())
    Contact.objects.filter(pk=duplicate.pk).update(merged_into=survivor)

    assert note.pk not in _ids(selectors.follow_ups_open(user=operator, staff_id=None))


# --- Buckets on Asia/Shanghai day boundaries -------------------------------------------------


def test_buckets_split_on_local_midnight_not_utc():
    # 23:30 in Shanghai is 15:30 UTC: the UTC day would run for another 8.5 hours.
    now = dt.datetime(2030, 3, 10, 23, 30, tzinfo=SHANGHAI)
    operator = user_with_role("operator")
    contact = ContactFactory(owner=operator)

    def at(day: int, hour: int, minute: int = 0) -> Note:
        return _follow_up(
            contact, author=operator, due=dt.datetime(2030, 3, day, hour, minute, tzinfo=SHANGHAI)
        )

    long_overdue = at(1, 9)
    overdue = at(10, 23, 29)
    today = at(10, 23, 45)
    tomorrow = at(11, 0, 15)  # same UTC date as `now`
    last_upcoming = at(17, 23, 59)
    later = at(18, 0, 0)

    with timezone.override(SHANGHAI):
        bounds = selectors.follow_up_bounds(now=now)
    qs = selectors.follow_ups_open(user=operator, staff_id=operator.pk)

    def bucket(name: str) -> set[int]:
        return _ids(selectors.follow_ups_in_bucket(qs=qs, bucket=name, bounds=bounds))

    assert bounds.tomorrow == dt.datetime(2030, 3, 11, tzinfo=SHANGHAI)
    assert bucket("overdue") == {long_overdue.pk, overdue.pk}
    assert bucket("today") == {today.pk}
    assert bucket("upcoming") == {tomorrow.pk, last_upcoming.pk}
    assert bucket("open") == {n.pk for n in (long_overdue, overdue, today, tomorrow)} | {
        last_upcoming.pk,
        later.pk,
    }
    assert selectors.follow_ups_due_counts(qs=qs, bounds=bounds, cap=99) == {
        "overdue": 2,
        "today": 1,
    }
    # Counting stops one past the cap: the page shows "1+" instead of scanning a backlog.
    assert selectors.follow_ups_due_counts(qs=qs, bounds=bounds, cap=1)["overdue"] == 2
    rows = selectors.follow_ups_page(qs=qs, bounds=bounds, after=None).items
    assert [r.bucket for r in rows] == [
        "overdue",
        "overdue",
        "today",
        "upcoming",
        "upcoming",
        "later",
    ]


# --- Keyset pages ----------------------------------------------------------------------------


def test_pages_run_soonest_first_through_ties_and_survive_rows_marked_done(
    django_assert_num_queries,
):
    operator = user_with_role("operator")
    contact = ContactFactory(owner=operator, phone="+8613800138000")
    due = timezone.now() + dt.timedelta(days=3)
    first, second, third = (
        _follow_up(contact, author=operator, due=due, body=f"第{i}条") for i in (1, 2, 3)
    )
    soonest = _follow_up(contact, author=operator, due=due - dt.timedelta(hours=1), body="x" * 300)
    qs = selectors.follow_ups_open(user=operator, staff_id=operator.pk)
    bounds = selectors.follow_up_bounds()

    with django_assert_num_queries(1):
        page = selectors.follow_ups_page(qs=qs, bounds=bounds, after=None, size=2)
    assert [r.pk for r in page.items] == [soonest.pk, first.pk]
    row = page.items[0]
    assert row.phone == "+86138****8000" and row.contact_name == contact.name
    # Cut with the active language's ellipsis ("…" or "...").
    assert len(row.body) == selectors.FOLLOW_UP_PREVIEW_LENGTH and not row.body.endswith("x")
    assert row.author == operator.username

    # The cursor row is done by now; the next page still starts right after it.
    Note.objects.filter(pk=first.pk).update(done_at=timezone.now())
    with django_assert_num_queries(2):
        rest = selectors.follow_ups_page(qs=qs, bounds=bounds, after=page.next_after, size=2)
    assert [r.pk for r in rest.items] == [second.pk, third.pk] and not rest.has_next
    assert selectors.follow_ups_page(qs=qs, bounds=bounds, after=10**9, size=2).items == []
    # An id no row can have is malformed, not an error: the first page.
    oversized = selectors.follow_ups_page(qs=qs, bounds=bounds, after="9" * 30, size=2)
    assert [r.pk for r in oversized.items] == [soonest.pk, second.pk]


# --- The page --------------------------------------------------------------------------------


def test_the_page_lists_my_follow_ups_with_masked_phones_in_english(client):
    operator = user_with_role("operator")
    contact = ContactFactory(owner=operator, name="林小雨", phone="+8613800138000")
    overdue = _follow_up(
        contact, author=operator, due=timezone.now() - dt.timedelta(days=2), body="问试用感受"
    )
    _follow_up(ContactFactory(), author=UserFactory(), due=timezone.now(), body="别人的客户")
    client.force_login(operator)

    response = client.get(URL, HTTP_ACCEPT_LANGUAGE="en")

    page = response.content.decode()
    assert response.status_code == 200 and response.headers["Vary"].count("HX-Request")
    assert '<html lang="en">' in page and "My follow-ups" in page
    assert reverse("contacts:detail", args=[contact.pk]) in page and "林小雨" in page
    assert "+86138****8000" in page and "+8613800138000" not in page
    assert "问试用感受" in page and "别人的客户" not in page
    assert "Overdue" in page and _done_url(overdue) in page
    assert 'aria-current="page"' in page.split(URL, 1)[1].split(">", 1)[0]


def test_the_page_renders_in_chinese_and_serves_the_table_to_htmx(client):
    operator = user_with_role("operator")
    contact = ContactFactory(owner=operator)
    note = _follow_up(contact, author=operator, due=timezone.now() - dt.timedelta(hours=1))
    client.force_login(operator)

    page = client.get(URL, HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    with translation.override("zh-hans"):
        title = translation.gettext("My follow-ups")
        mark_done = translation.gettext("Mark done")
    assert '<html lang="zh-hans">' in page
    assert title in page and mark_done == "标记完成" and mark_done in page

    fragment = client.get(URL, {"bucket": "upcoming"}, **HX).content.decode()
    assert fragment.lstrip().startswith('<section id="follow-up-table"')
    assert "<html" not in fragment and _done_url(note) not in fragment


def test_operators_pick_a_colleague_or_everyone(client):
    operator, colleague = user_with_role("operator"), user_with_role("operator")
    mine = _follow_up(ContactFactory(), author=operator, due=timezone.now(), body="我的跟进")
    theirs = _follow_up(ContactFactory(), author=colleague, due=timezone.now(), body="同事跟进")
    client.force_login(operator)

    def listed(**params) -> set[int]:
        page = client.get(URL, params).content.decode()
        return {n.pk for n in (mine, theirs) if _done_url(n) in page}

    assert listed() == {mine.pk}
    assert listed(staff=str(colleague.pk)) == {theirs.pk}
    assert listed(staff="all") == {mine.pk, theirs.pk}
    assert listed(staff="not-a-user") == {mine.pk}


def test_store_staff_get_no_picker_and_cannot_close_other_stores_follow_ups(client):
    store = StoreFactory()
    clerk = user_with_role("store_staff", store=store)
    elsewhere = _follow_up(
        ContactFactory(store=StoreFactory()), author=UserFactory(), due=timezone.now()
    )
    client.force_login(clerk)

    page = client.get(URL, {"staff": "all"}).content.decode()
    assert 'name="staff"' not in page and _done_url(elsewhere) not in page
    assert client.post(_done_url(elsewhere), **HX).status_code == 404
    elsewhere.refresh_from_db()
    assert elsewhere.done_at is None


def test_analysts_read_their_list_but_cannot_mark_done(client):
    analyst = user_with_role("analyst")
    note = _follow_up(ContactFactory(owner=analyst), author=None, due=timezone.now())
    client.force_login(analyst)

    page = client.get(URL).content.decode()
    assert reverse("contacts:detail", args=[note.contact_id]) in page
    assert _done_url(note) not in page and 'name="staff"' not in page
    assert client.post(_done_url(note)).status_code == 403
    assert client.post(_done_url(note), **HX).status_code == 403
    note.refresh_from_db()
    assert note.done_at is None


# --- Marking done ----------------------------------------------------------------------------


def test_marking_done_inline_is_idempotent_and_recorded_once(client):
    operator = user_with_role("operator")
    contact = ContactFactory(owner=operator)
    note = _follow_up(contact, author=operator, due=timezone.now() - dt.timedelta(days=1))
    client.force_login(operator)
    url = _done_url(note) + "?bucket=overdue"

    first = client.post(url, HTTP_ACCEPT_LANGUAGE="en", **HX).content.decode()
    note.refresh_from_db()
    done_at = note.done_at
    assert done_at is not None
    assert first.lstrip().startswith(f'<tr id="follow-up-{note.pk}"')
    assert "Done" in first and _done_url(note) not in first
    assert '<div id="follow-up-counts" class="card-header-pad" hx-swap-oob="true">' in first
    assert "Overdue: 0" in first and "Follow-up marked done." in first

    again = client.post(url, HTTP_ACCEPT_LANGUAGE="en", **HX).content.decode()
    note.refresh_from_db()
    assert note.done_at == done_at
    assert "This follow-up was already done." in again
    assert Event.objects.filter(contact=contact, name="follow_up_done").count() == 1
    event = Event.objects.get(contact=contact, name="follow_up_done")
    assert event.properties["actor_id"] == operator.pk

    # Without htmx: back to the list the button was on.
    plain = client.post(url)
    assert plain.status_code == 302 and plain.url == URL + "?bucket=overdue"
    assert Event.objects.filter(contact=contact, name="follow_up_done").count() == 1


def test_only_posts_mark_done(client):
    operator = user_with_role("operator")
    note = _follow_up(ContactFactory(owner=operator), author=operator, due=timezone.now())
    client.force_login(operator)

    assert client.get(_done_url(note)).status_code == 405
    plain_note = Note.objects.create(contact=note.contact, author=operator, body="no follow-up")
    assert client.post(_done_url(plain_note)).status_code == 404


def test_a_long_backlog_shows_as_capped_count(client, monkeypatch):
    from contacts import views

    operator = user_with_role("operator")
    contact = ContactFactory(owner=operator)
    for days in (1, 2, 3):
        _follow_up(contact, author=operator, due=timezone.now() - dt.timedelta(days=days))
    monkeypatch.setattr(views, "FOLLOW_UP_COUNT_CAP", 2)
    client.force_login(operator)

    page = client.get(URL, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Overdue: 2+" in page and "Due today: 0" in page
