"""Erasing a person's data at their request (PIPL art. 47), and the hashed tombstones that keep
them from being imported again.

An erasure deletes the contact, every contact merged into it, and everything that hangs off
them (identities, events, tags, notes, consent records, merges; higher apps' rows through the
`contact_erasing` signal and the cascade). What is left is an `Erasure` record with no
personal data and, per identity the person had, a keyed digest (`SuppressedIdentity`).

The digests are HMAC-SHA256 keyed by a secret (SCRM_ERASURE_KEYS, by default SECRET_KEY), so
that the table cannot be reversed by hashing every Chinese mobile number (about 10^10 of them,
minutes of work for a plain hash). Every key listed is matched and the first hashes new
tombstones: a key must stay listed for as long as the tombstones made with it should work.
"""

import hashlib
import hmac
from collections.abc import Iterable

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection, transaction
from django.db.models import Q, QuerySet
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
from contacts.selectors import contact_family_ids, contact_follow_merges
from contacts.services.retry import atomic_retrying_deadlocks
from contacts.signals import contact_erasing
from core.audit import admin_history_forget
from core.errors import DomainError, NotFound
from core.models import AuditLog
from core.sql import text_array

# (kind, app_id, value), values normalised as identify() stores them.
IdentityKey = tuple[str, str, str]
ERASE_ATTEMPTS = 3
# Times the person's contacts are read and locked again because a merge or an undo changed them
# meanwhile.
FAMILY_ATTEMPTS = 5
# Digests looked up per query when checking many identities (an import chunk).
LOOKUP_BATCH = 1000


class ErasureContended(DomainError):
    """PostgreSQL aborted every attempt of an erasure to break a deadlock with concurrent work
    on the same contacts; nothing was erased."""

    code = "erasure_contended"


def erasure_contended() -> ErasureContended:
    """The error of an erasure that concurrent work kept aborting (nothing was erased)."""
    return ErasureContended(
        _(
            "Other work on this contact (a merge, a segment refresh, an import) kept "
            "getting in the way, so nothing was erased; try again in a moment."
        )
    )


def _keys() -> list[bytes]:
    keys = settings.SCRM_ERASURE_KEYS or [
        settings.SECRET_KEY,
        *getattr(settings, "SECRET_KEY_FALLBACKS", []),
    ]
    return [key.encode() if isinstance(key, str) else key for key in keys]


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


def erased_identity_message(kind: str) -> str:
    """Why a phone or email typed in by staff (an edit, the admin) is refused: identify()
    creates a contact for an erased person's identities only when the person comes back by
    themselves, and an operator typing them in would bring the person back."""
    return _(
        "This %(kind)s belonged to a person whose data was erased at their request, so it "
        "cannot be added here. If they come back, they sign up again themselves (in the "
        "mini-program, for example) and are a new customer from then on."
    ) % {"kind": str(IdentityKind(kind).label).lower()}


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


def erasure_count(*, erasure: Erasure, label: str, count: int) -> None:
    """Add `count` rows of model `label` ("app.model") to what `erasure` deleted; for the
    receivers of `contact_erasing`, which record what they delete themselves."""
    if count:
        erasure.summary[label] = erasure.summary.get(label, 0) + count


def erasure_rows_delete(*, erasure: Erasure, rows: QuerySet, forget_history: bool = False) -> list:
    """Lock `rows` (a higher app's rows about the erased person) in id order, delete them
    with what cascades from them, and count them in `erasure`; return the ids deleted.

    Locked first, in one order: a worker holding some of them (a delivery being recorded, an
    enrollment being advanced, a wallet being credited) finishes before they go, rather than
    writing against rows deleted under it. `forget_history`: the admin's history names the
    rows by what their text was (a member shows the contact's name), so name them by id."""
    ids = list(rows.select_for_update().order_by("pk").values_list("pk", flat=True))
    if not ids:
        return []
    if forget_history:
        admin_history_forget(model=rows.model, pks=ids)
    for label, count in rows.model.objects.filter(pk__in=ids).delete()[1].items():
        erasure_count(erasure=erasure, label=label.lower(), count=count)
    return ids


def erasure_of_contact(*, contact_id: int) -> Erasure | None:
    """The erasure that deleted contact `contact_id`, if one did."""
    row = ErasedContact.objects.select_related("erasure").filter(contact_id=contact_id).first()
    return row.erasure if row is not None else None


class _FamilyChanged(Exception):
    pass


def _lock_family(contact: Contact) -> tuple[Contact, list[int]]:
    """Lock FOR UPDATE (their rows are deleted) the person's contacts: the one `contact` was
    merged into, if it was, and every contact merged into that one; return it and their ids.

    All in id order, in one statement, as merges and every other writer lock contacts: the
    survivor first and its merged contacts after would wait against the order for a contact
    with a lower id. Should a merge or an undo change the family while this waits, the locks
    are released (a savepoint rolled back) and it starts over; an undo would otherwise bring a
    contact back out of what is being deleted, a merge add one that is not.
    """
    for _attempt in range(FAMILY_ATTEMPTS):
        current = Contact.objects.filter(pk=contact.pk).first()
        if current is None:
            raise NotFound(_("Contact not found."))
        root = contact_follow_merges(contact=current)
        family = contact_family_ids(contact_id=root.pk)
        try:
            with transaction.atomic():
                rows = {
                    c.pk: c
                    for c in Contact.objects.select_for_update()
                    .filter(pk__in=family)
                    .order_by("pk")
                }
                root = rows.get(root.pk)
                if (
                    root is None
                    or root.merged_into_id is not None
                    or contact_family_ids(contact_id=root.pk) != family
                ):
                    raise _FamilyChanged
            return root, family
        except _FamilyChanged:
            continue
    raise erasure_contended()


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
        exhausted=erasure_contended,
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
    root, family = _lock_family(contact)
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
        # The same person erased before, came back and is erased again: one tombstone serves,
        # and it names the latest erasure (what a retry of this request must answer).
        update_conflicts=True,
        unique_fields=["digest", "kind", "app_id"],
        update_fields=["erasure"],
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
    # The consent states first: each points at its record with PROTECT (a record must not go
    # while a state rests on it), which would refuse the cascade from the contact.
    for query in (
        Consent.objects.filter(contact_id__in=family),
        Contact.objects.filter(pk__in=family),
    ):
        for label, count in query.delete()[1].items():
            erasure_count(erasure=erasure, label=label.lower(), count=count)
    erasure.summary = dict(sorted(erasure.summary.items()))
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
