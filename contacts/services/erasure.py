"""Erasing a person's data at their request (PIPL art. 47), and the hashed tombstones that keep
them from being imported again.

An erasure deletes the contact, every contact merged into it, and everything that hangs off
them (identities, events, tags, notes, consent records, merges; higher apps' rows through the
`contact_erasing` signal and the cascade). What is left is an `Erasure` record with no
personal data and, per identity the person had, a keyed digest (`SuppressedIdentity`).

The digests are HMAC-SHA256 keyed by SECRET_KEY, so that the table cannot be reversed by
hashing every Chinese mobile number (about 10^10 of them, minutes of work for a plain hash).
A key that is rotated away must stay in SECRET_KEY_FALLBACKS for the tombstones made with it
to keep working, as for sessions and password reset links.
"""

import hashlib
import hmac
from collections.abc import Iterable

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection
from django.db.models import Q
from django.db.models.expressions import RawSQL
from django.utils.translation import gettext as _

from contacts.models import (
    Consent,
    ConsentRecord,
    Contact,
    ContactTag,
    ErasedContact,
    Erasure,
    ErasureSource,
    Identity,
    IdentityKind,
    Note,
    SuppressedIdentity,
)
from contacts.services.locking import contact_lock_survivor
from contacts.services.retry import atomic_retrying_deadlocks
from contacts.signals import contact_erasing
from core.audit import admin_history_forget
from core.errors import DomainError, NotFound
from core.models import AuditLog
from core.sql import text_array

# (kind, app_id, value), values normalised as identify() stores them.
IdentityKey = tuple[str, str, str]
ERASE_ATTEMPTS = 3
# Digests looked up per query when checking many identities (an import chunk).
LOOKUP_BATCH = 1000


class ErasureContended(DomainError):
    """PostgreSQL aborted every attempt of an erasure to break a deadlock with concurrent work
    on the same contacts; nothing was erased."""

    code = "erasure_contended"


def _keys() -> list[bytes]:
    return [
        key.encode() if isinstance(key, str) else key
        for key in [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    ]


def _digester(key: bytes):
    """A function computing digests under `key`: the keyed state is prepared once and copied
    per value, which halves the cost of checking the hundreds of thousands of values of an
    import against the tombstones."""
    keyed = hmac.new(key, b"scrm.erasure\x00", hashlib.sha256)

    def digest(kind: str, app_id: str, value: str) -> str:
        mac = keyed.copy()
        mac.update(f"{kind}\x00{app_id}\x00{value}".encode())
        return mac.hexdigest()

    return digest


def identity_digest(*, kind: str, app_id: str, value: str) -> str:
    """The digest a tombstone stores for an identity (with the current SECRET_KEY)."""
    return _digester(_keys()[0])(kind, app_id, value)


def suppression_any() -> bool:
    """Whether anyone was ever erased: callers checking many rows skip the digests if not."""
    return SuppressedIdentity.objects.exists()


def identities_suppressed(identities: Iterable[IdentityKey]) -> set[IdentityKey]:
    """Those of `identities` (normalised) that belong to an erased person, under the current
    key or any fallback key."""
    digesters = [_digester(key) for key in _keys()]
    wanted: dict[tuple[str, str, str], IdentityKey] = {}
    for kind, app_id, value in identities:
        if not value:
            continue
        for digest in digesters:
            wanted[(kind, app_id, digest(kind, app_id, value))] = (kind, app_id, value)
    if not wanted:
        return set()
    digests = sorted({digest for _kind, _app_id, digest in wanted})
    if connection.vendor == "postgresql":
        # One array parameter instead of thousands of placeholders for the driver to parse.
        batches = [RawSQL("SELECT unnest(%s::text[])", [text_array(digests)])]
    else:
        batches = [digests[i : i + LOOKUP_BATCH] for i in range(0, len(digests), LOOKUP_BATCH)]
    found: set[IdentityKey] = set()
    for batch in batches:
        rows = SuppressedIdentity.objects.filter(digest__in=batch).values_list(
            "kind", "app_id", "digest"
        )
        found.update(wanted[row] for row in rows if row in wanted)
    return found


def erasure_of_identities(identities: Iterable[IdentityKey]) -> Erasure | None:
    """The latest erasure that left a tombstone for one of `identities` (normalised), under
    the current key or any fallback key."""
    digesters = [_digester(key) for key in _keys()]
    match = Q(pk__in=[])
    for kind, app_id, value in identities:
        if value:
            digests = [digest(kind, app_id, value) for digest in digesters]
            match |= Q(kind=kind, app_id=app_id, digest__in=digests)
    row = (
        SuppressedIdentity.objects.filter(match)
        .select_related("erasure")
        .order_by("-erasure_id")
        .first()
    )
    return row.erasure if row is not None else None


def suppressions_lift(*, identities: Iterable[IdentityKey]) -> int:
    """Forget the tombstones of `identities`: the person came back by themselves (signed in
    to the mini-program, followed the official account) and is a new customer from now on.
    Returns how many were lifted."""
    digesters = [_digester(key) for key in _keys()]
    rows: list[tuple[str, str, str]] = []
    for kind, app_id, value in identities:
        rows.extend((kind, app_id, digest(kind, app_id, value)) for digest in digesters if value)
    lifted = 0
    for kind, app_id, digest in rows:
        lifted += (
            SuppressedIdentity.objects.filter(kind=kind, app_id=app_id, digest=digest)
            .delete()[1]
            .get(SuppressedIdentity._meta.label, 0)
        )
    return lifted


def erasure_of_contact(*, contact_id: int) -> Erasure | None:
    """The erasure that deleted contact `contact_id`, if one did."""
    row = ErasedContact.objects.select_related("erasure").filter(contact_id=contact_id).first()
    return row.erasure if row is not None else None


def _family(root: Contact) -> list[int]:
    # The contacts merged into root, and into those, ...: merged contacts keep their row (and
    # their personal data) for undo, so they are the same person's data too.
    family, frontier = [root.pk], [root.pk]
    while frontier:
        frontier = list(
            Contact.objects.filter(merged_into_id__in=frontier)
            .exclude(pk__in=family)
            .values_list("pk", flat=True)
        )
        family.extend(frontier)
    return sorted(family)


def _identities(contact_ids: list[int]) -> set[IdentityKey]:
    keys: set[IdentityKey] = set(
        Identity.objects.filter(contact_id__in=contact_ids).values_list("kind", "app_id", "value")
    )
    # The phone and email columns are identities even where (an old import) no row says so.
    for phone, email in Contact.objects.filter(pk__in=contact_ids).values_list("phone", "email"):
        if phone:
            keys.add((IdentityKind.PHONE, "", phone))
        if email:
            keys.add((IdentityKind.EMAIL, "", email.lower()))
    return keys


def contact_erase(
    *,
    contact: Contact,
    source: str,
    actor: AbstractBaseUser | AnonymousUser | None = None,
    reference: str = "",
    ip: str | None = None,
    audit: dict | None = None,
) -> Erasure:
    """Erase the person `contact` is (following merges): delete their contacts and all rows
    about them, keep digests of their identities so imports and replayed events cannot add
    them back, and record the erasure (without personal data) and an audit entry.

    `source` is an ErasureSource; `reference` the brand's own reference for the request;
    `audit` more details for the audit entry (ids, never personal data: the API key's id).
    Raises NotFound when the contact is gone (callers check erasure_of_contact first to
    answer a retried request).
    """
    if source not in ErasureSource.values:
        raise ValueError(f"source must be one of {ErasureSource.values}, not {source!r}")
    return atomic_retrying_deadlocks(
        lambda: _erase(
            contact=contact,
            source=source,
            actor=actor,
            reference=reference,
            ip=ip,
            audit=audit or {},
        ),
        attempts=ERASE_ATTEMPTS,
        exhausted=lambda: ErasureContended(
            _(
                "Other work on this contact (a merge, a segment refresh, an import) kept "
                "getting in the way, so nothing was erased; try again in a moment."
            )
        ),
    )


def _erase(
    *,
    contact: Contact,
    source: str,
    actor: AbstractBaseUser | AnonymousUser | None,
    reference: str,
    ip: str | None,
    audit: dict,
) -> Erasure:
    try:
        # FOR UPDATE: the row is deleted. Waits for a merge of it, then follows it.
        root = contact_lock_survivor(contact=contact, lock="update")
    except Contact.DoesNotExist:
        raise NotFound(_("Contact not found.")) from None
    family = _family(root)
    # The merged-away contacts are locked too (in id order): a concurrent undo of one of
    # their merges would otherwise bring a row back out of what is being deleted.
    list(Contact.objects.select_for_update().filter(pk__in=family).order_by("pk").values("pk"))
    family = _family(root)
    user = actor if actor is not None and actor.is_authenticated else None
    erasure = Erasure.objects.create(reference=reference[:100], source=source, actor=user)
    ErasedContact.objects.bulk_create(
        [ErasedContact(contact_id=pk, erasure=erasure) for pk in family]
    )
    digest = _digester(_keys()[0])
    SuppressedIdentity.objects.bulk_create(
        [
            SuppressedIdentity(
                erasure=erasure,
                kind=kind,
                app_id=app_id,
                digest=digest(kind, app_id, value),
            )
            for kind, app_id, value in sorted(_identities(family))
        ],
        # The same person erased before, came back and is erased again: one tombstone serves.
        ignore_conflicts=True,
    )
    contact_erasing.send(sender=Contact, erasure=erasure, contact_ids=family)
    # The admin's history names rows as it showed them (a contact by name, an identity by its
    # value, a note by its first words): from now on it names them by id.
    for model in (Identity, Note, ConsentRecord, ContactTag):
        admin_history_forget(
            model=model,
            pks=model.objects.filter(contact_id__in=family).values_list("pk", flat=True),
        )
    admin_history_forget(model=Contact, pks=family)
    summary = dict(erasure.summary)
    # The consent states first: each points at its record with PROTECT (a record must not go
    # while a state rests on it), which would refuse the cascade from the contact.
    for query in (
        Consent.objects.filter(contact_id__in=family),
        Contact.objects.filter(pk__in=family),
    ):
        for label, count in query.delete()[1].items():
            if count:
                summary[label.lower()] = summary.get(label.lower(), 0) + count
    erasure.summary = dict(sorted(summary.items()))
    erasure.save(update_fields=["summary"])
    AuditLog.objects.create(
        actor=user,
        action="contact.erase",
        object_type="contacts.contact",
        object_id=str(root.pk),
        # Ids and counts only: the entry outlives the person's data.
        details={
            "erasure": erasure.pk,
            "contacts": family,
            "source": source,
            "reference": erasure.reference,
            **audit,
        },
        ip=ip,
    )
    return erasure
