"""identify calls that merge the same contacts, met in opposite orders, on PostgreSQL.

Each call locks every contact it involves up front, in id order, so two calls over overlapping
sets of contacts queue instead of deadlocking; should PostgreSQL still abort one of them (a lock
taken outside identify's order), identify retries it instead of failing the caller.

SQLite runs one write transaction at a time (IMMEDIATE), so two calls never hold row locks at
once there: these tests skip it.
"""

import threading

import pytest
from django.db import connection, transaction

from contacts.models import Contact, Identity, MergeRecord
from contacts.selectors import contact_follow_merges
from contacts.services import IdentityInput, identify
from contacts.services import identity as services
from tests.contacts.locking import (
    deadlocks,
    deadlocks_since,
    in_threads,
    try_set,
    wait_until_another_backend_waits,
)

pytestmark = pytest.mark.django_db(transaction=True)

ROUNDS = 4


@pytest.fixture(autouse=True)
def _postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip(
            "SQLite serialises write transactions (IMMEDIATE): two identify calls never hold "
            "row locks at the same time, so they cannot deadlock"
        )


def _hold_after_first_lookup(monkeypatch, count: int) -> list[int]:
    """Make each thread's first identity look-up wait until `count` threads have looked, so
    that every call decides what to merge from the same state; return the list of attempts."""
    barrier = threading.Barrier(count)
    held: set[int] = set()
    guard = threading.Lock()
    attempts: list[int] = []
    find, once = services._find_identities, services._identify_once

    def find_then_wait(identities):
        rows = find(identities)
        with guard:
            first = threading.get_ident() not in held
            held.add(threading.get_ident())
        if first:
            barrier.wait(timeout=10)
        return rows

    def count_attempts(*args, **kwargs):
        attempts.append(threading.get_ident())
        return once(*args, **kwargs)

    monkeypatch.setattr(services, "_find_identities", find_then_wait)
    monkeypatch.setattr(services, "_identify_once", count_attempts)
    return attempts


def _identify(*identities: IdentityInput, **traits):
    return lambda: identify(identities=list(identities), traits=traits)


def _people(round_: int, count: int) -> list[tuple[Contact, IdentityInput, IdentityInput]]:
    """`count` contacts, oldest first, each with a phone (strong) and a device id (weak)."""
    people = []
    for n in range(count):
        phone = IdentityInput("phone", f"+86138{round_:03d}{n:05d}")
        device = IdentityInput("anonymous_id", f"dev-{round_}-{n}")
        people.append((identify(identities=[phone, device]).contact, phone, device))
    return people


def _assert_one_survivor(people, results) -> Contact:
    ids = [contact.pk for contact, _phone, _device in people]
    live = Contact.objects.filter(pk__in=ids, merged_into__isnull=True)
    assert live.count() == 1
    survivor = live.get()
    # A call that finished first answered with the contact it kept, which a later call may
    # have merged since: each answer leads to the survivor.
    answers = [Contact.objects.get(pk=r.contact.pk) for r in results]
    assert {contact_follow_merges(contact=c).pk for c in answers} == {survivor.pk}
    held = Identity.objects.filter(contact=survivor).values_list("kind", "value")
    assert set(held) == {(i.kind, i.value) for _c, *pair in people for i in pair}
    assert MergeRecord.objects.filter(duplicate_id__in=ids).count() == len(ids) - 1
    return survivor


def test_two_calls_naming_two_contacts_in_opposite_orders_both_succeed(monkeypatch):
    before = deadlocks()
    for round_ in range(ROUNDS):
        monkeypatch.undo()
        (x, x_phone, _), (y, y_phone, _) = people = _people(round_, 2)
        _hold_after_first_lookup(monkeypatch, 2)

        results, errors = in_threads(
            [
                _identify(x_phone, y_phone, city="杭州"),
                _identify(y_phone, x_phone, city="杭州"),
            ]
        )

        assert errors == []
        survivor = _assert_one_survivor(people, results)
        assert survivor.pk == x.pk  # the oldest a strong identity points to
        assert survivor.city == "杭州"
        assert sorted(r.merged for r in results) == [[], [y.pk]]
    # Not even one identify got over by trying again: the calls queued on their locks.
    assert deadlocks_since(before) == 0


def test_calls_choosing_different_survivors_among_three_contacts_both_succeed(monkeypatch):
    # The first call's only strong identity is the newest contact's, the second's the middle
    # one's: each keeps another contact and merges the rest into it. Merging pair by pair, the
    # first locked {x, z} then y while the second locked y then z: a deadlock.
    before = deadlocks()
    for round_ in range(ROUNDS):
        monkeypatch.undo()
        (_, _, x_device), (y, y_phone, y_device), (z, z_phone, z_device) = people = _people(
            round_, 3
        )
        _hold_after_first_lookup(monkeypatch, 2)

        results, errors = in_threads(
            [
                _identify(x_device, y_device, z_phone),
                _identify(y_phone, z_device),
            ]
        )

        assert errors == []
        survivor = _assert_one_survivor(people, results)
        assert survivor.pk in (y.pk, z.pk)
    assert deadlocks_since(before) == 0


def test_three_calls_each_linking_a_different_pair_converge_on_one_contact(monkeypatch):
    before = deadlocks()
    for round_ in range(ROUNDS):
        monkeypatch.undo()
        (_, x_phone, x_device), (_, y_phone, y_device), (_, z_phone, z_device) = people = _people(
            round_, 3
        )
        _hold_after_first_lookup(monkeypatch, 3)

        results, errors = in_threads(
            [
                _identify(x_phone, y_device, z_device),
                _identify(z_phone, y_phone),
                _identify(y_device, z_phone, x_device),
            ]
        )

        assert errors == []
        _assert_one_survivor(people, results)
    assert deadlocks_since(before) == 0


def _deadlocking_pair(x, x_phone, y, y_phone, holding: threading.Event):
    """Another transaction that locks y, waits until identify holds x and waits for y, then
    asks for x; and the identify call naming both: a real deadlock outside identify's
    control, in which PostgreSQL aborts identify (its wait is the older one; the other
    transaction's detection is put off where the role may)."""

    def other_transaction() -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            try_set(cursor, "SET LOCAL deadlock_timeout = '30s'")
            list(Contact.objects.select_for_update().filter(pk=y.pk))
            holding.set()
            wait_until_another_backend_waits(cursor)
            list(Contact.objects.select_for_update().filter(pk=x.pk))

    def call():
        # PostgreSQL looks for a deadlock once, deadlock_timeout after a wait starts: leave
        # the other transaction time to close the cycle even on a busy machine.
        with transaction.atomic(), connection.cursor() as cursor:
            try_set(cursor, "SET deadlock_timeout = '3s'")
        assert holding.wait(timeout=10)
        return identify(identities=[y_phone, x_phone])

    return other_transaction, call


def test_a_call_postgresql_aborts_as_a_deadlock_victim_is_retried(monkeypatch):
    # Another transaction locks y, waits until identify holds x and waits for y, then asks for
    # x: a real deadlock, outside identify's control. PostgreSQL aborts identify (its wait is
    # the older one; the other transaction's detection is put off), which then tries again.
    (x, x_phone, _), (y, y_phone, _) = people = _people(0, 2)
    attempts = _hold_after_first_lookup(monkeypatch, 1)
    holding = threading.Event()

    other_transaction, call = _deadlocking_pair(x, x_phone, y, y_phone, holding)

    before = deadlocks()

    results, errors = in_threads([other_transaction, call])

    assert errors == []
    assert deadlocks_since(before) == 1  # a real one, which identify got over
    _assert_one_survivor(people, [results[1]])
    assert len(attempts) == 2  # the aborted attempt and the one that went through


def test_a_call_aborted_as_a_deadlock_victim_on_every_attempt_says_so(monkeypatch):
    # The deadlock above, with no attempt left after it: the caller gets the specific
    # "contended" error (an API client may send the call again), not a server error, and
    # nothing of the call is kept.
    (x, x_phone, _), (y, y_phone, _) = people = _people(1, 2)
    _hold_after_first_lookup(monkeypatch, 1)
    monkeypatch.setattr(services, "IDENTIFY_ATTEMPTS", 1)
    holding = threading.Event()
    identities_before = Identity.objects.count()

    other_transaction, call = _deadlocking_pair(x, x_phone, y, y_phone, holding)

    _results, errors = in_threads([other_transaction, call])

    assert [type(e) for e in errors] == [services.ContactsContended]
    assert errors[0].code == "contacts_contended"
    assert MergeRecord.objects.filter(survivor__in=[x, y]).count() == 0
    assert Identity.objects.count() == identities_before
    assert {c.pk for c in Contact.objects.filter(pk__in=[p[0].pk for p in people])} == {x.pk, y.pk}
