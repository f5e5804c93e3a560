"""Ids as clients send them: in query strings, forms and JSON."""

# The largest primary key (bigint) there can be. A larger number names no row, yet SQLite cannot
# bind it and PostgreSQL fails casting it to bigint: callers check ids against it first.
MAX_ID = 2**63 - 1


def parse_id(raw: object) -> int | None:
    """The id `raw` names (an int, or a string of ASCII digits) if it can exist, else None."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, str):
        digits = raw.strip()
        # str.isdigit alone accepts "²" and "١", which int() refuses or reads as another number.
        if not (digits.isascii() and digits.isdigit()) or len(digits.lstrip("0")) > 19:
            return None
        raw = int(digits)
    if not isinstance(raw, int):
        return None
    return raw if 1 <= raw <= MAX_ID else None
