"""Row locks on a contact taken before writing to it, following merges."""

from django.db import connection, transaction

from contacts.models import Contact

# Row locks contact_lock_survivor takes: what the caller does with the contact. FOR KEY SHARE
# (the lock a foreign-key check takes) for rows pointing at it, FOR NO KEY UPDATE to change
# its row or to keep other such writers out, FOR UPDATE only to change its key or delete it
# (a merge). Each waits for a merge (FOR UPDATE). FOR UPDATE also blocks the key-share lock
# that the deferred foreign-key checks of another transaction's rows take at its commit: a
# writer holding it that then waits on a row that transaction inserted (a contact queued for
# segment re-evaluation) deadlocks with it.
CONTACT_LOCKS = ("key_share", "no_key_update", "update")


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
