"""Small helpers for the hand-written SQL of hot paths."""

from collections.abc import Iterable, Sequence
from typing import Any

from django.db import connection
from django.db.models import Model, QuerySet

# Rows per INSERT of insert_new: far below SQLite's 32,766 bound parameters for any model here.
INSERT_BATCH = 500


def bigint_array(ids: Iterable[int]) -> str:
    """A PostgreSQL array literal of integers, to bind as `%s::bigint[]`.

    psycopg adapts a Python list element by element (about 3 µs per id): for the tens of
    thousands of ids a segment refresh binds, one string is ~30× cheaper and the server parses
    it just as fast.
    """
    return "{" + ",".join(str(int(pk)) for pk in ids) + "}"


def text_array(values: Iterable[str | None]) -> str:
    """A PostgreSQL array literal of texts (None: NULL), to bind as `%s::text[]` or cast to
    another type the server parses from text (`%s::timestamptz[]`, `%s::jsonb[]`, …): the
    same saving as bigint_array for the rows of a batch insert."""
    return (
        "{"
        + ",".join(
            "NULL" if value is None else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for value in values
        )
        + "}"
    )


def contains_nul(value: object) -> bool:
    """Whether a text, or any key or text inside a JSON value, holds U+0000: PostgreSQL's text
    and jsonb cannot store it, so a write path must refuse it by name rather than fail."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(contains_nul(k) or contains_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(contains_nul(v) for v in value)
    return False


def insert_new(model: type[Model], rows: Sequence[dict[str, Any]], *, returning: str) -> list:
    """Insert `rows` (keyword arguments of `model`) and return `returning` of the rows actually
    inserted: a row that a unique constraint already holds is skipped (ON CONFLICT DO NOTHING),
    however many transactions insert it at once. Fields left out take their defaults, as in
    bulk_create.

    What a concurrent or retried write path needs to tell who it changed: bulk_create with
    ignore_conflicts cannot say which rows it wrote, and a read before it is stale by the time
    the insert runs. Works on PostgreSQL and SQLite (3.35+)."""
    if not rows:
        return []
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    out = model._meta.get_field(returning).column
    quote = connection.ops.quote_name
    head = (
        f"INSERT INTO {quote(model._meta.db_table)} "
        f"({', '.join(quote(f.column) for f in fields)}) VALUES "
    )
    one = "(" + ", ".join(["%s"] * len(fields)) + ")"
    tail = f" ON CONFLICT DO NOTHING RETURNING {quote(out)}"
    result: list = []
    with connection.cursor() as cursor:
        for start in range(0, len(rows), INSERT_BATCH):
            objs = [model(**row) for row in rows[start : start + INSERT_BATCH]]
            params = [
                field.get_db_prep_save(field.pre_save(obj, add=True), connection)
                for obj in objs
                for field in fields
            ]
            cursor.execute(head + ", ".join([one] * len(objs)) + tail, params)
            result += [value for (value,) in cursor.fetchall()]
    return result


def delete_returning(queryset: QuerySet, *, returning: str) -> list:
    """Delete the rows of `queryset` (one model, no cascade to follow) and return `returning`
    of the rows this statement deleted: of two transactions deleting the same row, only the
    one that deleted it gets it back. Rows are matched by primary key, a composite one too."""
    model = queryset.model
    out = model._meta.get_field(returning).column
    quote = connection.ops.quote_name
    key = model._meta.pk_fields
    columns = ", ".join(quote(f.column) for f in key)
    if len(key) > 1:
        columns = f"({columns})"
    inner, params = queryset.values(*(f.attname for f in key)).query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {quote(model._meta.db_table)} WHERE {columns} IN ({inner}) "
            f"RETURNING {quote(out)}",
            params,
        )
        return [value for (value,) in cursor.fetchall()]
