import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone, translation

from contacts.models import (
    Consent,
    ConsentRecord,
    Contact,
    ContactTag,
    CustomField,
    Event,
    Identity,
    Note,
    Store,
)
from contacts.services import (
    EventInput,
    IdentityInput,
    consent_record,
    contact_tag_add,
    contact_tag_remove,
    contact_update,
    custom_fields_validate,
    event_record,
    events_record,
    identify,
    normalize_phone,
    note_add,
    note_complete,
)
from core.errors import ValidationFailed
from tests.factories import ContactFactory, TagFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_identify_creates_a_contact_with_identities_and_traits():
    result = identify(
        identities=[IdentityInput("miniprogram_openid", "oA1", app_id="wxapp")],
        traits={"name": "林小雨", "phone": "138 0013 8000", "city": "上海"},
    )
    assert result.created
    contact = Contact.objects.get(pk=result.contact.pk)
    assert contact.name == "林小雨"
    assert contact.phone == "+8613800138000"
    assert contact.city == "上海"
    kinds = set(contact.identities.values_list("kind", "value"))
    assert kinds == {("miniprogram_openid", "oA1"), ("phone", "+8613800138000")}


def test_identify_again_updates_the_same_contact():
    first = identify(identities=[IdentityInput("external_id", "crm-1")], traits={"city": "北京"})
    second = identify(
        identities=[IdentityInput("external_id", "crm-1"), IdentityInput("email", "A@B.cn")],
        traits={"city": "上海"},
    )
    assert not second.created
    assert second.contact.pk == first.contact.pk
    assert Contact.objects.count() == 1
    assert Contact.objects.get().city == "上海"
    assert Identity.objects.filter(kind="email", value="a@b.cn").exists()


def test_identify_reports_contacts_linked_only_by_weak_identities_without_merging_them():
    a = identify(identities=[IdentityInput("wechat_openid", "oa", app_id="wxoa")]).contact
    b = identify(identities=[IdentityInput("wecom_external_userid", "wm", app_id="corp")]).contact
    result = identify(
        identities=[
            IdentityInput("wechat_openid", "oa", app_id="wxoa"),
            IdentityInput("wecom_external_userid", "wm", app_id="corp"),
        ]
    )
    assert result.contact.pk == a.pk
    assert result.conflicts == [b.pk]
    assert result.merged == []
    assert Contact.objects.filter(merged_into__isnull=True).count() == 2


@pytest.mark.parametrize(
    "identities,traits,code",
    [
        ([IdentityInput("fax", "1")], {}, "invalid_identity"),
        ([IdentityInput("wechat_openid", "o1")], {}, "invalid_identity"),  # no app_id
        ([IdentityInput("phone", "12345")], {}, "invalid_phone"),
        ([IdentityInput("email", "not-an-email")], {}, "invalid_email"),
        ([IdentityInput("external_id", "x")], {"birthday": "2999-01-01"}, "invalid_trait"),
        ([IdentityInput("external_id", "x")], {"gender": "robot"}, "invalid_trait"),
        ([IdentityInput("external_id", "x")], {"name": "长" * 101}, "invalid_trait"),
        ([], {}, "invalid_identity"),
    ],
)
def test_identify_rejects_bad_input_and_stores_nothing(identities, traits, code):
    with pytest.raises(ValidationFailed) as exc:
        identify(identities=identities, traits=traits)
    assert exc.value.code == code
    assert Contact.objects.count() == 0
    assert Identity.objects.count() == 0


def test_normalize_phone_accepts_common_chinese_forms():
    assert normalize_phone("13800138000") == "+8613800138000"
    assert normalize_phone("0086 138-0013-8000") == "+8613800138000"
    assert normalize_phone("+86 138 0013 8000") == "+8613800138000"


def _event(event_id, contact, **kw):
    return EventInput(
        event_id=event_id,
        name=kw.pop("name", "page_view"),
        occurred_at=kw.pop("occurred_at", timezone.now() - dt.timedelta(minutes=5)),
        contact_id=contact.pk,
        **kw,
    )


def test_events_record_reports_each_item_and_never_duplicates():
    contact = ContactFactory()
    future = timezone.now() + dt.timedelta(days=1)
    # Reasons are in the active language (the API's, in a request); English reads them here.
    with translation.override("en"):
        outcomes = events_record(
            items=[
                _event("e1", contact),
                _event("e1", contact),  # repeated inside the batch
                _event("e2", contact, occurred_at=future),
                EventInput(event_id="e3", name="x", occurred_at=timezone.now(), contact_id=999999),
                _event(
                    "e4",
                    contact,
                    name="purchase",
                    value=Decimal("12.50"),
                    properties={"order_id": "o-4"},
                ),
            ]
        )
    assert [o.status for o in outcomes] == [
        "accepted",
        "duplicate",
        "rejected",
        "rejected",
        "accepted",
    ]
    assert "future" in outcomes[2].reason
    assert "999999" in outcomes[3].reason
    # A retried batch stores nothing new.
    again = events_record(items=[_event("e1", contact), _event("e4", contact)])
    assert [o.status for o in again] == ["duplicate", "duplicate"]
    assert Event.objects.filter(event_id__in=["e1", "e4"]).count() == 2


def test_activity_events_move_last_active_forward_and_never_back():
    contact, quiet = ContactFactory(), ContactFactory()
    now = timezone.now()
    events_record(
        items=[
            _event("a1", contact, occurred_at=now - dt.timedelta(days=3)),
            _event("a2", contact, occurred_at=now - dt.timedelta(days=1)),
        ]
    )
    contact.refresh_from_db()
    assert contact.last_active_at == now - dt.timedelta(days=1)  # the latest of the batch
    # An old event arriving late leaves the newer time alone.
    events_record(items=[_event("a3", contact, occurred_at=now - dt.timedelta(days=10))])
    contact.refresh_from_db()
    assert contact.last_active_at == now - dt.timedelta(days=1)
    # What the product or staff do to a contact is not the contact's activity.
    contact_tag_add(contact=quiet, tag=TagFactory())
    event_record(contact=quiet, name="message_sent", properties={})
    quiet.refresh_from_db()
    assert quiet.last_active_at is None
    event_record(contact=quiet, name="message_clicked", properties={}, occurred_at=now)
    quiet.refresh_from_db()
    assert quiet.last_active_at == now


def test_events_record_resolves_contacts_from_identities():
    outcomes = events_record(
        items=[
            EventInput(
                event_id="anon-1",
                name="page_view",
                occurred_at=timezone.now(),
                identities=[IdentityInput("anonymous_id", "dev-1")],
            )
        ]
    )
    assert outcomes[0].status == "accepted"
    event = Event.objects.get(event_id="anon-1")
    assert event.contact.identities.filter(kind="anonymous_id", value="dev-1").exists()


def test_events_record_refuses_oversized_batches():
    contact = ContactFactory()
    with pytest.raises(ValidationFailed):
        events_record(items=[_event(f"e{i}", contact) for i in range(501)])
    assert not Event.objects.exists()


def test_tag_add_and_remove_are_recorded_on_the_timeline():
    contact, tag = ContactFactory(), TagFactory()
    assert contact_tag_add(contact=contact, tag=tag)
    assert not contact_tag_add(contact=contact, tag=tag)
    assert ContactTag.objects.filter(contact=contact, tag=tag).count() == 1
    assert contact_tag_remove(contact=contact, tag=tag)
    assert not contact_tag_remove(contact=contact, tag=tag)
    names = list(contact.events.order_by("pk").values_list("name", flat=True))
    assert names == ["tag_added", "tag_removed"]


def test_event_record_assigns_an_id():
    event = event_record(contact=ContactFactory(), name="sign_in")
    assert len(event.event_id) == 32


def test_timeline_pages_follow_time_even_when_events_arrive_out_of_order():
    from contacts.selectors import contact_timeline

    contact = ContactFactory()
    now = timezone.now()
    # Recorded in an order unrelated to when they happened.
    for minutes in (5, 50, 1, 30, 10, 20, 40):
        event_record(
            contact=contact, name="page_view", occurred_at=now - dt.timedelta(minutes=minutes)
        )
    seen = []
    before = None
    while page := contact_timeline(contact=contact, before=before, limit=3):
        seen.extend(page)
        before = page[-1].pk
    times = [e.occurred_at for e in seen]
    assert times == sorted(times, reverse=True)
    assert len(seen) == len({e.pk for e in seen}) == 7


# --- phone numbers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("02112345678", "+862112345678"),  # Shanghai landline with its area code
        ("+1 415 555 2671", "+14155552671"),
        ("+852 5123 4567", "+85251234567"),
    ],
)
def test_normalize_phone_gives_e164_for_landlines_and_other_countries(raw, expected):
    assert normalize_phone(raw) == expected


@pytest.mark.parametrize("raw", ["12345", "1380013800", "+86 12345678901234", "abc", "", "+1555"])
def test_normalize_phone_rejects_numbers_that_cannot_exist(raw):
    with pytest.raises(ValidationFailed) as exc:
        normalize_phone(raw)
    assert exc.value.code == "invalid_phone"


# --- notes ---------------------------------------------------------------------------------


def test_note_add_and_complete_show_on_the_timeline():
    author = UserFactory()
    contact = ContactFactory()
    due = timezone.now() + dt.timedelta(days=2)
    note = note_add(contact=contact, author=author, body="  回访：询问使用感受  ", follow_up_at=due)
    assert note.body == "回访：询问使用感受"
    assert note.follow_up_at == due and note.done_at is None

    done = note_complete(note=note, actor=author)
    first_done_at = done.done_at
    assert first_done_at is not None
    assert note_complete(note=note, actor=author).done_at == first_done_at  # idempotent
    names = list(contact.events.order_by("pk").values_list("name", flat=True))
    assert names == ["note_added", "follow_up_done"]


@pytest.mark.parametrize("body", ["", "   ", "长" * 5001])
def test_note_add_rejects_empty_and_over_long_bodies(body):
    contact = ContactFactory()
    with pytest.raises(ValidationFailed):
        note_add(contact=contact, author=None, body=body)
    assert not Note.objects.exists()
    assert not Event.objects.exists()


# --- consent -------------------------------------------------------------------------------


def test_consent_record_appends_and_keeps_the_current_state():
    contact = ContactFactory()
    first = consent_record(
        contact=contact,
        channel="sms",
        purpose="marketing",
        granted=True,
        source="mini_program_form",
        notice_version="2026-01",
        evidence={"page": "/pages/register", "checkbox": True},
    )
    state = Consent.objects.get(contact=contact, channel="sms", purpose="marketing")
    assert state.granted and state.record == first

    second = consent_record(
        contact=contact, channel="sms", purpose="marketing", granted=False, source="sms_reply_TD"
    )
    state.refresh_from_db()
    assert not state.granted and state.record == second
    assert ConsentRecord.objects.filter(contact=contact).count() == 2
    assert Consent.objects.filter(contact=contact).count() == 1
    names = list(contact.events.order_by("pk").values_list("name", flat=True))
    assert names == ["consent_granted", "consent_withdrawn"]


@pytest.mark.parametrize(
    "changes",
    [
        {"channel": "fax"},
        {"purpose": "resale"},
        {"granted": "yes"},
        {"source": ""},
        {"source": "x" * 51},
        {"notice_version": "v" * 31},
        {"evidence": ["not", "a", "dict"]},
    ],
)
def test_consent_record_rejects_bad_input_and_stores_nothing(changes):
    contact = ContactFactory()
    kwargs = {"channel": "sms", "purpose": "marketing", "granted": True, "source": "form"}
    with pytest.raises(ValidationFailed):
        consent_record(contact=contact, **{**kwargs, **changes})
    assert not ConsentRecord.objects.exists()
    assert not Consent.objects.exists()


# --- custom fields and profile updates -----------------------------------------------------


@pytest.fixture
def custom_fields():
    return [
        CustomField.objects.create(
            key="skin_type", label="肤质", kind="single_choice", choices=["dry", "oily", "mixed"]
        ),
        CustomField.objects.create(
            key="interests", label="兴趣", kind="multi_choice", choices=["护肤", "彩妆", "香水"]
        ),
        CustomField.objects.create(key="budget", label="预算", kind="number"),
        CustomField.objects.create(key="wedding_day", label="婚期", kind="date"),
        CustomField.objects.create(key="vip", label="VIP", kind="boolean"),
        CustomField.objects.create(key="remark", label="备注", kind="text"),
        CustomField.objects.create(key="retired", label="停用", kind="text", is_active=False),
    ]


def test_custom_fields_validate_cleans_each_kind(custom_fields):
    cleaned = custom_fields_validate(
        values={
            "skin_type": "dry",
            "interests": "护肤, 香水",
            "budget": "1200.50",
            "wedding_day": "2027-05-20",
            "vip": "是",
            "remark": "  老客户  ",
        },
        from_text=True,
    )
    assert cleaned == {
        "skin_type": "dry",
        "interests": ["护肤", "香水"],
        "budget": 1200.5,
        "wedding_day": "2027-05-20",
        "vip": True,
        "remark": "老客户",
    }
    assert custom_fields_validate(values={"budget": 3, "interests": ["彩妆"]}) == {
        "budget": 3,
        "interests": ["彩妆"],
    }


@pytest.mark.parametrize(
    "values, code",
    [
        ({"nope": 1}, "unknown_field"),
        ({"retired": "x"}, "unknown_field"),
        ({"skin_type": "normal"}, "invalid_custom_field"),
        ({"interests": ["护肤", "游戏"]}, "invalid_custom_field"),
        ({"interests": {"a": 1}}, "invalid_custom_field"),
        ({"budget": "lots"}, "invalid_custom_field"),
        ({"budget": True}, "invalid_custom_field"),
        ({"budget": "nan"}, "invalid_custom_field"),
        ({"wedding_day": "20/05/2027"}, "invalid_custom_field"),
        ({"vip": "maybe"}, "invalid_custom_field"),
        ({"remark": "字" * 501}, "invalid_custom_field"),
        ({"remark": ["a"]}, "invalid_custom_field"),
    ],
)
def test_custom_fields_validate_names_the_bad_field(custom_fields, values, code):
    with pytest.raises(ValidationFailed) as exc:
        custom_fields_validate(values=values)
    assert exc.value.code == code
    assert exc.value.details == {"field": next(iter(values))}


def test_identify_validates_traits_named_like_custom_fields(custom_fields):
    with pytest.raises(ValidationFailed):
        identify(identities=[IdentityInput("external_id", "c-1")], traits={"skin_type": "normal"})
    assert not Contact.objects.exists()
    with pytest.raises(ValidationFailed) as caught:
        identify(
            identities=[IdentityInput("external_id", "c-1")],
            traits={"skin_type": "oily", "free_trait": {"any": "thing"}},
        )
    assert caught.value.code == "unknown_trait"
    assert not Contact.objects.exists()
    result = identify(
        identities=[IdentityInput("external_id", "c-1")], traits={"skin_type": "oily"}
    )
    assert result.contact.attributes == {"skin_type": "oily"}


def test_contact_update_sets_listed_fields_and_custom_fields(custom_fields):
    operator = UserFactory()
    store = Store.objects.create(code="sh-01", name="上海一店")
    contact = ContactFactory(phone="")
    updated = contact_update(
        contact=contact,
        actor=operator,
        data={
            "name": "林小雨",
            "gender": "female",
            "birthday": "1992-03-04",
            "phone": "138 0013 8001",
            "email": "Lin@Example.cn",
            "lifecycle_stage": "first_purchase",
            "owner": operator.pk,
            "store": "sh-01",
            "utm_campaign": "双11",
            "skin_type": "dry",
            "interests": ["护肤"],
        },
    )
    contact.refresh_from_db()
    assert updated.pk == contact.pk
    assert contact.name == "林小雨" and contact.gender == "female"
    assert contact.birthday == dt.date(1992, 3, 4)
    assert contact.phone == "+8613800138001"
    assert contact.email == "lin@example.cn"
    assert contact.lifecycle_stage_id == "first_purchase"
    assert contact.owner == operator and contact.store == store
    assert contact.utm_campaign == "双11"
    assert contact.attributes == {"skin_type": "dry", "interests": ["护肤"]}
    assert set(contact.identities.values_list("kind", "value")) >= {
        ("phone", "+8613800138001"),
        ("email", "lin@example.cn"),
    }
    event = contact.events.get(name="profile_updated")
    assert "phone" in event.properties["fields"] and event.properties["source"] == "manual"

    # Store by id, clearing a custom field, and a corrected phone replaces the old identity.
    contact_update(
        contact=contact, data={"store": store.pk, "skin_type": None, "phone": "13800138002"}
    )
    contact.refresh_from_db()
    assert "skin_type" not in contact.attributes
    assert list(contact.identities.filter(kind="phone").values_list("value", flat=True)) == [
        "+8613800138002"
    ]


@pytest.mark.parametrize(
    "data, code",
    [
        ({"shoe_size": 42}, "unknown_field"),
        ({"created_at": "2020-01-01"}, "unknown_field"),
        ({"name": "长" * 101}, "invalid_field"),
        ({"name": 123}, "invalid_field"),
        ({"gender": "other"}, "invalid_field"),
        ({"birthday": "2999-01-01"}, "invalid_field"),
        ({"birthday": "1850-01-01"}, "invalid_field"),
        ({"birthday": "04/03/1992"}, "invalid_field"),
        ({"phone": "12345"}, "invalid_phone"),
        ({"email": "not-an-email"}, "invalid_email"),
        ({"lifecycle_stage": "nope"}, "invalid_field"),
        ({"owner": 999999}, "invalid_field"),
        ({"owner": "1"}, "invalid_field"),
        ({"store": "no-such-store"}, "invalid_field"),
        ({"utm_source": "u" * 101}, "invalid_field"),
        ({"skin_type": "normal"}, "invalid_custom_field"),
    ],
)
def test_contact_update_rejects_bad_input_and_stores_nothing(custom_fields, data, code):
    contact = ContactFactory(name="原名")
    with pytest.raises(ValidationFailed) as exc:
        contact_update(contact=contact, data={"city": "北京", **data})
    assert exc.value.code == code
    contact.refresh_from_db()
    assert contact.name == "原名" and contact.city == "上海"
    assert not contact.events.exists()


def test_contact_update_refuses_a_phone_that_belongs_to_another_contact():
    other = identify(identities=[IdentityInput("phone", "13800138003")]).contact
    contact = ContactFactory(phone="")
    with pytest.raises(ValidationFailed) as exc:
        contact_update(contact=contact, data={"phone": "13800138003"})
    assert exc.value.code == "identity_taken"
    assert exc.value.details["contact_id"] == other.pk


def test_contact_update_without_changes_records_nothing():
    contact = ContactFactory(city="上海")
    contact_update(contact=contact, data={"city": "上海"})
    assert not contact.events.exists()


def test_expired_tags_come_off_with_a_timeline_entry_and_a_change_signal(
    django_capture_on_commit_callbacks,
):
    import datetime as dt

    from django.utils import timezone

    from contacts.models import ContactTag, Event
    from contacts.services import contact_tags_expire
    from contacts.signals import contact_changed
    from tests.factories import ContactFactory, TagFactory

    tag = TagFactory(name="双11活动")
    gone, stays, forever = ContactFactory(), ContactFactory(), ContactFactory()
    now = timezone.now()
    ContactTag.objects.create(contact=gone, tag=tag, expires_at=now - dt.timedelta(minutes=1))
    ContactTag.objects.create(contact=stays, tag=tag, expires_at=now + dt.timedelta(days=1))
    ContactTag.objects.create(contact=forever, tag=tag)
    seen = []

    def listener(sender, contact_ids, **kwargs):
        seen.extend(contact_ids)

    contact_changed.connect(listener)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            assert contact_tags_expire(now=now) == 1
    finally:
        contact_changed.disconnect(listener)
    assert set(ContactTag.objects.values_list("contact_id", flat=True)) == {stays.pk, forever.pk}
    removed = Event.objects.get(name="tag_removed")
    assert removed.contact_id == gone.pk and removed.properties["reason"] == "expired"
    assert seen == [gone.pk]
    assert contact_tags_expire(now=now) == 0  # nothing left to do: safe to run again
