from django.dispatch import Signal

# Sent after commit when contacts' tags or attributes changed; kwargs: contact_ids (list[int])
# and, when the sender knows, changed (list[str]): what changed, as topics: profile field names
# ("city", "lifecycle_stage"), "attributes" for any custom field, "tags", "consent",
# "identities". Without `changed` a receiver must assume anything may have changed.
# Senders register it with on_commit(robust=True): the write is committed by then, so a
# receiver's failure is logged and must not turn it into an error answer.
contact_changed = Signal()

# Sent inside the recording transaction; kwargs: events (list[Event]) that were newly stored.
# Receivers that write (points, scores) therefore commit or roll back together with the events.
events_recorded = Signal()

# Sent inside the merge transaction; kwargs: record (MergeRecord), survivor, duplicate (Contact).
# Each higher app moves the rows it holds for `duplicate` to `survivor` and appends their ids to
# record.moved["<app_label>.<model>"] (then saves the record), so that the merge can be undone.
contact_merged = Signal()

# Sent inside the undo transaction, before the contacts app moves its own rows back; kwargs as
# for contact_merged. Each app moves back what it listed in record.moved.
contact_unmerged = Signal()

# Sent after commit when more contacts changed than are worth listing one by one (an import of
# hundreds of thousands of rows); kwargs: count (int), how many were created or updated.
# Receivers must assume that any contact may have changed in any way.
contacts_changed_in_bulk = Signal()

# Sent inside the erasure transaction, before the contacts app deletes the contacts (which
# cascades to every row pointing at them); kwargs: erasure (Erasure), contact_ids (list[int]:
# the contact and every contact merged into it, all locked). Each higher app removes what it
# holds about them that a cascade would leave wrong (counters, aggregates, personal data held
# without a foreign key, work in flight) and records how many of its rows go in
# erasure.summary["<app_label>.<model>"] (the contacts app saves the record afterwards).
contact_erasing = Signal()

# Sent to collect a copy of everything stored about a person (PIPL art. 45, access request);
# kwargs: contact_ids (list[int]: the contact and every contact merged into it). Each receiver
# returns a dict of sections {"<app_label>.<what>": list of JSON-serialisable dicts}, with
# labels and values as stored; the contacts app adds its own and writes one file.
contact_data_requested = Signal()
