"""An index of each contact's events by name (segment rules ask "did this contact do X").

On PostgreSQL it is built CONCURRENTLY: the events table is the largest one (tens of millions of
rows), and a plain CREATE INDEX would block event ingest for the whole build. Hence a
non-atomic migration; SQLite builds it the ordinary way.
"""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class AddIndexConcurrentlyOnPostgreSQL(migrations.AddIndex):
    def _operation(self, schema_editor) -> migrations.AddIndex:
        if schema_editor.connection.vendor == "postgresql":
            return AddIndexConcurrently(self.model_name, self.index)
        return migrations.AddIndex(self.model_name, self.index)

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        self._operation(schema_editor).database_forwards(
            app_label, schema_editor, from_state, to_state
        )

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        self._operation(schema_editor).database_backwards(
            app_label, schema_editor, from_state, to_state
        )


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run inside a transaction

    dependencies = [
        ("contacts", "0009_erasure"),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgreSQL(
            model_name="event",
            index=models.Index(
                fields=["contact", "name", "occurred_at"], name="event_contact_name_time"
            ),
        ),
    ]
