"""Concurrent identify calls, with real threads and real transactions (PostgreSQL and SQLite).

On PostgreSQL both calls really interleave: each looks the phone up, finds nothing, creates a
contact and inserts the phone identity; the unique constraint lets one win and the loser's retry
must find the winner's contact. SQLite's IMMEDIATE transactions serialise the two calls instead,
so there the same test checks that the second call simply finds the first one's contact. Two
calls that decide to merge the same contacts only race on PostgreSQL: that test skips SQLite.
"""

import contextlib
import functools
import threading

import pytest
from django.db import connection

from contacts.models import Contact, Identity, MergeRecord
from contacts.services import IdentityInput, identify
from contacts.services import identity as services
from tests.contacts.locking import in_threads

pytestmark = pytest.mark.django_db(transaction=True)

PHONE = "13800138000"


def _run_in_threads(count: int, target) -> tuple[list, list]:
    """`target(n)` for n in range(count), each in its own thread and connection."""
    return in_threads([functools.partial(target, n) for n in range(count)])


def _hold_first_lookup(monkeypatch, count: int, timeout: float = 10) -> list[int]:
    """Make each thread's first identity look-up wait (up to `timeout`) until `count` threads
    have looked; return the list that records every attempt."""
    barrier = threading.Barrier(count)
    held: set[int] = set()
    lock = threading.Lock()
    attempts: list[int] = []
    find = services._find_identities
    once = services._identify_once

    def find_then_wait(identities):
        rows = find(identities)
        me = threading.get_ident()
        with lock:
            first = me not in held
            held.add(me)
        if first:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=timeout)
        return rows

    def count_attempts(*args, **kwargs):
        attempts.append(threading.get_ident())
        return once(*args, **kwargs)

    monkeypatch.setattr(services, "_find_identities", find_then_wait)
    monkeypatch.setattr(services, "_identify_once", count_attempts)
    return attempts


def test_two_identify_calls_with_the_same_new_phone_make_exactly_one_contact(monkeypatch):
    # Hold each call's first look-up until both have looked: both then miss and race to insert.
    # SQLite: the other thread waits for the write lock, so the wait times out and the calls
    # run one after the other, which is the serialisation we rely on there.
    attempts = _hold_first_lookup(monkeypatch, 2, timeout=2)

    results, errors = _run_in_threads(
        2,
        lambda n: identify(
            identities=[IdentityInput("miniprogram_openid", f"o-{n}", app_id="wxapp")],
            traits={"phone": PHONE},
        ),
    )

    assert errors == []
    assert Contact.objects.count() == 1
    contact = Contact.objects.get()
    assert {r.contact.pk for r in results} == {contact.pk}
    assert sorted(r.created for r in results) == [False, True]
    assert set(Identity.objects.values_list("contact_id", "kind", "value")) == {
        (contact.pk, "phone", "+8613800138000"),
        (contact.pk, "miniprogram_openid", "o-0"),
        (contact.pk, "miniprogram_openid", "o-1"),
    }
    if connection.vendor == "postgresql":
        # The race really happened: the loser's first attempt failed and it tried again.
        assert len(attempts) == 3


def test_two_identify_calls_merging_the_same_contacts_converge_on_the_survivor(monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("SQLite serialises the two calls: they cannot both decide to merge")
    known = identify(identities=[IdentityInput("wechat_unionid", "u-race")]).contact
    visitor = identify(identities=[IdentityInput("anonymous_id", "dev-race")]).contact
    # Both calls see the two contacts before either merges them: both decide to merge, and the
    # second waits on the first one's row locks, then finds the visitor merged already.
    attempts = _hold_first_lookup(monkeypatch, 2)

    results, errors = _run_in_threads(
        2,
        lambda n: identify(
            identities=[
                IdentityInput("wechat_unionid", "u-race"),
                IdentityInput("anonymous_id", "dev-race"),
            ],
            traits={"city": "杭州"},
        ),
    )

    assert errors == []
    assert [r.contact.pk for r in results] == [known.pk, known.pk]
    assert sorted(r.merged for r in results) == [[], [visitor.pk]]
    assert MergeRecord.objects.get().duplicate_id == visitor.pk
    assert Contact.objects.get(pk=visitor.pk).merged_into_id == known.pk
    assert Contact.objects.get(pk=known.pk).city == "杭州"
    assert set(Identity.objects.values_list("contact_id", flat=True)) == {known.pk}
    # The race really happened: the loser's first attempt was refused and it looked again.
    assert len(attempts) == 3


def test_many_concurrent_identify_calls_converge_on_one_contact():
    barrier = threading.Barrier(6)

    def call(n: int):
        barrier.wait(timeout=10)
        return identify(
            identities=[IdentityInput("phone", PHONE), IdentityInput("anonymous_id", f"dev-{n}")],
            traits={"city": "上海"},
        )

    results, errors = _run_in_threads(6, call)

    assert errors == []
    assert Contact.objects.count() == 1
    assert len({r.contact.pk for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert Identity.objects.filter(kind="anonymous_id").count() == 6
