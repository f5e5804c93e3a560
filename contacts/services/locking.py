"""Row locks on a contact taken before writing to it, following merges."""

from collections.abc import Iterable

from django.db import connection, transaction

from contacts.models import Contact
from core.sql import bigint_array

# Row locks contact_lock_survivor takes: what the caller does with the contact. FOR KEY SHARE
# (the lock a foreign-key check takes) for rows pointing at it, FOR NO KEY UPDATE to change
# its row or to keep other such writers out, FOR UPDATE only to change its key or delete it
# (a merge). Each waits for a merge (FOR UPDATE). FOR UPDATE also blocks the key-share lock
# that the deferred foreign-key checks of another transaction's rows take at its commit: a
# writer holding it that then waits on a row that transaction inserted (a contact queued for
# segment re-evaluation) deadlocks with it.
CONTACT_LOCKS = ("key_share", "no_key_update", "update")
# Contact ids per locking statement of contacts_lock_live on SQLite: well under its parameter
# limit. PostgreSQL takes them all in one statement over an array.
LOCK_BATCH = 2000


class _MergedAway(Exception):
    def __init__(self, into: int) -> None:
        self.into = into


def _lock_one(pk: int, lock: str) -> Contact:
    if lock == "key_share":
        clause = " FOR KEY SHARE" if connection.vendor == "postgresql" else ""
        table = connection.ops.quote_name(Contact._meta.db_table)
        rows = list(Contact.objects.raw(f"SELECT * FROM {table} WHERE id = %s{clause}", [pk]))
        if not rows:
            raise Contact.DoesNotExist("Contact matching query does not exist.")
        return rows[0]
    return Contact.objects.select_for_update(no_key=lock == "no_key_update").get(pk=pk)


def contact_lock_survivor(*, contact: Contact, lock: str) -> Contact:
    """Lock the contact a write addressed to `contact` belongs to and return it, read under the
    lock: `contact` itself, or the contact that absorbed it when it was merged, through any
    number of merges, including one that commits while this waits for its lock.

    Call it inside a transaction, before writing: the caller resolved `contact` before the
    lock, so a merge may have hidden it since (its rows moved, its row kept as a pointer), and
    a consent, a profile change or a tag written to it would be lost to everyone reading the
    survivor. `lock` is one of CONTACT_LOCKS. Raises Contact.DoesNotExist.

    Lock order: each contact found merged was locked in a savepoint that is rolled back, which
    releases that lock; the call ends up holding the survivor's lock alone (and whatever the
    caller held before), so it never waits for one contact while holding another and cannot
    deadlock with a merge, which locks its two contacts in id order.
    """
    if lock not in CONTACT_LOCKS:
        raise ValueError(f"lock must be one of {CONTACT_LOCKS}, not {lock!r}")
    pk, seen = contact.pk, {contact.pk}
    while True:
        try:
            with transaction.atomic():
                row = _lock_one(pk, lock)
                # A cycle would be a bug (a merge refuses a merged contact): stop rather than
                # loop forever, as contact_follow_merges does.
                if row.merged_into_id is not None and row.merged_into_id not in seen:
                    raise _MergedAway(row.merged_into_id)
            return row
        except _MergedAway as merged:
            pk = merged.into
            seen.add(pk)


def _lock_ids(ids: Iterable[int], *, merged: bool) -> list[int]:
    ids = sorted(set(ids))
    if not ids:
        return []
    table = connection.ops.quote_name(Contact._meta.db_table)
    live = "" if merged else " AND merged_into_id IS NULL"
    found: list[int] = []
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"SELECT id FROM {table} WHERE id = ANY(%s::bigint[]){live} "
                "ORDER BY id FOR KEY SHARE",
                [bigint_array(ids)],
            )
            return [pk for (pk,) in cursor.fetchall()]
        for start in range(0, len(ids), LOCK_BATCH):
            batch = ids[start : start + LOCK_BATCH]
            cursor.execute(
                f"SELECT id FROM {table} WHERE id IN ({', '.join(['%s'] * len(batch))}){live} "
                "ORDER BY id",
                batch,
            )
            found += [pk for (pk,) in cursor.fetchall()]
    return found


def contacts_lock_live(*, contact_ids: Iterable[int]) -> list[int]:
    """Lock those of `contact_ids` still there and not merged away against an erasure or a
    merge, in id order, to the end of the caller's transaction; return them, sorted.

    For a batch writing rows about contacts it read without a lock (a bulk tag, a static list's
    adds, an import chunk's updates): a contact erased since would fail the rows' foreign-key
    checks at commit and take the whole batch with it; here it is skipped instead. A contact
    merged away is skipped too: a row written to it would be lost to its survivor.

    KEY SHARE (PostgreSQL): the lock the rows' foreign-key checks take at commit anyway, taken
    first and in one order (ascending ids, in one statement). It waits for an erasure's or a
    merge's FOR UPDATE and then reads the row as it is (deleted or merged: skipped), and lets
    profile updates (NO KEY UPDATE) and other such batches through. Merges and erasures lock
    their contacts before any other row too, so a caller that locks here before its other
    rows never holds one they need while waiting for one they hold. Contacts merged long ago
    are left unlocked: nothing is written to them. SQLite has one writer at a time: a plain
    read.
    """
    return _lock_ids(contact_ids, merged=False)


def contacts_lock_existing(*, contact_ids: Iterable[int]) -> list[int]:
    """Lock those of `contact_ids` still there, merged away or not, as contacts_lock_live does
    (KEY SHARE, id order, one statement on PostgreSQL); return them, sorted.

    For work on rows that stay with a merged-away contact (a tag both contacts had stays on
    the hidden duplicate) and that must still be done there: an expired tag comes off it."""
    return _lock_ids(contact_ids, merged=True)
