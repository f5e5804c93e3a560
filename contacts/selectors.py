import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connections
from django.db.models import Count, Q, QuerySet
from django.db.models.functions import Lower, Substr, TruncDate
from django.utils import timezone
from django.utils.text import Truncator

from contacts import labels, pii, roles
from contacts.models import (
    Consent,
    ConsentRecord,
    Contact,
    ContactTag,
    CustomField,
    Event,
    Identity,
    IdentityKind,
    MergeBlock,
    MergeRecord,
    Note,
    StaffProfile,
    Stage,
    Store,
    Tag,
)
from core.errors import ValidationFailed
from core.ids import parse_id
from core.models import Job
from core.pagination import KeysetPage, parse_after


def contact_visible_to(*, user: AbstractBaseUser) -> QuerySet[Contact]:
    """Contacts the user may see; merged-away contacts are hidden from everyone.

    Superusers and holders of `contacts.view_contact` see all, except store staff, who see the
    contacts they own or that belong to their store; anyone else only the contacts they own.
    """
    qs = Contact.objects.filter(merged_into__isnull=True)
    if user.is_superuser:
        return qs
    if not user.is_authenticated:
        return qs.none()
    if roles.is_store_staff(user):
        own_store = StaffProfile.objects.filter(user=user, store__isnull=False).values("store_id")
        return qs.filter(Q(owner=user) | Q(store_id__in=own_store))
    if user.has_perm("contacts.view_contact"):
        return qs
    return qs.filter(owner=user)


def contact_visible_to_all(*, user: AbstractBaseUser) -> bool:
    """Whether `user` sees every contact, so that counts need not be limited to a subset."""
    if user.is_superuser:
        return True
    return (
        user.is_authenticated
        and not roles.is_store_staff(user)
        and user.has_perm("contacts.view_contact")
    )


def contact_search(
    *, qs: QuerySet[Contact], query: str, personal: bool = True
) -> QuerySet[Contact]:
    """Contacts of `qs` whose name, nickname, phone or email match `query`.

    `personal`: whether the searching user may see phones and emails (contacts.pii). Without
    it, a search must not tell more than the masked values show (+86138****8000,
    l***@example.com): a phone matches only when the query is the whole number or its last four
    digits, an email only when the query is the whole address. Otherwise a partial number,
    lengthened a digit at a time while watching one customer stay in the results, reads out
    the hidden digits.
    """
    query = query.strip()
    if not query:
        return qs
    cond = Q(name__icontains=query) | Q(nickname__icontains=query)
    # A phone only when the query is spelled like one (digits, spaces, +, -, brackets): digits
    # picked out of a name ("用户10999") would match strangers' phones.
    digits = "".join(ch for ch in query if ch.isdigit())
    if len(digits) >= 4 and PHONE_QUERY.fullmatch(query):
        if personal:
            cond |= Q(phone__contains=digits)
        elif len(digits) == 4:
            cond |= Q(phone__endswith=digits)
        else:
            whole = _whole_phone(query)
            if whole:
                cond |= Q(phone=whole)
    # An email by its beginning ("wang.li@", "wang.li"): a query that could start one.
    if personal and EMAIL_PREFIX_QUERY.fullmatch(query):
        cond |= Q(email__istartswith=query)
    elif not personal and "@" in query:
        cond |= Q(email__iexact=query)
    return qs.filter(cond)


def _whole_phone(query: str) -> str:
    """`query` as a stored (E.164) phone number, or "" when it is not a whole number."""
    # Imported here: the services import this module.
    from contacts.services.identity import normalize_phone

    try:
        return normalize_phone(query)
    except ValidationFailed:
        return ""


PHONE_QUERY = re.compile(r"[\d\s+\-()]+")
EMAIL_PREFIX_QUERY = re.compile(r"[A-Za-z0-9._%+\-]+(@[A-Za-z0-9.\-]*)?")


def contact_get_by_identity(*, kind: str, value: str, app_id: str = "") -> Contact | None:
    row = (
        Identity.objects.select_related("contact")
        .filter(kind=kind, app_id=app_id, value=value)
        .first()
    )
    return contact_follow_merges(contact=row.contact) if row else None


def contacts_of_identities(*, identities: Iterable[tuple[str, str, str]]) -> set[int]:
    """The ids of the people (contacts followed through merges) that the identities (kind,
    app_id, normalised value) point to. A phone or email column counts as an identity even
    where no identity row says so (an old import): an erasure deletes and tombstones it alike.
    Every contact holding a phone or email in its column counts, not only the first: duplicates
    never merged are different people, whom an erasure must not tell apart by chance."""
    people: set[int] = set()
    for kind, app_id, value in identities:
        if (contact := contact_get_by_identity(kind=kind, value=value, app_id=app_id)) is not None:
            people.add(contact.pk)
        if kind in (IdentityKind.PHONE, IdentityKind.EMAIL) and not app_id:
            column = (
                Contact.objects.filter(phone=value)
                if kind == IdentityKind.PHONE
                # Through lower(): what the email index holds (old rows may keep capitals).
                else Contact.objects.alias(lower=Lower("email")).filter(lower=value)
            )
            for found in column.order_by("pk"):
                people.add(contact_follow_merges(contact=found).pk)
    return people


def contact_family_ids(*, contact_id: int) -> list[int]:
    """The id of a contact and of every contact merged into it, directly or through another
    merged contact, in id order. Merged contacts keep their row (and its personal data) for
    undo, so a person's data request or erasure covers them all."""
    family, frontier = [contact_id], [contact_id]
    while frontier:
        frontier = list(
            Contact.objects.filter(merged_into_id__in=frontier)
            .exclude(pk__in=family)
            .values_list("pk", flat=True)
        )
        family.extend(frontier)
    return sorted(family)


def contact_follow_merges(*, contact: Contact) -> Contact:
    """The contact that absorbed `contact` through merges (itself when it was never merged)."""
    seen = {contact.pk}
    while contact.merged_into_id is not None:
        contact = Contact.objects.get(pk=contact.merged_into_id)
        if contact.pk in seen:  # a cycle would be a bug; stop rather than loop forever
            break
        seen.add(contact.pk)
    return contact


def contact_timeline(
    *, contact: Contact, before: int | None = None, limit: int = 50
) -> list[Event]:
    """A contact's events, newest first; `before` is the id of the last event already shown.

    The cursor is (occurred_at, id), the same as the sort, so events recorded out of order
    (imported history, late mobile batches) are neither skipped nor repeated.
    """
    qs = Event.objects.filter(contact=contact)
    if before:
        cursor = qs.filter(pk=before).values("occurred_at", "pk").first()
        if cursor is None:
            return []
        qs = qs.filter(
            Q(occurred_at__lt=cursor["occurred_at"])
            | Q(occurred_at=cursor["occurred_at"], pk__lt=cursor["pk"])
        )
    return list(qs.order_by("-occurred_at", "-pk")[:limit])


# The name of the timeline entry that says which import created a contact: derived from the
# import job (its created ids), never stored, so that an import writes no row per new contact.
CREATED_ENTRY = "contact_created"
# How far apart the clocks of the app (job times) and the database (the contact's created_at,
# set by PostgreSQL's now() on import) may be: the job's ids decide, this only narrows the jobs.
IMPORT_CLOCK_SLACK = dt.timedelta(hours=1)


def contact_import_origin(*, contact: Contact) -> Event | None:
    """The import that created `contact`, as an unsaved timeline entry (CREATED_ENTRY) at the
    contact's creation; None when no import job lists the contact's id among those it created
    (imports finished before jobs recorded them included)."""
    # Imported here: the importers import the services, which import this module.
    from contacts.importers import CREATED_IDS, JOB_KIND

    created = contact.created_at
    candidates = (
        Job.objects.filter(
            kind=JOB_KIND,
            created_at__lte=created + IMPORT_CLOCK_SLACK,
            params__has_key=CREATED_IDS,
        )
        .filter(Q(finished_at__isnull=True) | Q(finished_at__gte=created - IMPORT_CLOCK_SLACK))
        .order_by("pk")
        .values_list("pk", "params")
    )
    for job_id, params in candidates:
        for first, last in params.get(CREATED_IDS) or ():
            if first <= contact.pk <= last:
                return Event(
                    contact=contact,
                    name=CREATED_ENTRY,
                    occurred_at=created,
                    properties={"job_id": job_id, "file": params.get("filename", "")},
                    source="import",
                )
    return None


def contact_timeline_with_origin(
    *, contact: Contact, events: list[Event], before: int | None, more: bool
) -> list[Event]:
    """A timeline page (`events` as contact_timeline gave them, `more` when an older page
    follows) with the import that created the contact in its place by time, on the one page
    whose range holds the contact's creation. Sorted as if it were the oldest event of its
    instant, so the cursor of the pages (occurred_at, id) needs no change."""
    created = contact.created_at
    if more and events and created <= events[-1].occurred_at:
        return events  # a later page holds it
    if before:
        cursor = (
            Event.objects.filter(pk=before, contact=contact)
            .values_list("occurred_at", flat=True)
            .first()
        )
        if cursor is None or created > cursor:
            return events  # an earlier page held it
    origin = contact_import_origin(contact=contact)
    if origin is None:
        return events
    position = next((i for i, e in enumerate(events) if e.occurred_at < created), len(events))
    return [*events[:position], origin, *events[position:]]


def contacts_new_per_day(
    *, days: int = 30, contacts: QuerySet[Contact] | None = None
) -> list[tuple[dt.date, int]]:
    """Count of contacts created per local day over the last `days` days, zero-filled; only
    among `contacts` (those the user may see) when given."""
    today = timezone.localdate()
    start = today - dt.timedelta(days=days - 1)
    start_at = timezone.make_aware(dt.datetime.combine(start, dt.time.min))
    base = Contact.objects.all() if contacts is None else contacts
    rows = (
        base.filter(created_at__gte=start_at, merged_into__isnull=True)
        .annotate(day=TruncDate("created_at", tzinfo=timezone.get_current_timezone()))
        .values("day")
        .annotate(n=Count("id"))
    )
    counts = {r["day"]: r["n"] for r in rows}
    return [
        (start + dt.timedelta(days=i), counts.get(start + dt.timedelta(days=i), 0))
        for i in range(days)
    ]


def contact_stats(*, contacts: QuerySet[Contact] | None = None) -> dict[str, int]:
    """The dashboard's contact counts; only among `contacts` (those the user may see) when
    given."""
    week_ago = timezone.now() - dt.timedelta(days=7)
    live = (Contact.objects.all() if contacts is None else contacts).filter(
        merged_into__isnull=True
    )
    return {
        "total": live.count(),
        "new_this_week": live.filter(created_at__gte=week_ago).count(),
    }


def tags_grouped() -> QuerySet[Tag]:
    return Tag.objects.select_related("group").all()


def contact_list(*, user: AbstractBaseUser) -> QuerySet[Contact]:
    """Contacts the user may see, for the list's filters; rows come from `contact_list_page`."""
    return contact_visible_to(user=user)


@dataclass(slots=True)
class ContactListRow:
    """What one row of the contact list shows."""

    pk: int
    name: str
    nickname: str
    phone: str  # masked: the raw number never reaches the list template
    city: str
    source: str
    stage_key: str
    stage_name: str
    owner: str  # username, "" without an owner
    store: str  # store name, "" without a store
    created_at: dt.datetime
    tags: list[tuple[str, str]]  # (name, colour), sorted by name

    @property
    def display_name(self) -> str:
        return self.name or self.nickname or self.phone or f"#{self.pk}"


# The contact's own columns a row shows; stage, owner and store names and the tags come from
# `_contact_list_labels`.
CONTACT_LIST_COLUMNS = (
    "pk",
    "name",
    "nickname",
    "phone",
    "city",
    "source",
    "lifecycle_stage_id",
    "owner_id",
    "store_id",
    "created_at",
)


def contact_list_page(
    *, qs: QuerySet[Contact], after: str | int | None, size: int = 50
) -> KeysetPage:
    """One keyset page (newest first) of `qs` as list rows, in two queries whatever the page holds.

    The list masks phones for everyone, including holders of `contacts.view_personal_data`:
    unmasking is a per-contact, audit-logged action on the 360 page.
    """
    qs = qs.order_by("-pk")
    after_id = parse_after(after)
    if after_id is not None:
        qs = qs.filter(pk__lt=after_id)
    fetched = list(qs.values_list(*CONTACT_LIST_COLUMNS)[: size + 1])
    next_after = fetched[size - 1][0] if len(fetched) > size else None
    fetched = fetched[:size]
    if not fetched:
        return KeysetPage(items=[], next_after=None)
    tags, stages, owners, stores = _contact_list_labels(
        using=qs.db,
        contact_ids=[r[0] for r in fetched],
        owner_ids={r[7] for r in fetched if r[7] is not None},
        store_ids={r[8] for r in fetched if r[8] is not None},
    )
    rows = [
        ContactListRow(
            pk=pk,
            name=name,
            nickname=nickname,
            phone=pii.mask_phone(phone),
            city=city,
            source=source,
            stage_key=stage_key,
            stage_name=stages.get(stage_key, stage_key),
            owner=owners.get(owner_id, ""),
            store=stores.get(store_id, ""),
            created_at=created_at,
            tags=sorted(tags.get(pk, ())),
        )
        for pk, name, nickname, phone, city, source, stage_key, owner_id, store_id, created_at in (
            fetched
        )
    ]
    return KeysetPage(items=rows, next_after=next_after)


def _contact_list_labels(
    *, using: str, contact_ids: list[int], owner_ids: set[int], store_ids: set[int]
) -> tuple[dict, dict, dict, dict]:
    """The page's tags and its stage, owner and store names, in one round trip.

    Hand-written because this is the list's hot path: ORM joins for the three names plus an ORM
    query for the tags cost about as much Python as all of the page's SQL takes (see
    docs/benchmarks.md). The rows' own query stays in the ORM, where filters and scoping live.
    """
    connection = connections[using]
    user_model = get_user_model()
    contact_tag, tag, stage = ContactTag._meta.db_table, Tag._meta.db_table, Stage._meta.db_table
    stage_key = connection.ops.quote_name("key")

    def id_list(ids) -> str:
        # Integers inlined, not bound: the client-side binding would inline them just the same,
        # but only after re-parsing the statement, which psycopg caches only up to 50 parameters.
        return ", ".join(str(int(pk)) for pk in ids)

    parts = [
        f"SELECT 't', ct.contact_id, t.name, t.color FROM {contact_tag} ct"
        f" JOIN {tag} t ON t.id = ct.tag_id WHERE ct.contact_id IN ({id_list(contact_ids)})",
        f"SELECT 's', NULL, {stage_key}, name FROM {stage}",
    ]
    if owner_ids:
        username = user_model._meta.get_field(user_model.USERNAME_FIELD).column
        parts.append(
            f"SELECT 'o', id, {username}, NULL FROM {user_model._meta.db_table}"
            f" WHERE id IN ({id_list(owner_ids)})"
        )
    if store_ids:
        parts.append(
            f"SELECT 'r', id, name, NULL FROM {Store._meta.db_table}"
            f" WHERE id IN ({id_list(store_ids)})"
        )
    tags: dict[int, list[tuple[str, str]]] = {}
    stages: dict[str, str] = {}
    owners: dict[int, str] = {}
    stores: dict[int, str] = {}
    with connection.cursor() as cursor:
        cursor.execute(" UNION ALL ".join(parts))
        for kind, key, text, extra in cursor.fetchall():
            if kind == "t":
                tags.setdefault(key, []).append((text, extra))
            elif kind == "s":
                stages[text] = extra
            elif kind == "o":
                owners[key] = text
            else:
                stores[key] = text
    return tags, stages, owners, stores


def contact_tags(*, contact: Contact) -> QuerySet[ContactTag]:
    return (
        ContactTag.objects.filter(contact=contact)
        .select_related("tag__group")
        .order_by("tag__group__position", "tag__group__name", "tag__name")
    )


def contact_identities(*, contact: Contact) -> QuerySet[Identity]:
    return Identity.objects.filter(contact=contact).order_by("kind", "pk")


def contact_merged_into_visible(*, user: AbstractBaseUser, pk: int) -> Contact | None:
    """The visible survivor a merged-away contact now lives in, for redirecting old links."""
    survivor_id = Contact.objects.filter(pk=pk).values_list("merged_into_id", flat=True).first()
    if survivor_id is None:
        return None
    return contact_visible_to(user=user).filter(pk=survivor_id).first()


def contact_custom_fields() -> QuerySet[CustomField]:
    return CustomField.objects.filter(is_active=True).order_by("position", "key")


def contact_profile_attributes(*, contact: Contact) -> list[tuple[str, object]]:
    """(label, value) of the contact's custom fields in field order, then other traits by key."""
    attributes = contact.attributes if isinstance(contact.attributes, dict) else {}
    rows: list[tuple[str, object]] = []
    seen: set[str] = set()
    for field in contact_custom_fields():
        seen.add(field.key)
        value = attributes.get(field.key)
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = "✓" if value else "✗"
        rows.append((field.label, value))
    rows.extend((key, attributes[key]) for key in sorted(attributes) if key not in seen)
    return rows


def stores_active() -> QuerySet[Store]:
    return Store.objects.filter(is_active=True).order_by("code")


def staff_users() -> QuerySet:
    """Users who may own contacts (active accounts), for owner pickers."""
    from django.contrib.auth import get_user_model

    return get_user_model().objects.filter(is_active=True).order_by("username")


def contact_sources(*, user: AbstractBaseUser, limit: int = 50) -> list[str]:
    """The distinct sources of the contacts `user` may see, in order, at most `limit`:
    suggestions for the list's source filter.

    For those who see every contact, a loose index scan (one probe of the source index per
    distinct value; merged-away contacts count, which only adds a word to the suggestions), as
    a plain DISTINCT would read the whole index: a million contacts hold a handful of sources.
    Store staff see few contacts: a DISTINCT over those."""
    if not contact_visible_to_all(user=user):
        return list(
            contact_visible_to(user=user)
            .exclude(source="")
            .order_by("source")
            .values_list("source", flat=True)
            .distinct()[:limit]
        )
    table = Contact._meta.db_table
    sql = (
        f"WITH RECURSIVE s(source) AS ("
        f"SELECT min(source) FROM {table} WHERE source > '' "
        f"UNION ALL SELECT (SELECT min(c.source) FROM {table} c WHERE c.source > s.source) "
        f"FROM s WHERE s.source IS NOT NULL) "
        f"SELECT source FROM s WHERE source IS NOT NULL LIMIT %s"
    )
    with connections[Contact.objects.db].cursor() as cursor:
        cursor.execute(sql, [limit])
        return [row[0] for row in cursor.fetchall()]


def contact_source_labels(*, user: AbstractBaseUser) -> list[str]:
    """What the list's source filter suggests: the sources of the contacts `user` may see, as
    the list shows them (a label for the sources the product writes)."""
    return sorted({labels.source_label(code) for code in contact_sources(user=user)})


def contact_notes(*, contact: Contact, limit: int = 50) -> list[Note]:
    """Open follow-ups first (soonest due first), then the other notes newest first."""
    base = Note.objects.filter(contact=contact).select_related("author")
    open_follow_ups = list(
        base.filter(follow_up_at__isnull=False, done_at__isnull=True).order_by("follow_up_at")[
            :limit
        ]
    )
    others = list(
        base.exclude(pk__in=[n.pk for n in open_follow_ups]).order_by("-created_at", "-pk")[
            : max(limit - len(open_follow_ups), 0)
        ]
    )
    return open_follow_ups + others


def contact_consents(*, contact: Contact) -> QuerySet[Consent]:
    return (
        Consent.objects.filter(contact=contact)
        .select_related("record")
        .order_by("channel", "purpose")
    )


def contact_consent_records(*, contact: Contact, limit: int = 20) -> QuerySet[ConsentRecord]:
    return (
        ConsentRecord.objects.filter(contact=contact)
        .select_related("actor")
        .order_by("-recorded_at", "-pk")[:limit]
    )


def contact_merges(*, contact: Contact) -> QuerySet[MergeRecord]:
    """Merges that folded another contact into this one, newest first."""
    return (
        MergeRecord.objects.filter(survivor=contact)
        .select_related("duplicate", "actor")
        .order_by("-created_at", "-pk")
    )


def contact_merge_blocks(*, contact: Contact) -> list[dict]:
    """Contacts declared not the same person as this one, newest first, with who said so."""
    blocks = (
        MergeBlock.objects.filter(Q(low=contact) | Q(high=contact))
        .select_related("low", "high", "actor")
        .order_by("-created_at", "-pk")
    )
    return [
        {"block": block, "other": block.high if block.low_id == contact.pk else block.low}
        for block in blocks
    ]


def merge_record_visible_to(*, user: AbstractBaseUser) -> QuerySet[MergeRecord]:
    """Merge records whose survivor the user may see."""
    return MergeRecord.objects.filter(survivor__in=contact_visible_to(user=user)).select_related(
        "survivor", "duplicate"
    )


def contact_pair_visible_to(
    *, user: AbstractBaseUser, survivor_id: int, duplicate_id: int
) -> tuple[Contact, Contact] | None:
    """Two different contacts `user` may see (a merge's survivor and duplicate), or None."""
    if survivor_id == duplicate_id:
        return None
    pair = {
        c.pk: c for c in contact_visible_to(user=user).filter(pk__in=[survivor_id, duplicate_id])
    }
    if len(pair) != 2:
        return None
    return pair[survivor_id], pair[duplicate_id]


def contact_merge_candidates(
    *, user: AbstractBaseUser, contact: Contact, query: str, limit: int = 20
) -> list[Contact]:
    """Contacts the user may see that match `query`, other than `contact` itself."""
    if not query.strip():
        return []
    qs = contact_search(
        qs=contact_visible_to(user=user), query=query, personal=pii.can_view_personal_data(user)
    ).exclude(pk=contact.pk)
    return list(qs.select_related("lifecycle_stage").order_by("-pk")[:limit])


# Contact columns the merge goes through that the preview leaves out: the merge link (empty on
# both, or the merge is refused) and the lead score columns, which segments scores again once the
# merge is done (segments.scoring.lead_scores_merge), so the merge's own fill-in does not stay.
MERGE_PREVIEW_HIDDEN = {"merged_into_id", "lead_score", "lead_score_at", "lead_score_engagement"}


def merge_preview_fields() -> list:
    """The contact columns the merge fills or combines (the merge's own list), in model order."""
    # Imported here: contacts.services imports this module (identify follows merges).
    from contacts.services.merge import MERGE_SKIP_FIELDS

    return [
        f
        for f in Contact._meta.concrete_fields
        if f.attname not in MERGE_SKIP_FIELDS
        and f.name not in MERGE_SKIP_FIELDS
        and f.attname not in MERGE_PREVIEW_HIDDEN
    ]


def _has_value(value: object) -> bool:
    return value not in (None, "", [])


def _attribute_display(value: object) -> object:
    if isinstance(value, bool):
        return "✓" if value else "✗"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return "" if value is None else value


def _merge_preview_attribute_rows(*, survivor: Contact, duplicate: Contact) -> list[dict]:
    """One row per custom field (or other trait) either contact has a value for, with what the
    merge leaves (merged_attributes: the survivor keeps each trait it has a value for)."""
    from contacts.services.merge import merged_attributes  # see contact_merge_preview

    mine = survivor.attributes if isinstance(survivor.attributes, dict) else {}
    theirs = duplicate.attributes if isinstance(duplicate.attributes, dict) else {}
    keys = {k for k in (*mine, *theirs) if _has_value(mine.get(k)) or _has_value(theirs.get(k))}
    if not keys:
        return []
    merged, taken = merged_attributes(mine, theirs)
    # Retired fields too: their values still move with the merge.
    defined = list(
        CustomField.objects.filter(key__in=keys)
        .order_by("position", "key")
        .values_list("key", "label")
    )
    labelled = {key for key, _label in defined}
    ordered = [*defined, *((key, key) for key in sorted(keys - labelled))]
    rows = []
    for key, label in ordered:
        result = merged.get(key)
        rows.append(
            {
                "name": f"attributes.{key}",
                "label": label,
                "survivor": _attribute_display(mine.get(key)),
                "duplicate": _attribute_display(theirs.get(key)),
                "result": _attribute_display(result),
                "from_duplicate": key in taken,
                "personal": False,
                "raw_survivor": mine.get(key),
                "raw_duplicate": theirs.get(key),
                "raw_result": result,
            }
        )
    return rows


def contact_merge_preview(*, survivor: Contact, duplicate: Contact) -> dict:
    """What a merge of `duplicate` into `survivor` keeps: field by field, and row counts.

    Every column the merge goes through, then the custom fields either contact has a value for;
    "result" is what the survivor holds once merged (tests compare it with a real merge).
    """
    # Imported here: contacts.services imports this module (identify follows merges).
    from contacts.services.merge import merged_field_value

    rows = []
    for field in merge_preview_fields():
        mine = getattr(survivor, field.attname)
        theirs = getattr(duplicate, field.attname)
        result = merged_field_value(field.attname, mine, theirs)
        from_duplicate = result != mine
        rows.append(
            {
                "name": field.name,
                "label": field.verbose_name,
                "survivor": _display(survivor, field, mine),
                "duplicate": _display(duplicate, field, theirs),
                "result": _display(duplicate if from_duplicate else survivor, field, result),
                "from_duplicate": from_duplicate,
                "personal": field.name in ("phone", "email"),
                "raw_survivor": mine,
                "raw_duplicate": theirs,
                "raw_result": result,
            }
        )
    rows += _merge_preview_attribute_rows(survivor=survivor, duplicate=duplicate)
    counts = {}
    for key, model in (
        ("identities", Identity),
        ("events", Event),
        ("tags", ContactTag),
        ("notes", Note),
        ("consent_records", ConsentRecord),
    ):
        per_contact = dict(
            model.objects.filter(contact__in=[survivor.pk, duplicate.pk])
            .values_list("contact_id")
            .annotate(n=Count("pk"))
            .values_list("contact_id", "n")
        )
        counts[key] = {
            "survivor": per_contact.get(survivor.pk, 0),
            "duplicate": per_contact.get(duplicate.pk, 0),
        }
    return {"fields": rows, "counts": counts}


def _display(contact: Contact, field, value) -> object:
    if value in (None, ""):
        return ""
    if field.choices:
        return dict(field.flatchoices).get(value, value)
    if field.is_relation:
        return getattr(contact, field.name)
    if isinstance(value, dt.datetime):
        return timezone.localtime(value).strftime("%Y-%m-%d %H:%M")
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


# --- Follow-ups (跟进) -----------------------------------------------------------------------

FOLLOW_UP_OVERDUE = "overdue"
FOLLOW_UP_TODAY = "today"
FOLLOW_UP_UPCOMING = "upcoming"
FOLLOW_UP_LATER = "later"
FOLLOW_UP_OPEN = "open"
# What the "My follow-ups" page filters by; FOLLOW_UP_LATER only labels rows.
FOLLOW_UP_BUCKETS = (FOLLOW_UP_OVERDUE, FOLLOW_UP_TODAY, FOLLOW_UP_UPCOMING, FOLLOW_UP_OPEN)
# "Upcoming" is the local days after today, up to this many.
FOLLOW_UP_UPCOMING_DAYS = 7
FOLLOW_UP_PREVIEW_LENGTH = 140


@dataclass(frozen=True, slots=True)
class FollowUpBounds:
    """Where the buckets split, on the current time zone's day boundaries."""

    now: dt.datetime
    tomorrow: dt.datetime  # midnight that starts the next local day
    upcoming_end: dt.datetime  # midnight that ends the upcoming window

    def bucket(self, due: dt.datetime) -> str:
        if due < self.now:
            return FOLLOW_UP_OVERDUE
        if due < self.tomorrow:
            return FOLLOW_UP_TODAY
        if due < self.upcoming_end:
            return FOLLOW_UP_UPCOMING
        return FOLLOW_UP_LATER


def follow_up_bounds(*, now: dt.datetime | None = None) -> FollowUpBounds:
    """Overdue is before `now`; today runs to local midnight; upcoming covers the next 7 days."""
    now = now or timezone.now()
    today = timezone.localdate(now)

    def midnight(days: int) -> dt.datetime:
        return timezone.make_aware(
            dt.datetime.combine(today + dt.timedelta(days=days), dt.time.min)
        )

    return FollowUpBounds(
        now=now, tomorrow=midnight(1), upcoming_end=midnight(1 + FOLLOW_UP_UPCOMING_DAYS)
    )


def follow_ups_can_see_others(*, user: AbstractBaseUser) -> bool:
    """Whether the user may look at another staff member's follow-ups, or everyone's.

    Admins and operators (who see every contact and manage notes) may; store staff stay on their
    own, as do read-only roles.
    """
    if user.is_superuser:
        return True
    return (
        user.is_authenticated
        and not roles.is_store_staff(user)
        and user.has_perm("contacts.view_contact")
        and user.has_perm("contacts.change_note")
    )


def note_visible_to(*, user: AbstractBaseUser) -> QuerySet[Note]:
    """Notes on the contacts the user may see."""
    return Note.objects.filter(contact__in=contact_visible_to(user=user))


def follow_ups_open(*, user: AbstractBaseUser, staff_id: int | None) -> QuerySet[Note]:
    """Open follow-ups on contacts the user may see that belong to staff member `staff_id`.

    A follow-up belongs to whoever wrote it and to the contact's owner: the owner answers for
    the customer, so a colleague's follow-up on their customer is theirs to do too. `staff_id`
    None means everyone's; users who may not see others' follow-ups get their own whatever
    they ask for.
    """
    if not follow_ups_can_see_others(user=user):
        staff_id = user.pk
    qs = note_visible_to(user=user).filter(follow_up_at__isnull=False, done_at__isnull=True)
    if staff_id is not None:
        qs = qs.filter(Q(author_id=staff_id) | Q(contact__owner_id=staff_id))
    return qs


def follow_ups_in_bucket(
    *, qs: QuerySet[Note], bucket: str, bounds: FollowUpBounds
) -> QuerySet[Note]:
    """The follow-ups of `qs` due in `bucket`; any other bucket name means all of them."""
    if bucket == FOLLOW_UP_OVERDUE:
        return qs.filter(follow_up_at__lt=bounds.now)
    if bucket == FOLLOW_UP_TODAY:
        return qs.filter(follow_up_at__gte=bounds.now, follow_up_at__lt=bounds.tomorrow)
    if bucket == FOLLOW_UP_UPCOMING:
        return qs.filter(follow_up_at__gte=bounds.tomorrow, follow_up_at__lt=bounds.upcoming_end)
    return qs


def follow_ups_due_counts(
    *, qs: QuerySet[Note], bounds: FollowUpBounds, cap: int
) -> dict[str, int]:
    """How many of `qs` are overdue and due today, each counted up to `cap` + 1 rows only.

    A backlog can grow without limit; a count past `cap` shows as "cap+" rather than scanning it.
    """
    return {
        bucket: follow_ups_in_bucket(qs=qs, bucket=bucket, bounds=bounds)
        .order_by()[: cap + 1]
        .count()
        for bucket in (FOLLOW_UP_OVERDUE, FOLLOW_UP_TODAY)
    }


@dataclass(slots=True)
class FollowUpRow:
    """What one row of the follow-up list shows."""

    pk: int
    contact_id: int
    contact_name: str
    phone: str  # masked: unmasking is a per-contact, audit-logged action on the 360 page
    body: str  # the start of the note only
    follow_up_at: dt.datetime
    done_at: dt.datetime | None
    author: str  # username, "" for a deleted author or the system
    bucket: str


def _follow_up_rows(*, qs: QuerySet[Note], bounds: FollowUpBounds) -> list[FollowUpRow]:
    username = f"author__{get_user_model().USERNAME_FIELD}"
    fetched = qs.annotate(preview=Substr("body", 1, FOLLOW_UP_PREVIEW_LENGTH + 1)).values_list(
        "pk",
        "contact_id",
        "contact__name",
        "contact__nickname",
        "contact__phone",
        "preview",
        "follow_up_at",
        "done_at",
        username,
    )
    rows = []
    for pk, contact_id, name, nickname, phone, preview, due, done_at, author in fetched:
        masked = pii.mask_phone(phone)
        rows.append(
            FollowUpRow(
                pk=pk,
                contact_id=contact_id,
                contact_name=name or nickname or masked or f"#{contact_id}",
                phone=masked,
                body=Truncator(preview).chars(FOLLOW_UP_PREVIEW_LENGTH),
                follow_up_at=due,
                done_at=done_at,
                author=author or "",
                bucket=bounds.bucket(due),
            )
        )
    return rows


def follow_ups_page(
    *, qs: QuerySet[Note], bounds: FollowUpBounds, after: str | int | None, size: int = 50
) -> KeysetPage:
    """One keyset page of `qs`, soonest due first; `after` is the id of the last row shown.

    The cursor is (follow_up_at, id), the sort itself. It is read from the note even when that
    note was marked done since, which is what usually happens to the rows of this list.
    """
    qs = qs.order_by("follow_up_at", "pk")
    after_id = parse_id(after)
    if after_id is not None:
        cursor = Note.objects.filter(pk=after_id).values_list("follow_up_at", flat=True).first()
        if cursor is None:
            return KeysetPage(items=[], next_after=None)
        qs = qs.filter(Q(follow_up_at__gt=cursor) | Q(follow_up_at=cursor, pk__gt=after_id))
    rows = _follow_up_rows(qs=qs[: size + 1], bounds=bounds)
    next_after = rows[size - 1].pk if len(rows) > size else None
    return KeysetPage(items=rows[:size], next_after=next_after)


def follow_up_row(
    *, user: AbstractBaseUser, note_id: int, bounds: FollowUpBounds
) -> FollowUpRow | None:
    """One follow-up as a list row, open or done, if its contact is visible to the user."""
    qs = note_visible_to(user=user).filter(pk=note_id, follow_up_at__isnull=False)
    rows = _follow_up_rows(qs=qs, bounds=bounds)
    return rows[0] if rows else None
