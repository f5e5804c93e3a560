"""Fast inserts for generated rows: COPY on PostgreSQL, executemany elsewhere.

The writer bypasses the ORM (and therefore signals and model `save`) on purpose: it loads
millions of rows whose consistency the generator guarantees. Columns the generator does not know
about (a field another app adds later) get their model default, so the writer keeps working as
models grow.
"""

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from django.core.management.color import no_style
from django.db import connection as default_connection
from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone


def _sqlite_converter(field: models.Field) -> Callable[[Any], Any] | None:
    kind = field.get_internal_type()
    if kind == "DateTimeField":
        # Django keeps SQLite datetimes as naive UTC text; the generator hands out UTC values.
        return lambda v: None if v is None else str(v.astimezone(dt.UTC).replace(tzinfo=None))
    if kind == "DateField":
        return lambda v: None if v is None else v.isoformat()
    if kind == "DecimalField":
        return lambda v: None if v is None else str(v)
    if kind == "BooleanField":
        return lambda v: None if v is None else int(v)
    return None


class BulkWriter:
    """Writes tuples of values for a fixed list of model fields into the model's table."""

    def __init__(self, *, connection: BaseDatabaseWrapper = default_connection):
        self.connection = connection
        self.postgres = connection.vendor == "postgresql"
        self._plans: dict[tuple, tuple[str, tuple, list]] = {}

    def prepare(self, *models_with_explicit_ids: type[models.Model]) -> dict[type, int]:
        """Lock the tables we give ids to and return the next free id of each.

        Call inside the transaction that writes the rows. On PostgreSQL the EXCLUSIVE lock keeps
        other writers (whose ids come from the sequence) out until commit, so explicit ids cannot
        collide; foreign keys are checked per statement, so the queue of pending checks stays as
        small as one chunk. SQLite already serialises writers (transactions start IMMEDIATE).
        """
        qn = self.connection.ops.quote_name
        next_ids: dict[type, int] = {}
        with self.connection.cursor() as cursor:
            if self.postgres:
                tables = ", ".join(qn(m._meta.db_table) for m in models_with_explicit_ids)
                cursor.execute(f"LOCK TABLE {tables} IN EXCLUSIVE MODE")
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            for model in models_with_explicit_ids:
                pk = qn(model._meta.pk.column)
                cursor.execute(f"SELECT COALESCE(MAX({pk}), 0) FROM {qn(model._meta.db_table)}")
                next_ids[model] = cursor.fetchone()[0] + 1
        return next_ids

    @contextmanager
    def indexes_deferred(self, *loaded: type[models.Model]) -> Iterator[None]:
        """Drop secondary indexes and foreign keys of these tables for the load, rebuild after.

        PostgreSQL only (a no-op elsewhere), for big loads: building an index from sorted data
        and validating a foreign key with one join are several times cheaper than maintaining
        them row by row. DDL is transactional there, so a failed load restores both. Unique and
        primary-key indexes stay, so duplicates are still refused as they arrive. The tables
        stay locked against other sessions until commit.
        """
        if not self.postgres:
            yield
            return
        rebuild: list[str] = []
        qn = self.connection.ops.quote_name
        with self.connection.cursor() as cursor:
            for model in loaded:
                table = qn(model._meta.db_table)
                cursor.execute(
                    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE conrelid = %s::regclass AND contype = 'f' ORDER BY conname",
                    [table],
                )
                for name, definition in cursor.fetchall():
                    cursor.execute(f"ALTER TABLE {table} DROP CONSTRAINT {qn(name)}")
                    rebuild.append(f"ALTER TABLE {table} ADD CONSTRAINT {qn(name)} {definition}")
                cursor.execute(
                    # Indexes that back no constraint (unique and primary keys stay).
                    "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) "
                    "FROM pg_index i WHERE i.indrelid = %s::regclass AND NOT EXISTS "
                    "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) ORDER BY 1",
                    [table],
                )
                for name, definition in cursor.fetchall():
                    cursor.execute(f"DROP INDEX {name}")
                    # Indexes first, then keys: validating a key can use the rebuilt indexes.
                    rebuild.insert(0, definition)
        yield
        with self.connection.cursor() as cursor:
            # Enough memory to sort the biggest index in one pass; only for this transaction.
            cursor.execute("SET LOCAL maintenance_work_mem = '512MB'")
            for statement in rebuild:
                cursor.execute(statement)

    def finish(self, *models_with_explicit_ids: type[models.Model]) -> None:
        """Move the id sequences past the ids we wrote (PostgreSQL; SQLite tracks it itself)."""
        statements = self.connection.ops.sequence_reset_sql(
            no_style(), list(models_with_explicit_ids)
        )
        with self.connection.cursor() as cursor:
            for sql in statements:
                cursor.execute(sql)

    def vacuum_analyze(self, *loaded: type[models.Model]) -> None:
        """After a big load (PostgreSQL, outside a transaction): the planner gets statistics
        and the visibility map gets set, so that the first queries neither plan from empty
        statistics nor set hint bits on millions of rows, nor skip index-only scans until
        autovacuum gets round to the tables."""
        if not self.postgres:
            return
        qn = self.connection.ops.quote_name
        # VACUUM cannot run inside a transaction (a caller's, or a test's): statistics at least.
        command = "ANALYZE" if self.connection.in_atomic_block else "VACUUM (ANALYZE)"
        with self.connection.cursor() as cursor:
            for model in loaded:
                cursor.execute(f"{command} {qn(model._meta.db_table)}")

    def write(self, model: type[models.Model], fields: list[str], rows: Iterable[tuple]) -> int:
        """Insert rows whose values follow `fields` (attnames); return how many were written."""
        columns, extra, converters = self._plan(model, fields)
        table = self.connection.ops.quote_name(model._meta.db_table)
        written = 0
        with self.connection.cursor() as cursor:
            if self.postgres:
                sql = f"COPY {table} ({columns}) FROM STDIN"
                # The raw psycopg cursor: Django's wrapper has no COPY support.
                with cursor.cursor.copy(sql) as copy:
                    for row in rows:
                        copy.write_row(row + extra if extra else row)
                        written += 1
                return written
            placeholders = ", ".join(["%s"] * (len(fields) + len(extra)))
            sql = f"INSERT INTO {table} ({columns}) VALUES ({placeholders})"
            batch = []
            for row in rows:
                if converters:
                    values = list(row)
                    for index, convert in converters:
                        values[index] = convert(values[index])
                    row = tuple(values)
                batch.append(row + extra if extra else row)
            cursor.executemany(sql, batch)
            return len(batch)

    def _plan(self, model: type[models.Model], fields: list[str]) -> tuple[str, tuple, list]:
        key = (model, tuple(fields))
        if key not in self._plans:
            by_attname = {f.attname: f for f in model._meta.concrete_fields}
            unknown = set(fields) - set(by_attname)
            if unknown:
                raise ValueError(f"{model.__name__} has no fields {sorted(unknown)}")
            others = [
                f
                for f in model._meta.concrete_fields
                if f.attname not in fields and not f.primary_key
            ]
            extra = tuple(self._default(f) for f in others)
            qn = self.connection.ops.quote_name
            columns = ", ".join(qn(by_attname[name].column) for name in fields)
            if others:
                columns += ", " + ", ".join(qn(f.column) for f in others)
            converters = []
            if not self.postgres:
                for index, name in enumerate(fields):
                    convert = _sqlite_converter(by_attname[name])
                    if convert:
                        converters.append((index, convert))
            self._plans[key] = (columns, extra, converters)
        return self._plans[key]

    def _default(self, field: models.Field) -> Any:
        if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            value = timezone.now()
        elif field.has_default() or not field.null:
            value = field.get_default()
        else:
            value = None
        return field.get_db_prep_save(value, connection=self.connection)
