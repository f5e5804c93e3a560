"""Write operations on contacts, one module per concern.

Callers import from `contacts.services`; the modules are an internal layout."""

from contacts.services.consent import (
    consent_record,
)
from contacts.services.custom_fields import (
    FALSE_WORDS,
    MAX_CUSTOM_TEXT,
    TRUE_WORDS,
    custom_fields_validate,
)
from contacts.services.erasure import (
    ErasureContended,
    contact_erase,
    erased_identity_message,
    erasure_count,
    erasure_of_contact,
    erasure_of_identities,
    erasure_rows_delete,
    identities_suppressed,
    identity_digest,
    suppression_any,
    suppressions_lift,
)
from contacts.services.events import (
    APPEND_BATCH,
    PASSIVE_EVENTS,
    event_record,
    events_append,
    events_stored,
    is_activity,
)
from contacts.services.identity import (
    COLUMN_TRAITS,
    DEFAULT_PHONE_REGION,
    MAX_ATTRIBUTE_KEYS,
    IdentifyResult,
    IdentityInput,
    identify,
    normalize_identity,
    normalize_phone,
    strong_identity_kinds,
)
from contacts.services.ingest import (
    MAX_CLOCK_SKEW,
    MAX_EVENTS_PER_BATCH,
    EventInput,
    EventOutcome,
    events_record,
)
from contacts.services.locking import (
    contacts_lock_live,
)
from contacts.services.merge import (
    MERGE_SKIP_FIELDS,
    MergeContended,
    MergeRefused,
    contact_merge,
    contact_merge_undo,
    merge_block_add,
    merge_block_remove,
    merge_blocked_with,
)
from contacts.services.notes import (
    MAX_NOTE_LENGTH,
    note_add,
    note_complete,
)
from contacts.services.profile import (
    OLDEST_BIRTHDAY,
    PROFILE_FIELDS,
    PROFILE_TEXT_FIELDS,
    contact_changes_validate,
    contact_update,
)
from contacts.services.stages import (
    DEFAULT_STAGE_NAMES,
    stages_ensure_defaults,
)
from contacts.services.tags import (
    contact_tag_add,
    contact_tag_remove,
    contact_tags_add,
    contact_tags_expire,
    tag_delete,
    tag_ref_split,
    tags_resolve,
)

__all__ = [
    "APPEND_BATCH",
    "COLUMN_TRAITS",
    "DEFAULT_PHONE_REGION",
    "DEFAULT_STAGE_NAMES",
    "FALSE_WORDS",
    "MAX_ATTRIBUTE_KEYS",
    "MAX_CLOCK_SKEW",
    "MAX_CUSTOM_TEXT",
    "MAX_EVENTS_PER_BATCH",
    "MAX_NOTE_LENGTH",
    "MERGE_SKIP_FIELDS",
    "OLDEST_BIRTHDAY",
    "PASSIVE_EVENTS",
    "PROFILE_FIELDS",
    "PROFILE_TEXT_FIELDS",
    "TRUE_WORDS",
    "ErasureContended",
    "EventInput",
    "EventOutcome",
    "IdentifyResult",
    "IdentityInput",
    "MergeContended",
    "MergeRefused",
    "consent_record",
    "contact_changes_validate",
    "contact_erase",
    "contact_merge",
    "contact_merge_undo",
    "contact_tag_add",
    "contact_tag_remove",
    "contact_tags_add",
    "contact_tags_expire",
    "contact_update",
    "contacts_lock_live",
    "custom_fields_validate",
    "erased_identity_message",
    "erasure_count",
    "erasure_of_contact",
    "erasure_of_identities",
    "erasure_rows_delete",
    "event_record",
    "events_append",
    "events_record",
    "events_stored",
    "identify",
    "identities_suppressed",
    "identity_digest",
    "is_activity",
    "merge_block_add",
    "merge_block_remove",
    "merge_blocked_with",
    "normalize_identity",
    "normalize_phone",
    "note_add",
    "note_complete",
    "stages_ensure_defaults",
    "strong_identity_kinds",
    "suppression_any",
    "suppressions_lift",
    "tag_delete",
    "tag_ref_split",
    "tags_resolve",
]
