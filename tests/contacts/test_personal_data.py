"""A copy of everything stored about a person (contacts.personal_data), for their access
request: the whole merged family, unmasked, with the higher apps' sections."""

import datetime as dt
import json
from decimal import Decimal

import pytest
from django.utils import timezone

from contacts.models import ContactTag, CustomField, CustomFieldKind, Event, TagSource
from contacts.personal_data import (
    FORMAT_VERSION,
    contact_personal_data,
    personal_data_file,
)
from contacts.services import (
    IdentityInput,
    consent_record,
    contact_merge,
    identify,
    note_add,
)
from membership.services import member_get_or_create, points_apply
from tests.factories import ContactFactory, TagFactory, TierFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def family():
    """张三, with a mini-program visitor merged into them and an older duplicate merged into
    the visitor before that (a merge of a merge)."""
    CustomField.objects.create(key="shoe_size", label="鞋码", kind=CustomFieldKind.NUMBER)
    person = identify(
        identities=[IdentityInput("wechat_unionid", "union-1")],
        traits={"name": "张三", "phone": "13800138000", "email": "zhang@example.com"},
    ).contact
    person.attributes = {"shoe_size": 42, "favourite_colour": "绿"}
    person.save(update_fields=["attributes"])
    visitor = identify(
        identities=[IdentityInput("miniprogram_openid", "o-1", app_id="wxa")]
    ).contact
    older = ContactFactory(name="张三（旧）", phone="+8613900139000")
    Event.objects.create(
        contact=older,
        name="purchase",
        occurred_at=timezone.now() - dt.timedelta(days=400),
        value=Decimal("199.90"),
        properties={"order_id": "A-1", "items": ["鞋"]},
        source="import",
    )
    contact_merge(survivor=visitor, duplicate=older)
    contact_merge(survivor=person, duplicate=visitor)
    ContactTag.objects.create(
        contact=person,
        tag=TagFactory(name="高价值"),
        source=TagSource.RULE,
        expires_at=timezone.now() + dt.timedelta(days=30),
    )
    note_add(contact=person, author=None, body="住在上海市静安区")
    consent_record(
        contact=person,
        channel="sms",
        purpose="marketing",
        granted=True,
        source="miniprogram",
        notice_version="v3",
    )
    return person, visitor, older


def test_the_copy_holds_the_whole_merged_family_unmasked(family):
    person, visitor, older = family

    data = contact_personal_data(contact=older)  # a merged-away id leads to the survivor

    assert data["version"] == FORMAT_VERSION
    assert data["contact_id"] == person.pk
    assert data["contact_ids"] == sorted([person.pk, visitor.pk, older.pk])
    sections = data["sections"]
    profiles = {row["id"]: row for row in sections["contacts.profile"]}
    assert profiles[person.pk]["phone"] == "+8613800138000"  # not +86138****8000
    assert profiles[person.pk]["email"] == "zhang@example.com"
    assert profiles[older.pk]["phone"] == "+8613900139000"
    assert profiles[older.pk]["merged_into"] == visitor.pk
    assert {(r["label"], r["value"]) for r in sections["contacts.custom_fields"]} == {
        ("鞋码", 42),
        ("favourite_colour", "绿"),
    }
    identities = {(r["kind"], r["app_id"], r["value"]) for r in sections["contacts.identities"]}
    assert ("miniprogram_openid", "wxa", "o-1") in identities
    assert ("wechat_unionid", "", "union-1") in identities
    [tag] = sections["contacts.tags"]
    assert (tag["group"], tag["name"], tag["source"]) == ("兴趣", "高价值", "rule")
    assert tag["expires_at"]
    [purchase] = [e for e in sections["contacts.events"] if e["name"] == "purchase"]
    assert purchase["value"] == "199.90"
    assert purchase["properties"] == {"order_id": "A-1", "items": ["鞋"]}
    assert dt.datetime.fromisoformat(purchase["occurred_at"])
    assert [n["body"] for n in sections["contacts.notes"]] == ["住在上海市静安区"]
    [consent] = sections["contacts.consents"]
    assert (consent["channel"], consent["granted"]) == ("sms", True)
    assert sections["contacts.consent_records"][0]["notice_version"] == "v3"
    assert {(m["survivor_id"], m["duplicate_id"]) for m in sections["contacts.merges"]} == {
        (visitor.pk, older.pk),
        (person.pk, visitor.pk),
    }
    assert "snapshot" not in sections["contacts.merges"][0]


def test_the_higher_apps_sections_are_merged_in(family):
    person, _visitor, _older = family
    TierFactory(min_growth=0)
    member = member_get_or_create(contact=person)
    points_apply(member=member, delta=120, reason="purchase", idempotency_key="order-A-2")

    sections = contact_personal_data(contact=person)["sections"]

    [card] = sections["membership.members"]
    assert (card["contact_id"], card["points_balance"]) == (person.pk, 120)
    assert [e["points"] for e in sections["membership.points_entries"]] == [120]


def test_the_file_is_indented_utf8_json(family):
    person, _visitor, _older = family

    body = personal_data_file(contact_personal_data(contact=person))

    assert "张三".encode() in body  # not \\u5f20
    assert body.startswith(b"{\n  ")
    assert json.loads(body)["contact_id"] == person.pk


def test_a_contact_without_merges_is_its_own_family():
    contact = ContactFactory()

    data = contact_personal_data(contact=contact)

    assert data["contact_ids"] == [contact.pk]
    assert data["sections"]["contacts.events"] == []
    json.dumps(data)  # serialisable as it is
