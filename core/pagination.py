from dataclasses import dataclass
from typing import Any

from django.db.models import QuerySet


@dataclass
class KeysetPage:
    items: list[Any]
    next_after: int | None

    @property
    def has_next(self) -> bool:
        return self.next_after is not None


def parse_after(after: str | int | None) -> int | None:
    """The id a keyset page starts after; a missing or malformed value means the first page."""
    try:
        return int(after) if after not in (None, "") else None
    except (TypeError, ValueError):
        return None


def keyset_page(qs: QuerySet, *, after: str | int | None, size: int = 50) -> KeysetPage:
    """Return the page of `qs` (newest id first) that follows id `after`; no OFFSET, no COUNT."""
    qs = qs.order_by("-pk")
    after_id = parse_after(after)
    if after_id is not None:
        qs = qs.filter(pk__lt=after_id)
    rows = list(qs[: size + 1])
    next_after = rows[size - 1].pk if len(rows) > size else None
    return KeysetPage(items=rows[:size], next_after=next_after)
