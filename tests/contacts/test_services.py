import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from contacts.models import Contact, ContactTag, Event, Identity
from contacts.services import (
    EventInput,
    IdentityInput,
    contact_tag_add,
    contact_tag_remove,
    event_record,
    events_record,
    identify,
    normalize_phone,
)
from core.errors import ValidationFailed
from tests.factories import ContactFactory, TagFactory

pytestmark = pytest.mark.django_db


def test_identify_creates_a_contact_with_identities_and_traits():
    result = identify(
        identities=[IdentityInput("miniprogram_openid", "oA1", app_id="wxapp")],
        traits={"name": "林小雨", "phone": "138 0013 8000", "city": "上海", "vip_level": 3},
    )
    assert result.created
    contact = Contact.objects.get(pk=result.contact.pk)
    assert contact.name == "林小雨"
    assert contact.phone == "+8613800138000"
    assert contact.attributes == {"vip_level": 3}
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


def test_identify_reports_two_contacts_without_merging_them():
    a = identify(identities=[IdentityInput("external_id", "a")]).contact
    b = identify(identities=[IdentityInput("wechat_unionid", "u")]).contact
    result = identify(
        identities=[IdentityInput("external_id", "a"), IdentityInput("wechat_unionid", "u")]
    )
    assert result.contact.pk == a.pk
    assert result.conflicts == [b.pk]
    assert Contact.objects.count() == 2


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
    outcomes = events_record(
        items=[
            _event("e1", contact),
            _event("e1", contact),  # repeated inside the batch
            _event("e2", contact, occurred_at=future),
            EventInput(event_id="e3", name="x", occurred_at=timezone.now(), contact_id=999999),
            _event("e4", contact, name="purchase", value=Decimal("12.50")),
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
