"""What a rule reads, as change topics, so that a change re-evaluates only the segments it can move.

A topic names one kind of contact data: a profile field (`city`, `lifecycle_stage`), every custom
field at once (`attributes`), `tags`, `consent`, `identities`, `membership`, `rfm`, `koc`,
`event:<name>` and `segment:<id>`. Whoever changes a contact says which topics changed (the
`changed` argument of `contacts.signals.contact_changed`, the names of recorded events); the
incremental refresh then re-evaluates a queued contact only for the segments whose rules read one
of its topics.

Topics travel as a 63-bit mask, so a queue row stays one integer that SQL can OR together. The
fixed topics below (every profile field and the other kinds of data) have a bit each; event names
and segment ids share the remaining bits by hash. Two topics sharing a bit only cost a needless
re-evaluation, never a missed one; a change whose topics are unknown sets every bit.
"""

import zlib
from collections.abc import Iterable
from typing import Any

from segments.rules.schema import rule_conditions

ALL = (1 << 63) - 1  # every bit of a signed 64-bit integer but the sign

TAGS, CONSENT, IDENTITIES, MEMBERSHIP, RFM, KOC = (
    "tags",
    "consent",
    "identities",
    "membership",
    "rfm",
    "koc",
)
CUSTOM_FIELDS = "attributes"


def event_topic(name: str) -> str:
    return f"event:{name}"


def segment_topic(segment_id: int) -> str:
    return f"segment:{segment_id}"


def field_topic(field: str) -> str:
    """The topic of a profile field or of a custom field (all custom fields share one)."""
    return CUSTOM_FIELDS if field.startswith(f"{CUSTOM_FIELDS}.") else field


# Append only: queued rows keep their bits across an upgrade.
FIXED_TOPICS = (
    "name", "nickname", "phone", "email", "province", "city", "source", "channel_code",
    "utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term", "gender",
    "lifecycle_stage", "owner", "store", "birthday", "created_at", "first_seen_at",
    "last_seen_at", "last_active_at", "lead_score", CUSTOM_FIELDS, TAGS, CONSENT, IDENTITIES,
    MEMBERSHIP, RFM, KOC,
)  # fmt: skip
FIXED_BITS = {topic: 1 << i for i, topic in enumerate(FIXED_TOPICS)}
HASHED_BITS = 63 - len(FIXED_TOPICS)


def topic_bit(topic: str) -> int:
    bit = FIXED_BITS.get(topic)
    if bit is None:
        bit = 1 << (len(FIXED_TOPICS) + zlib.crc32(topic.encode()) % HASHED_BITS)
    return bit


def topics_mask(topics: Iterable[str] | None) -> int:
    """The mask of some topics; None (not known what changed) is every topic."""
    if topics is None:
        return ALL
    mask = 0
    for topic in topics:
        mask |= topic_bit(topic)
    return mask


REACHABLE_TOPICS = {
    "sms": ("phone", CONSENT),
    "email": ("email", CONSENT),
}


def rule_topics(rule: Any) -> set[str]:
    """Every topic a (validated) rule reads; "*" for a condition kind not known here."""
    found: set[str] = set()
    for node in rule_conditions(rule):
        kind = node.get("type")
        if kind == "attribute":
            found.add(field_topic(str(node.get("field"))))
        elif kind == "tag":
            found.add(TAGS)
        elif kind == "event":
            found.add(event_topic(str(node.get("name"))))
        elif kind in (MEMBERSHIP, CONSENT, RFM, KOC):
            found.add(kind)
        elif kind == "reachable":
            found.update(REACHABLE_TOPICS.get(node.get("channel"), (IDENTITIES, CONSENT)))
        elif kind == "segment":
            found.add(segment_topic(node.get("segment")))
        else:
            found.add("*")
    return found


def rule_mask(rule: Any) -> int:
    topics = rule_topics(rule)
    return ALL if "*" in topics else topics_mask(topics)


def mask_topics(mask: int) -> list[str]:
    """The fixed topics a mask holds, and "events / segments" for any hashed bit (their names
    cannot be recovered); for showing a queue row to an admin."""
    if mask == ALL:
        return ["*"]
    named = [topic for topic, bit in FIXED_BITS.items() if mask & bit]
    if mask >> len(FIXED_TOPICS):
        named.append("events / segments")
    return named
