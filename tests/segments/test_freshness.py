"""Segment membership follows merges, big imports and the nightly RFM and KOC recomputes."""

import datetime as dt
import uuid
from decimal import Decimal

import pandas as pd
import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from contacts import importers
from contacts.importers import ImportSpec
from contacts.models import Contact, Event, IdentityKind
from contacts.services import contact_merge, contact_merge_undo
from core.models import JobStatus
from segments import merging, tasks
from segments.models import DirtyContact, RFMLayer, Segment, SegmentMembership
from segments.services import segment_create, segment_static_add
from tests.factories import ContactFactory, EventFactory, IdentityFactory

pytestmark = pytest.mark.django_db


def members(segment: Segment) -> set[int]:
    return set(segment.memberships.values_list("contact_id", flat=True))


def rule(*conditions: dict) -> dict:
    return {"op": "and", "conditions": list(conditions)}


def memberships() -> list[tuple]:
    return sorted(SegmentMembership.objects.values_list("segment_id", "contact_id", "entered_at"))


def counts() -> dict[int, int]:
    return dict(Segment.objects.values_list("pk", "member_count"))


# --- merge and undo ------------------------------------------------------------------------


def test_merge_moves_the_duplicates_static_lists_and_undo_puts_them_back_exactly(
    django_capture_on_commit_callbacks,
):
    survivor, duplicate, other = ContactFactory(), ContactFactory(), ContactFactory()
    only_duplicate = segment_create(name="门店活动名单", kind="static")
    both = segment_create(name="VIP 名单", kind="static")
    segment_static_add(segment=only_duplicate, contact_ids=[duplicate.pk, other.pk])
    segment_static_add(segment=both, contact_ids=[survivor.pk])
    segment_static_add(segment=both, contact_ids=[duplicate.pk])
    # A rule-based segment reading the list follows it through the merge.
    reader = segment_create(
        name="活动名单里的人", rule=rule({"type": "segment", "segment": only_duplicate.pk})
    )
    assert members(reader) == {duplicate.pk, other.pk}
    before, counts_before = memberships(), counts()
    moved_row = only_duplicate.memberships.get(contact=duplicate)

    with django_capture_on_commit_callbacks(execute=True):
        record = contact_merge(survivor=survivor, duplicate=duplicate)

    assert members(only_duplicate) == {survivor.pk, other.pk}
    # The very row moved: the survivor keeps the duplicate's place and entry time.
    assert only_duplicate.memberships.get(contact=survivor).entered_at == moved_row.entered_at
    assert members(both) == {survivor.pk}
    assert not SegmentMembership.objects.filter(contact=duplicate).exists()
    assert counts()[only_duplicate.pk] == 2 and counts()[both.pk] == 1
    assert members(reader) == {survivor.pk, other.pk}
    record.refresh_from_db()
    assert record.moved[merging.MOVED_KEY] == [only_duplicate.pk]
    assert [row["segment"] for row in record.moved[merging.DROPPED_KEY]] == [both.pk]
    # A move, not an entry: nobody entered or left a static list.
    assert not Event.objects.filter(
        name__in=("segment_entered", "segment_exited"),
        properties__segment_id__in=[only_duplicate.pk, both.pk],
        occurred_at__gte=record.created_at,
    ).exists()

    with django_capture_on_commit_callbacks(execute=True):
        contact_merge_undo(record=record)

    static_rows = [row for row in memberships() if row[0] in (only_duplicate.pk, both.pk)]
    assert static_rows == [row for row in before if row[0] in (only_duplicate.pk, both.pk)]
    assert counts()[only_duplicate.pk] == counts_before[only_duplicate.pk]
    assert counts()[both.pk] == counts_before[both.pk]
    assert members(reader) == {duplicate.pk, other.pk}


def test_undo_leaves_out_a_list_deleted_or_left_since_the_merge(
    django_capture_on_commit_callbacks,
):
    survivor, duplicate = ContactFactory(), ContactFactory()
    kept, deleted = (segment_create(name=n, kind="static") for n in ("名单甲", "名单乙"))
    segment_static_add(segment=kept, contact_ids=[duplicate.pk])
    segment_static_add(segment=deleted, contact_ids=[survivor.pk, duplicate.pk])
    with django_capture_on_commit_callbacks(execute=True):
        record = contact_merge(survivor=survivor, duplicate=duplicate)
    # Since the merge an operator took the survivor off one list and deleted the other.
    SegmentMembership.objects.filter(segment=kept, contact=survivor).delete()
    deleted.delete()

    with django_capture_on_commit_callbacks(execute=True):
        contact_merge_undo(record=record)

    assert members(kept) == set()
    assert not SegmentMembership.objects.filter(segment_id=deleted.pk).exists()


# --- big imports ---------------------------------------------------------------------------


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


def _import(rows: list[dict], capture):
    content = pd.DataFrame(rows).to_csv(index=False).encode()
    job = importers.import_upload(file=SimpleUploadedFile("客户.csv", content), user=None)
    spec = ImportSpec(mapping=job.params["mapping"], key="phone", tag_ids=[])
    with capture(execute=True):
        importers.import_start(job=job, spec=spec)
    job.refresh_from_db()
    return job


def test_a_big_import_refreshes_the_on_change_segments(
    media, monkeypatch, django_capture_on_commit_callbacks
):
    # Three rows count as "big": no per-contact signal, the segments rebuild instead.
    monkeypatch.setattr(importers, "SIGNAL_LIMIT", 2)
    moved = ContactFactory(phone="+8613800138000", city="北京")
    IdentityFactory(contact=moved, kind=IdentityKind.PHONE, value="+8613800138000")
    shanghai = segment_create(
        name="上海客户",
        rule=rule({"type": "attribute", "field": "city", "operator": "eq", "value": "上海"}),
    )
    assert members(shanghai) == set()
    rows = [
        {"手机号": "13800138000", "城市": "上海"},
        {"手机号": "13900139000", "城市": "上海"},
        {"手机号": "13700137000", "城市": "广州"},
    ]

    job = _import(rows, django_capture_on_commit_callbacks)

    assert job.status == JobStatus.SUCCEEDED
    assert (job.result["created"], job.result["updated"]) == (2, 1)
    expected = set(Contact.objects.filter(city="上海").values_list("pk", flat=True))
    assert moved.pk in expected and len(expected) == 2
    # At once, not waiting for a tick of the incremental pass.
    assert members(shanghai) == expected
    shanghai.refresh_from_db()
    assert shanghai.member_count == 2
    entered = Event.objects.filter(name="segment_entered", properties__segment_id=shanghai.pk)
    assert set(entered.values_list("contact_id", flat=True)) == expected


# --- RFM and KOC ---------------------------------------------------------------------------


def _buy(contact, *, days_ago: float, value: str) -> None:
    EventFactory(
        contact=contact,
        name="purchase",
        occurred_at=timezone.now() - dt.timedelta(days=days_ago),
        value=Decimal(value),
        properties={"order_id": uuid.uuid4().hex[:8]},
    )


def test_an_rfm_recompute_moves_contacts_in_and_out_of_layer_segments():
    best, other = ContactFactory(), ContactFactory()
    for days in (1, 2, 3):
        _buy(best, days_ago=days, value="800.00")
    _buy(other, days_ago=200, value="20.00")
    vip = segment_create(
        name="重要价值客户", rule=rule({"type": "rfm", "layers": [RFMLayer.IMPORTANT_VALUE]})
    )
    assert members(vip) == set()

    tasks.rfm_recompute()
    tasks.tick()  # what beat runs every minute

    assert members(vip) == {best.pk}

    # The other buyer overtakes: both change layer.
    for days in (0.5, 0.6, 0.7, 0.8):
        _buy(other, days_ago=days, value="5000.00")
    tasks.rfm_recompute()
    assert set(DirtyContact.objects.values_list("contact_id", flat=True)) == {best.pk, other.pk}
    tasks.tick()

    assert members(vip) == {other.pk}
    assert Event.objects.filter(
        name="segment_exited", contact=best, properties__segment_id=vip.pk
    ).exists()

    # Nothing moved, nothing queued.
    tasks.rfm_recompute()
    assert not DirtyContact.objects.exists()


def _referral(referrer, invitee) -> None:
    EventFactory(
        contact=invitee,
        name="referral_accepted",
        properties={"referrer_contact_id": referrer.pk},
        occurred_at=timezone.now() - dt.timedelta(days=1),
    )


def test_a_koc_recompute_updates_segments_on_kocs():
    koc, fan = ContactFactory(), ContactFactory()
    invitees = [ContactFactory() for _ in range(5)]
    for invitee in invitees:
        _referral(koc, invitee)  # 5 invites × 5 points: above the minimum score of 20
    kocs = segment_create(name="KOC", rule=rule({"type": "koc", "operator": "is_koc"}))
    fans = segment_create(
        name="有影响力", rule=rule({"type": "koc", "operator": "score_gte", "value": 5})
    )

    tasks.influence_compute()
    tasks.tick()

    assert members(kocs) == {koc.pk}
    assert members(fans) == {koc.pk}

    _referral(fan, invitees[0])
    tasks.influence_compute()
    # Only the contact whose score moved is queued.
    assert list(DirtyContact.objects.values_list("contact_id", flat=True)) == [fan.pk]
    tasks.tick()

    assert members(kocs) == {koc.pk}
    assert members(fans) == {koc.pk, fan.pk}


def test_kocs_are_computed_before_the_default_daily_segment_refresh():
    schedule = settings.SCRM_PERIODIC_TASKS
    daily_hour = Segment._meta.get_field("refresh_hour").default
    for name in ("segments: RFM recompute", "segments: influence compute"):
        assert schedule[name]["daily_at"] < f"{daily_hour:02d}:00", name
