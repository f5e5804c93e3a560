import pytest
from django.urls import reverse

from contacts.models import ContactTag, Event, IdentityKind, LifecycleStage
from tests.contacts.editing import edit_form_data
from tests.factories import ContactFactory, EventFactory, IdentityFactory, TagFactory, UserFactory

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


def test_anonymous_users_are_sent_to_login(client):
    contact = ContactFactory()
    for url in (reverse("contacts:list"), reverse("contacts:detail", args=[contact.pk])):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))


def test_list_shows_contacts_with_masked_phones(operator_client):
    contact = ContactFactory(name="林小雨", phone="+8613800138000")

    response = operator_client.get(reverse("contacts:list"))

    page = response.content.decode()
    assert response.status_code == 200
    assert "<html" in page and 'id="contact-table"' in page
    assert "林小雨" in page
    assert contact.masked_phone in page
    assert "13800138000" not in page
    assert "HX-Request" in response["Vary"]


def test_list_fragment_is_only_the_table(operator_client):
    ContactFactory(name="林小雨")

    response = operator_client.get(reverse("contacts:list"), **HX)

    page = response.content.decode()
    assert response.status_code == 200
    assert page.lstrip().startswith('<section id="contact-table"')
    assert "<html" not in page
    assert "林小雨" in page


def test_list_searches_and_filters(operator_client):
    tag = TagFactory(name="高净值")
    shanghai = ContactFactory(name="上海客户", city="上海", source="wecom")
    beijing = ContactFactory(
        name="北京客户", city="北京", source="ad", lifecycle_stage_id=LifecycleStage.LOYAL
    )
    ContactTag.objects.create(contact=beijing, tag=tag)

    def names(**params):
        page = operator_client.get(reverse("contacts:list"), params, **HX).content.decode()
        return {name for name in ("上海客户", "北京客户") if name in page}

    assert names(q="北京") == {"北京客户"}
    assert names(q=shanghai.phone[-6:]) == {"上海客户"}
    assert names(city="上海") == {"上海客户"}
    assert names(source="ad") == {"北京客户"}
    assert names(lifecycle_stage="loyal") == {"北京客户"}
    assert names(tag=tag.pk) == {"北京客户"}


def test_list_is_keyset_paginated(operator_client):
    contacts = ContactFactory.create_batch(52)

    def shown(page: str) -> set[int]:
        return {
            c.pk for c in contacts if f'href="{reverse("contacts:detail", args=[c.pk])}"' in page
        }

    first = operator_client.get(reverse("contacts:list")).content.decode()
    assert shown(first) == {c.pk for c in contacts[2:]}
    assert f"after={contacts[2].pk}" in first

    second = operator_client.get(reverse("contacts:list"), {"after": contacts[2].pk}, **HX)
    page = second.content.decode()
    assert shown(page) == {contacts[0].pk, contacts[1].pk}
    assert "after=" not in page.replace("after=None", "")


def test_detail_shows_profile_identities_tags_and_timeline(operator_client):
    contact = ContactFactory(name="林小雨", phone="+8613800138000")
    IdentityFactory(contact=contact, value="ext-42")
    IdentityFactory(contact=contact, kind=IdentityKind.PHONE, value="+8613800138000")
    tag = TagFactory(name="新品关注")
    ContactTag.objects.create(contact=contact, tag=tag)
    EventFactory(contact=contact, name="purchase", properties={"product": "面霜"})

    response = operator_client.get(reverse("contacts:detail", args=[contact.pk]))

    page = response.content.decode()
    assert response.status_code == 200
    assert "林小雨" in page and "+86138****8000" in page and "13800138000" not in page
    assert "ext-42" in page
    assert "新品关注" in page
    assert "购买" in page and "面霜" in page  # human label for `purchase`, zh-Hans by default
    # Panels from higher apps are loaded by htmx from their own endpoints.
    for name in (
        "membership:contact_card",
        "segments:contact_segments",
        "journeys:contact_enrollments",
        "channels:contact_deliveries",
    ):
        assert reverse(name, args=[contact.pk]) in page


def test_detail_only_for_visible_contacts(client):
    clerk = UserFactory(username="clerk", is_staff=False, is_superuser=False)
    client.force_login(clerk)
    mine, theirs = ContactFactory(owner=clerk), ContactFactory()

    assert client.get(reverse("contacts:detail", args=[mine.pk])).status_code == 200
    assert client.get(reverse("contacts:detail", args=[theirs.pk])).status_code == 404


def test_timeline_scrolls_with_a_before_keyset(operator_client):
    contact = ContactFactory()
    # Created oldest first, so occurrence order and id order agree.
    events = [EventFactory(contact=contact, name=f"evt_{i:02d}") for i in range(35)]
    url = reverse("contacts:detail", args=[contact.pk])

    first = operator_client.get(url).content.decode()
    assert "evt_34" in first and "evt_05" in first and "evt_04" not in first
    assert 'id="timeline-more"' in first and 'hx-trigger="revealed"' in first
    assert f"?before={events[5].pk}" in first

    response = operator_client.get(url, {"before": events[5].pk}, **HX)

    page = response.content.decode()
    assert "<html" not in page
    assert all(f"evt_{i:02d}" in page for i in range(5))
    assert "evt_05" not in page
    assert 'id="timeline-more"' not in page


def test_add_tag_without_javascript_redirects_back(operator_client, operator):
    contact = ContactFactory()
    tag = TagFactory(name="VIP")

    response = operator_client.post(reverse("contacts:tag_add", args=[contact.pk]), {"tag": tag.pk})

    assert response.status_code == 302
    assert response["Location"] == reverse("contacts:detail", args=[contact.pk])
    link = ContactTag.objects.get(contact=contact, tag=tag)
    assert link.actor == operator
    assert Event.objects.filter(contact=contact, name="tag_added").exists()
    follow = operator_client.get(response["Location"]).content.decode()
    assert "toast-success" in follow and "VIP" in follow


def test_add_tag_with_htmx_returns_the_tags_fragment_and_a_toast(operator_client):
    contact = ContactFactory()
    tag = TagFactory(name="VIP")

    response = operator_client.post(
        reverse("contacts:tag_add", args=[contact.pk]), {"tag": tag.pk}, **HX
    )

    page = response.content.decode()
    assert response.status_code == 200
    assert page.lstrip().startswith('<section id="contact-tags"')
    assert 'id="toasts" hx-swap-oob="beforeend"' in page
    assert "VIP" in page
    assert reverse("contacts:tag_remove", args=[contact.pk, tag.pk]) in page
    assert ContactTag.objects.filter(contact=contact, tag=tag).exists()


def test_add_tag_rejects_a_missing_tag(operator_client):
    contact = ContactFactory()

    response = operator_client.post(
        reverse("contacts:tag_add", args=[contact.pk]), {"tag": 999999}, **HX
    )

    assert response.status_code == 200
    assert "toast-error" in response.content.decode()
    assert not ContactTag.objects.filter(contact=contact).exists()


def test_remove_tag(operator_client):
    contact = ContactFactory()
    tag = TagFactory(name="VIP")
    ContactTag.objects.create(contact=contact, tag=tag)

    response = operator_client.post(reverse("contacts:tag_remove", args=[contact.pk, tag.pk]), **HX)

    assert response.status_code == 200
    assert not ContactTag.objects.filter(contact=contact, tag=tag).exists()
    assert Event.objects.filter(contact=contact, name="tag_removed").exists()
    assert "toast-success" in response.content.decode()


def test_tag_views_refuse_get(operator_client):
    contact = ContactFactory()
    tag = TagFactory()
    assert operator_client.get(reverse("contacts:tag_add", args=[contact.pk])).status_code == 405
    url = reverse("contacts:tag_remove", args=[contact.pk, tag.pk])
    assert operator_client.get(url).status_code == 405


def test_english_ui(operator_client):
    contact = ContactFactory()
    EventFactory(contact=contact, name="purchase")
    operator_client.cookies["django_language"] = "en"

    page = operator_client.get(reverse("contacts:detail", args=[contact.pk])).content.decode()

    assert "Purchase" in page and "Timeline" in page


def test_list_queries_do_not_grow_with_rows(operator_client, django_assert_max_num_queries):
    tags = TagFactory.create_batch(3)
    for contact in ContactFactory.create_batch(30):
        for tag in tags:
            ContactTag.objects.create(contact=contact, tag=tag)

    # session, user, the user's roles, page of contacts, their tags, and the options of the
    # tag, stage, owner and store filters, the source filter's suggestions, and the bulk-tag
    # picker
    with django_assert_max_num_queries(11):
        response = operator_client.get(reverse("contacts:list"))

    assert response.content.decode().count('class="tag"') == 90


# --- Filters ---------------------------------------------------------------------------------


def test_list_filters_by_owner_store_several_tags_and_created_range(operator_client):
    import datetime as dt

    from django.utils import timezone

    from tests.factories import StoreFactory

    owner, store = UserFactory(username="clerk"), StoreFactory(name="静安店")
    vip, new = TagFactory(name="VIP"), TagFactory(name="新品")
    today = timezone.localdate()
    old = ContactFactory(name="老客户", owner=owner)
    old.created_at = timezone.make_aware(
        dt.datetime.combine(today - dt.timedelta(days=40), dt.time(9))
    )
    old.save()
    recent = ContactFactory(name="新客户", store=store)
    both = ContactFactory(name="双标签")
    for contact, tag in ((old, vip), (both, vip), (both, new), (recent, new)):
        ContactTag.objects.create(contact=contact, tag=tag)

    def names(**params):
        page = operator_client.get(reverse("contacts:list"), params, **HX).content.decode()
        return {name for name in ("老客户", "新客户", "双标签") if name in page}

    assert names(owner=owner.pk) == {"老客户"}
    assert names(store=store.pk) == {"新客户"}
    assert names(tag=[vip.pk, new.pk]) == {"老客户", "新客户", "双标签"}
    page = operator_client.get(reverse("contacts:list"), {"tag": [vip.pk, new.pk]}, **HX)
    # No duplicate rows from the tag join.
    assert page.content.decode().count(f'href="{reverse("contacts:detail", args=[both.pk])}"') == 1
    assert names(created_from=(today - dt.timedelta(days=7)).isoformat()) == {"新客户", "双标签"}
    assert names(created_to=(today - dt.timedelta(days=30)).isoformat()) == {"老客户"}
    assert names(created_from=today.isoformat(), created_to=today.isoformat()) == {
        "新客户",
        "双标签",
    }
    assert names(created_from="not-a-date") == {"老客户", "新客户", "双标签"}


def test_merged_contacts_are_hidden_and_their_page_leads_to_the_survivor(operator_client):
    from contacts.models import Contact

    survivor, duplicate = ContactFactory(name="留下"), ContactFactory(name="并入")
    Contact.objects.filter(pk=duplicate.pk).update(merged_into=survivor)

    page = operator_client.get(reverse("contacts:list")).content.decode()
    assert "留下" in page and "并入" not in page
    response = operator_client.get(reverse("contacts:detail", args=[duplicate.pk]))
    assert response.status_code == 302
    assert response["Location"] == reverse("contacts:detail", args=[survivor.pk])


# --- Edit form -------------------------------------------------------------------------------


def test_edit_form_full_page_and_fragment(operator_client):
    contact = ContactFactory(name="林小雨")
    url = reverse("contacts:edit", args=[contact.pk])

    full = operator_client.get(url).content.decode()
    assert "<html" in full and 'id="contact-profile"' in full and 'name="name"' in full

    fragment = operator_client.get(url, HTTP_HX_TARGET="contact-profile", **HX).content.decode()
    assert fragment.lstrip().startswith('<section id="contact-profile"') and "<html" not in fragment


def test_edit_saves_changes_and_custom_fields(operator_client, operator):
    from contacts.models import CustomField, Event
    from tests.factories import StoreFactory

    CustomField.objects.create(key="shoe_size", label="鞋码", kind="number")
    CustomField.objects.create(
        key="hobbies", label="爱好", kind="multi_choice", choices=["跑步", "瑜伽", "游泳"]
    )
    store = StoreFactory()
    contact = ContactFactory(name="林小雨")
    url = reverse("contacts:edit", args=[contact.pk])

    response = operator_client.post(
        url,
        edit_form_data(
            contact,
            name="林小雨（VIP）",
            city="杭州",
            store=store.pk,
            owner=operator.pk,
            lifecycle_stage="loyal",
            cf__shoe_size="38",
            cf__hobbies=["跑步", "瑜伽"],
        ),
        **HX,
    )

    page = response.content.decode()
    assert response.status_code == 200
    assert page.lstrip().startswith('<section id="contact-profile"')
    assert "林小雨（VIP）" in page and "toast-success" in page and "鞋码" in page
    contact.refresh_from_db()
    assert (contact.name, contact.city, contact.store, contact.owner) == (
        "林小雨（VIP）",
        "杭州",
        store,
        operator,
    )
    assert contact.lifecycle_stage_id == "loyal"
    assert contact.attributes == {"shoe_size": 38, "hobbies": ["跑步", "瑜伽"]}
    assert Event.objects.filter(contact=contact, name="profile_updated").exists()

    plain = operator_client.post(url, edit_form_data(contact, name="林小雨"))
    assert plain.status_code == 302 and plain["Location"] == reverse(
        "contacts:detail", args=[contact.pk]
    )


def test_edit_validation_errors_are_shown_per_field_and_nothing_is_stored(operator_client):
    import datetime as dt

    from contacts.models import Event

    other = ContactFactory(phone="+8613900139000")
    IdentityFactory(contact=other, kind=IdentityKind.PHONE, value="+8613900139000")
    contact = ContactFactory(name="林小雨", city="上海")
    url = reverse("contacts:edit", args=[contact.pk])
    future = (dt.date.today() + dt.timedelta(days=30)).isoformat()

    cases = [
        ({"birthday": future}, "birthday"),
        ({"phone": "12345"}, "phone"),
        ({"phone": "+8613900139000"}, "phone"),
        ({"email": "not-an-email"}, "email"),
        ({"name": "x" * 101}, "name"),
    ]
    for changes, field in cases:
        response = operator_client.post(url, edit_form_data(contact, city="杭州", **changes), **HX)
        page = response.content.decode()
        assert response.status_code == 200
        assert 'class="field has-error"' in page, changes
        assert f'name="{field}"' in page.split('class="field has-error"', 1)[1].split("</div>")[0]
        contact.refresh_from_db()
        assert contact.city == "上海", changes

    full = operator_client.post(url, edit_form_data(contact, city="杭州", birthday=future))
    assert full.status_code == 200 and "<html" in full.content.decode()
    assert not Event.objects.filter(contact=contact, name="profile_updated").exists()


def test_edit_without_personal_data_permission_hides_phone_and_email(client):
    from contacts import roles
    from tests.factories import user_with_role

    roles.roles_sync()
    clerk = user_with_role("store_staff")
    client.force_login(clerk)
    contact = ContactFactory(owner=clerk, phone="+8613800138000", email="lin@example.com")

    page = client.get(reverse("contacts:edit", args=[contact.pk])).content.decode()

    assert 'name="phone"' not in page and "13800138000" not in page
    assert "lin@example.com" not in page
    client.post(
        reverse("contacts:edit", args=[contact.pk]), edit_form_data(contact, phone="", email="")
    )
    contact.refresh_from_db()
    assert contact.phone == "+8613800138000"


def test_opening_the_edit_form_with_personal_data_is_audit_logged(operator_client):
    from core.models import AuditLog

    contact = ContactFactory()
    operator_client.get(reverse("contacts:edit", args=[contact.pk]))

    assert AuditLog.objects.filter(action="contact.unmask", object_id=str(contact.pk)).exists()


# --- Notes and follow-ups --------------------------------------------------------------------


def test_add_note_with_follow_up_and_mark_it_done(operator_client, operator):
    from contacts.models import Note

    contact = ContactFactory()
    url = reverse("contacts:note_add", args=[contact.pk])

    response = operator_client.post(
        url, {"body": "想要新品试用装", "follow_up_at": "2030-01-02T10:30"}, **HX
    )

    page = response.content.decode()
    assert page.lstrip().startswith('<section id="contact-notes"')
    assert "想要新品试用装" in page and "toast-success" in page
    note = Note.objects.get(contact=contact)
    assert note.author == operator and note.follow_up_at is not None
    done_url = reverse("contacts:note_done", args=[contact.pk, note.pk])
    assert done_url in page

    done = operator_client.post(done_url, **HX).content.decode()
    note.refresh_from_db()
    assert note.done_at is not None and done_url not in done

    plain = operator_client.post(url, {"body": "第二条"})
    assert plain.status_code == 302
    detail = operator_client.get(reverse("contacts:detail", args=[contact.pk])).content.decode()
    assert "第二条" in detail and "想要新品试用装" in detail


def test_empty_note_is_refused(operator_client):
    from contacts.models import Note

    contact = ContactFactory()
    url = reverse("contacts:note_add", args=[contact.pk])

    page = operator_client.post(url, {"body": "  "}, **HX).content.decode()
    assert "has-error" in page or "alert-error" in page
    assert operator_client.post(url, {"body": ""}).status_code == 302
    assert not Note.objects.exists()


# --- Consent ---------------------------------------------------------------------------------


def test_consent_form_records_grant_and_withdrawal(operator_client, operator):
    from contacts.models import Consent, ConsentRecord

    contact = ContactFactory()
    url = reverse("contacts:consent", args=[contact.pk])
    data = {"channel": "sms", "purpose": "marketing", "granted": "1", "source": "门店纸质表"}

    response = operator_client.post(
        url, {**data, "notice_version": "v2", "evidence": "表单 #12"}, **HX
    )
    page = response.content.decode()
    assert page.lstrip().startswith('<section id="contact-consent"')
    consent = Consent.objects.get(contact=contact, channel="sms", purpose="marketing")
    assert consent.granted is True
    record = ConsentRecord.objects.get(contact=contact)
    assert record.actor == operator and record.evidence == {"note": "表单 #12"}

    plain = operator_client.post(url, {**data, "granted": "0"})
    assert plain.status_code == 302
    consent.refresh_from_db()
    assert consent.granted is False
    assert ConsentRecord.objects.filter(contact=contact).count() == 2

    bad = operator_client.post(url, {**data, "channel": "pigeon"}, **HX).content.decode()
    assert "has-error" in bad
    assert ConsentRecord.objects.filter(contact=contact).count() == 2


def test_timeline_shows_notes_consent_tags_and_profile_changes(operator_client, operator):
    from contacts import services

    contact = ContactFactory()
    services.note_add(contact=contact, author=operator, body="来电咨询")
    services.consent_record(
        contact=contact, channel="sms", purpose="marketing", granted=True, source="form"
    )
    services.contact_tag_add(contact=contact, tag=TagFactory(name="VIP"), actor=operator)
    services.contact_update(contact=contact, data={"city": "杭州"}, actor=operator)
    operator_client.cookies["django_language"] = "en"

    page = operator_client.get(reverse("contacts:detail", args=[contact.pk])).content.decode()

    for label in ("Note added", "Consent granted", "Tag added", "Profile updated"):
        assert label in page


# --- Merge and undo --------------------------------------------------------------------------


def test_merge_search_full_page_and_fragment(operator_client):
    contact = ContactFactory(name="林小雨")
    other = ContactFactory(name="林雨")
    url = reverse("contacts:merge", args=[contact.pk])

    full = operator_client.get(url, {"q": "林"}).content.decode()
    assert (
        "<html" in full and reverse("contacts:merge_preview", args=[contact.pk, other.pk]) in full
    )
    assert reverse("contacts:merge_preview", args=[contact.pk, contact.pk]) not in full

    fragment = operator_client.get(url, {"q": "林"}, **HX).content.decode()
    assert fragment.lstrip().startswith('<section id="merge-candidates"')


def test_merge_preview_confirm_and_undo(operator_client):
    from contacts.models import Contact, MergeRecord

    survivor = ContactFactory(name="林小雨", email="", city="上海")
    duplicate = ContactFactory(name="Lin", email="lin@example.com", city="北京")
    IdentityFactory.create_batch(2, contact=duplicate)
    EventFactory(contact=duplicate)
    url = reverse("contacts:merge_preview", args=[survivor.pk, duplicate.pk])

    preview = operator_client.get(url).content.decode()
    assert "林小雨" in preview and "Lin" in preview and "l***@example.com" in preview
    assert "lin@example.com" not in preview
    assert not MergeRecord.objects.exists()

    response = operator_client.post(url)
    assert response.status_code == 302
    assert response["Location"] == reverse("contacts:detail", args=[survivor.pk])
    record = MergeRecord.objects.get()
    duplicate.refresh_from_db()
    assert duplicate.merged_into == survivor

    page = operator_client.get(response["Location"]).content.decode()
    undo_url = reverse("contacts:merge_undo", args=[record.pk])
    assert "toast-success" in page and undo_url in page  # in the toast and the merges panel
    assert page.count(undo_url) == 2
    assert f'<form class="inline-form" method="post" action="{undo_url}">' in page  # not escaped

    undone = operator_client.post(undo_url)
    assert undone.status_code == 302
    record.refresh_from_db()
    assert record.undone_at is not None
    assert Contact.objects.get(pk=duplicate.pk).merged_into is None
    again = operator_client.post(undo_url, **HX).content.decode()
    assert "toast-error" in again and again.lstrip().startswith('<section id="contact-merges"')


def test_merge_requires_the_merge_permission(client):
    from contacts import roles
    from contacts.models import MergeRecord
    from tests.factories import user_with_role

    roles.roles_sync()
    client.force_login(user_with_role("store_staff"))
    a, b = ContactFactory(), ContactFactory()

    assert client.get(reverse("contacts:merge_preview", args=[a.pk, b.pk])).status_code == 403
    assert client.post(reverse("contacts:merge_preview", args=[a.pk, b.pk])).status_code == 403
    assert not MergeRecord.objects.exists()


@pytest.mark.parametrize("target", ["contact-notes", "contact-consent", "contact-profile"])
def test_detail_panels_reload_as_fragments(operator_client, target):
    contact = ContactFactory()

    response = operator_client.get(
        reverse("contacts:detail", args=[contact.pk]), HTTP_HX_TARGET=target, **HX
    )

    page = response.content.decode()
    assert page.lstrip().startswith(f'<section id="{target}"') and "<html" not in page


def test_detail_queries_do_not_grow_with_notes_consents_and_merges(
    operator_client, operator, django_assert_max_num_queries
):
    from contacts import services

    contact = ContactFactory()
    for i in range(5):
        services.note_add(contact=contact, author=operator, body=f"note {i}")
        services.consent_record(
            contact=contact,
            channel=["sms", "email", "wecom", "wechat_oa", "miniprogram"][i],
            purpose="marketing",
            granted=True,
            source="form",
            actor=operator,
        )
        services.contact_merge(survivor=contact, duplicate=ContactFactory(), actor=operator)

    # A fixed set: session, user, contact, timeline, the import that created the contact (on
    # the timeline's last page), tags and tag options, identities, notes (open follow-ups,
    # others), consents, consent history, merges, never-merge pairs, the contacts the
    # timeline's merge entries name — none per row.
    with django_assert_max_num_queries(16):
        response = operator_client.get(reverse("contacts:detail", args=[contact.pk]))

    assert response.status_code == 200


@pytest.mark.parametrize("language", ["zh-hans", "en"])
def test_edit_form_shows_dates_as_the_date_picker_reads_them(operator_client, language):
    # A date picker discards any value that is not ISO; zh-Hans formats dates as 1990/02/03,
    # so a saved form would clear the birthday and every custom date field.
    import datetime as dt
    import re

    from contacts.models import CustomField

    CustomField.objects.create(key="wedding_day", label="结婚纪念日", kind="date")
    contact = ContactFactory(birthday=dt.date(1990, 2, 3), attributes={"wedding_day": "2015-10-01"})
    operator_client.cookies["django_language"] = language

    page = operator_client.get(reverse("contacts:edit", args=[contact.pk])).content.decode()

    def value_of(name: str) -> str:
        tag = re.search(rf'<input type="date" name="{name}"[^>]*>', page)
        assert tag, name
        return re.search(r'value="([^"]*)"', tag.group(0)).group(1)

    assert value_of("birthday") == "1990-02-03"
    assert value_of("cf__wedding_day") == "2015-10-01"


def test_saving_the_edit_page_goes_to_the_contact_page(operator_client):
    # Opened at its own address (not inside the contact page), the form would stay in the
    # address bar after an htmx save, and a reload would open it again.
    contact = ContactFactory(name="林小雨")
    url = reverse("contacts:edit", args=[contact.pk])
    data = edit_form_data(contact, nickname="小雨")

    from_page = operator_client.post(url, data, HTTP_HX_CURRENT_URL=f"http://testserver{url}", **HX)
    assert from_page["HX-Location"] == reverse("contacts:detail", args=[contact.pk])

    detail = reverse("contacts:detail", args=[contact.pk])
    inline = operator_client.post(
        url,
        data,
        HTTP_HX_CURRENT_URL=f"http://testserver{detail}",
        HTTP_HX_TARGET="contact-profile",
        **HX,
    )
    assert "HX-Location" not in inline
    assert inline.content.decode().lstrip().startswith('<section id="contact-profile"')
