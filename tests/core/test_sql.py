"""insert_new / delete_returning: who a write changed, told by the statement that wrote it, so
that concurrent and retried write paths report (and record events for) each change once."""

import threading

import pytest
from django.db import connection, transaction

from contacts.models import ContactTag, TagSource
from core.sql import delete_returning, insert_new
from segments.models import SegmentMembership
from tests.contacts.locking import in_threads
from tests.factories import ContactFactory, SegmentFactory, TagFactory

pytestmark = pytest.mark.django_db


def _rows(tag, contacts) -> list[dict]:
    return [{"contact": c, "tag": tag, "source": TagSource.MANUAL} for c in contacts]


def test_insert_new_returns_only_the_rows_it_inserted():
    tag = TagFactory()
    first, second, third = ContactFactory.create_batch(3)
    ContactTag.objects.create(contact=first, tag=tag)

    inserted = insert_new(ContactTag, _rows(tag, [first, second, third]), returning="contact")

    assert sorted(inserted) == sorted([second.pk, third.pk])
    assert ContactTag.objects.filter(tag=tag).count() == 3
    assert insert_new(ContactTag, _rows(tag, [first, second]), returning="contact") == []
    assert insert_new(ContactTag, [], returning="contact") == []


def test_insert_new_stores_values_as_the_fields_prepare_them():
    tag = TagFactory()
    contact = ContactFactory()

    insert_new(ContactTag, _rows(tag, [contact]), returning="contact")

    row = ContactTag.objects.get(tag=tag, contact=contact)
    assert row.source == TagSource.MANUAL
    assert row.created_at is not None  # the model's default, not NULL


def test_delete_returning_returns_what_it_deleted():
    tag, other = TagFactory(), TagFactory()
    tagged, untagged = ContactFactory(), ContactFactory()
    ContactTag.objects.create(contact=tagged, tag=tag)
    ContactTag.objects.create(contact=tagged, tag=other)

    gone = delete_returning(
        ContactTag.objects.filter(tag=tag, contact_id__in=[tagged.pk, untagged.pk]),
        returning="contact",
    )

    assert gone == [tagged.pk]
    assert list(ContactTag.objects.values_list("tag_id", flat=True)) == [other.pk]
    assert delete_returning(ContactTag.objects.filter(tag=tag), returning="contact") == []


def test_delete_returning_matches_rows_by_a_composite_primary_key():
    kept, other = SegmentFactory(), SegmentFactory()
    a, b = ContactFactory(), ContactFactory()
    for segment in (kept, other):
        for contact in (a, b):
            SegmentMembership.objects.create(segment=segment, contact=contact)

    gone = delete_returning(
        SegmentMembership.objects.filter(segment=other, contact_id__in=[a.pk]), returning="contact"
    )

    assert gone == [a.pk]
    assert sorted(SegmentMembership.objects.values_list("segment_id", "contact_id")) == sorted(
        [(kept.pk, a.pk), (kept.pk, b.pk), (other.pk, b.pk)]
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrent writers: PostgreSQL")
def test_concurrent_writers_each_get_back_only_their_own_rows():
    tag = TagFactory()
    contacts = ContactFactory.create_batch(40)
    start = threading.Barrier(4)

    def add():
        start.wait()
        with transaction.atomic():
            return insert_new(ContactTag, _rows(tag, contacts), returning="contact")

    added, errors = in_threads([add] * 4)
    assert not errors
    assert sorted(pk for got in added for pk in got) == sorted(c.pk for c in contacts)

    def remove():
        start.wait()
        with transaction.atomic():
            return delete_returning(ContactTag.objects.filter(tag=tag), returning="contact")

    removed, errors = in_threads([remove] * 4)
    assert not errors
    assert sorted(pk for got in removed for pk in got) == sorted(c.pk for c in contacts)
    assert not ContactTag.objects.filter(tag=tag).exists()
