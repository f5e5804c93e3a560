"""Notes and follow-ups staff leave on a contact."""

import datetime as dt

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from contacts.models import (
    Contact,
    Note,
)
from contacts.services.events import event_record
from contacts.services.locking import contact_lock_survivor
from contacts.services.validation import field_error

MAX_NOTE_LENGTH = 5000


@transaction.atomic
def note_add(
    *,
    contact: Contact,
    author: AbstractBaseUser | None,
    body: str,
    follow_up_at: dt.datetime | None = None,
) -> Note:
    """Leave a note, optionally with a follow-up date, on a contact.

    A merged contact's note (or one whose merge commits meanwhile) goes to the contact that
    absorbed it: left on the hidden duplicate, no one would see it or its follow-up.
    """
    body = (body or "").strip()
    if not body:
        raise field_error("body", _("The note is empty."))
    if len(body) > MAX_NOTE_LENGTH:
        raise field_error(
            "body",
            _("The note is longer than %(max)s characters.") % {"max": MAX_NOTE_LENGTH},
        )
    # KEY SHARE, what the note's foreign-key check takes anyway: it waits for a merge of the
    # contact, not for other writers.
    contact = contact_lock_survivor(contact=contact, lock="key_share")
    note = Note.objects.create(contact=contact, author=author, body=body, follow_up_at=follow_up_at)
    event_record(
        contact=contact,
        name="note_added",
        properties={
            "note_id": note.pk,
            "preview": body[:100],
            "follow_up_at": follow_up_at.isoformat() if follow_up_at else None,
        },
    )
    return note


def note_complete(*, note: Note, actor: AbstractBaseUser | None) -> Note:
    """Mark a note's follow-up as done (once; doing it again changes nothing)."""
    updated = Note.objects.filter(pk=note.pk, done_at__isnull=True).update(done_at=timezone.now())
    note.refresh_from_db(fields=["done_at"])
    if updated:
        event_record(
            contact=note.contact,
            name="follow_up_done",
            properties={"note_id": note.pk, "actor_id": actor.pk if actor is not None else None},
        )
    return note
