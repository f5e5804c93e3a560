"""The admin keeps the append-only records as they are and writes never-merge pairs through
the services; the event list stays cheap on a large table."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from contacts.models import (
    Consent,
    ConsentRecord,
    Contact,
    ContactTag,
    Event,
    Identity,
    MergeBlock,
    MergeRecord,
)
from core.models import AuditLog
from tests.factories import ContactFactory, EventFactory, TagFactory

pytestmark = pytest.mark.django_db


def _consent(contact):
    record = ConsentRecord.objects.create(
        contact=contact, channel="sms", purpose="marketing", granted=True, source="form"
    )
    consent = Consent.objects.create(
        contact=contact, channel="sms", purpose="marketing", granted=True, record=record
    )
    return record, consent


def test_events_are_not_added_or_edited_in_the_admin(admin_client):
    event = EventFactory(name="purchase", value=100)
    change = reverse("admin:contacts_event_change", args=[event.pk])
    assert admin_client.get(change).status_code == 200  # still viewable
    admin_client.post(
        change,
        {
            "event_id": event.event_id,
            "contact": event.contact_id,
            "name": "refund",
            "occurred_at_0": "2026-01-01",
            "occurred_at_1": "00:00:00",
            "properties": "{}",
            "value": "999",
        },
    )
    assert admin_client.get(reverse("admin:contacts_event_add")).status_code == 403
    event.refresh_from_db()
    assert (event.name, event.value) == ("purchase", 100)


def test_a_contact_with_events_can_still_be_deleted_in_the_admin(admin_client):
    # Erasing a customer's data is an admin's job; refusing to delete events would refuse it.
    event = EventFactory(name="purchase", value=100)
    delete = reverse("admin:contacts_contact_delete", args=[event.contact_id])

    admin_client.post(delete, {"post": "yes"})

    assert not Contact.objects.filter(pk=event.contact_id).exists()
    assert not Event.objects.filter(pk=event.pk).exists()


def test_the_event_list_runs_no_distinct_over_the_table(admin_client):
    event = EventFactory(name="purchase")
    url = reverse("admin:contacts_event_changelist")
    with CaptureQueriesContext(connection) as queries:
        assert admin_client.get(url).status_code == 200
    table = Event._meta.db_table
    scans = [q["sql"] for q in queries if table in q["sql"] and ("DISTINCT" in q["sql"].upper())]
    assert scans == []
    assert "MIN(" not in " ".join(q["sql"].upper() for q in queries if table in q["sql"])
    # Found by its exact id; a fragment finds nothing (it would read every row).
    found = admin_client.get(url, {"q": event.event_id})
    assert event.event_id in found.content.decode()
    assert event.event_id not in admin_client.get(url, {"q": event.event_id[:8]}).content.decode()


def test_consent_records_and_states_are_only_written_by_recording_consent(admin_client):
    record, consent = _consent(ContactFactory())
    assert admin_client.get(reverse("admin:contacts_consentrecord_add")).status_code == 403
    assert admin_client.get(reverse("admin:contacts_consent_add")).status_code == 403
    delete = reverse("admin:contacts_consent_delete", args=[consent.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    admin_client.post(
        reverse("admin:contacts_consent_changelist"),
        {"action": "delete_selected", "_selected_action": [consent.pk], "post": "yes"},
    )
    assert Consent.objects.filter(pk=consent.pk).exists()
    for name in ("consentrecord", "consent"):
        obj = record if name == "consentrecord" else consent
        page = reverse(f"admin:contacts_{name}_change", args=[obj.pk])
        assert admin_client.get(page).status_code == 200


def test_merge_records_are_not_edited_or_deleted_in_the_admin(admin_client):
    survivor, duplicate, other = ContactFactory(), ContactFactory(), ContactFactory()
    record = MergeRecord.objects.create(survivor=survivor, duplicate=duplicate, reason="manual")
    change = reverse("admin:contacts_mergerecord_change", args=[record.pk])
    assert admin_client.get(change).status_code == 200
    admin_client.post(change, {"survivor": other.pk, "duplicate": duplicate.pk, "reason": "manual"})
    assert admin_client.get(reverse("admin:contacts_mergerecord_add")).status_code == 403
    delete = reverse("admin:contacts_mergerecord_delete", args=[record.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    admin_client.post(
        reverse("admin:contacts_mergerecord_changelist"),
        {"action": "delete_selected", "_selected_action": [record.pk], "post": "yes"},
    )
    record.refresh_from_db()
    assert record.survivor_id == survivor.pk


def test_a_never_merge_pair_added_and_removed_in_the_admin_is_audited(admin_client):
    first, second = ContactFactory(), ContactFactory()
    # Entered the other way round: stored as (lower id, higher id).
    response = admin_client.post(
        reverse("admin:contacts_mergeblock_add"), {"low": second.pk, "high": first.pk}
    )
    assert response.status_code == 302
    block = MergeBlock.objects.get()
    assert (block.low_id, block.high_id) == (first.pk, second.pk)
    assert block.actor is not None
    added = AuditLog.objects.get(action="contact.merge_block")
    assert added.actor == block.actor

    admin_client.post(reverse("admin:contacts_mergeblock_delete", args=[block.pk]), {"post": "yes"})
    assert not MergeBlock.objects.exists()
    assert AuditLog.objects.filter(action="contact.merge_unblock").count() == 1


def test_a_contact_cannot_be_declared_distinct_from_itself(admin_client):
    contact = ContactFactory()
    response = admin_client.post(
        reverse("admin:contacts_mergeblock_add"), {"low": contact.pk, "high": contact.pk}
    )
    assert response.status_code == 200
    assert not MergeBlock.objects.exists()
    assert response.context["adminform"].form.errors


@pytest.fixture
def phoned():
    contact = ContactFactory(phone="+8613800138000")
    phone = Identity.objects.create(contact=contact, kind="phone", value="+8613800138000")
    wechat = Identity.objects.create(contact=contact, kind="external_id", value="o-1")
    return contact, phone, wechat


def test_the_identity_of_the_contacts_phone_is_not_edited_alone(admin_client, phoned):
    contact, phone, wechat = phoned
    url = reverse("admin:contacts_identity_change", args=[phone.pk])
    data = {"contact": contact.pk, "kind": "phone", "app_id": "", "value": "13700137000"}

    refused = admin_client.post(url, data)

    assert refused.status_code == 200
    assert refused.context["adminform"].form.errors
    phone.refresh_from_db()
    assert phone.value == contact.phone == "+8613800138000"
    # Other identities stay editable.
    other = {"contact": contact.pk, "kind": "external_id", "app_id": "", "value": "o-2"}
    assert (
        admin_client.post(
            reverse("admin:contacts_identity_change", args=[wechat.pk]), other
        ).status_code
        == 302
    )


def test_the_identity_of_the_contacts_phone_is_not_deleted_alone(admin_client, phoned):
    contact, phone, wechat = phoned
    delete = reverse("admin:contacts_identity_delete", args=[phone.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 200  # the refusal page
    admin_client.post(
        reverse("admin:contacts_identity_changelist"),
        {"action": "delete_selected", "_selected_action": [phone.pk, wechat.pk], "post": "yes"},
    )
    assert set(Identity.objects.filter(contact=contact).values_list("pk", flat=True)) == {
        phone.pk,
        wechat.pk,
    }
    admin_client.post(reverse("admin:contacts_identity_delete", args=[wechat.pk]), {"post": "yes"})
    assert list(Identity.objects.filter(contact=contact)) == [phone]


def _inline_post(client, contact, rows, **changes):
    url = reverse("admin:contacts_contact_change", args=[contact.pk])
    page = client.get(url)
    data: dict = {}
    for field in page.context["adminform"].form:
        value = field.value()
        if field.html_name.endswith("created_at") or isinstance(value, bool):
            continue
        data[field.html_name] = "" if value is None else str(value)
    data["lifecycle_stage"] = contact.lifecycle_stage_id
    for inline in page.context["inline_admin_formsets"]:
        prefix = inline.formset.prefix
        mine = rows if inline.formset.model is Identity else []
        data[f"{prefix}-TOTAL_FORMS"] = data[f"{prefix}-INITIAL_FORMS"] = str(len(mine))
        for i, (identity, delete) in enumerate(mine):
            data |= {
                f"{prefix}-{i}-id": identity.pk,
                f"{prefix}-{i}-contact": contact.pk,
                f"{prefix}-{i}-kind": identity.kind,
                f"{prefix}-{i}-app_id": identity.app_id,
                f"{prefix}-{i}-value": identity.value,
            }
            if delete:
                data[f"{prefix}-{i}-DELETE"] = "on"
    return client.post(url, {**data, **changes})


def test_the_phone_identity_is_not_deleted_inline_but_goes_with_a_new_phone(admin_client, phoned):
    contact, phone, wechat = phoned

    refused = _inline_post(admin_client, contact, [(phone, True), (wechat, False)])

    assert refused.status_code == 200
    assert Identity.objects.filter(pk=phone.pk).exists()

    changed = _inline_post(
        admin_client, contact, [(phone, True), (wechat, False)], phone="13700137000"
    )

    assert changed.status_code == 302
    contact.refresh_from_db()
    assert contact.phone == "+8613700137000"
    assert set(
        Identity.objects.filter(contact=contact, kind="phone").values_list("value", flat=True)
    ) == {"+8613700137000"}


@pytest.mark.parametrize("model", [Contact, ConsentRecord])
def test_large_lists_run_no_distinct_over_their_table(admin_client, model):
    contact = ContactFactory(source="小红书", province="浙江")
    _consent(contact)
    opts = model._meta
    with CaptureQueriesContext(connection) as queries:
        page = admin_client.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
    assert page.status_code == 200
    sql = [q["sql"].upper() for q in queries if opts.db_table in q["sql"]]
    assert [q for q in sql if "DISTINCT" in q] == []


def _assignment_form(contact, tag, **extra) -> dict:
    """The tag-assignment admin's add form, as an admin fills it in."""
    return {
        "contact": contact.pk,
        "tag": tag.pk,
        "source": "manual",
        "created_at_0": "2026-11-01",
        "created_at_1": "10:00:00",
        **extra,
    }


def test_a_tag_given_and_taken_in_the_tag_assignment_admin_is_on_the_timeline_and_in_segments(
    admin_client, django_capture_on_commit_callbacks
):
    from segments.services import segment_create, segments_refresh_incremental

    tag = TagFactory(name="高净值")
    contact = ContactFactory()
    segment = segment_create(
        name="高净值客户",
        rule={"op": "and", "conditions": [{"type": "tag", "match": "any", "tags": [tag.pk]}]},
    )

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            reverse("admin:contacts_contacttag_add"),
            _assignment_form(contact, tag),
        )
    segments_refresh_incremental()

    assert contact.events.filter(name="tag_added", properties__tag_id=tag.pk).exists()
    assert segment.memberships.filter(contact=contact).exists()

    assignment = ContactTag.objects.get(contact=contact, tag=tag)
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            reverse("admin:contacts_contacttag_delete", args=[assignment.pk]), {"post": "yes"}
        )
    segments_refresh_incremental()

    assert contact.events.filter(name="tag_removed", properties__tag_id=tag.pk).exists()
    assert not segment.memberships.filter(contact=contact).exists()


def test_a_tag_expiry_set_in_the_admin_must_be_in_the_future(admin_client):
    tag, contact = TagFactory(), ContactFactory()

    response = admin_client.post(
        reverse("admin:contacts_contacttag_add"),
        _assignment_form(contact, tag, expires_at_0="2020-01-01", expires_at_1="00:00:00"),
    )

    assert response.status_code == 200
    assert (
        "must be in the future" in response.content.decode() or "必须" in response.content.decode()
    )
    assert not ContactTag.objects.exists()


def test_deleting_contacts_in_the_admin_is_audited_without_personal_data(admin_client):
    one, two = ContactFactory(name="林小雨", phone="+8613800138000"), ContactFactory()

    admin_client.post(reverse("admin:contacts_contact_delete", args=[one.pk]), {"post": "yes"})
    admin_client.post(
        reverse("admin:contacts_contact_changelist"),
        {"action": "delete_selected", "_selected_action": [two.pk], "post": "yes"},
    )

    assert not Contact.objects.filter(pk__in=[one.pk, two.pk]).exists()
    # A deletion in the admin is an erasure (contacts.services.erasure), audited as one.
    entries = AuditLog.objects.filter(action="contact.erase").order_by("pk")
    assert [(e.object_type, e.object_id) for e in entries] == [
        ("contacts.contact", str(one.pk)),
        ("contacts.contact", str(two.pk)),
    ]
    assert all(e.actor is not None and e.ip for e in entries)
    assert "林小雨" not in str([e.details for e in entries])
