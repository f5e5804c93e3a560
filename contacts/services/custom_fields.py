"""Operator-defined custom fields: validation on every write path."""

import datetime as dt
import math
import re
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import PROTECT, ProtectedError
from django.utils.translation import gettext as _
from django.utils.translation import pgettext

from contacts.models import (
    CustomField,
    CustomFieldKind,
)
from core.errors import ValidationFailed
from core.sql import contains_nul

MAX_CUSTOM_TEXT = 500
# The largest whole number a custom number field holds: 2^53 - 1, the largest every JSON client
# (a JavaScript number is a double) and the segment rules read exactly. A larger one would be
# stored rounded: 123456789012345678901234567890 read back as 123456789012345677877719597056.
MAX_CUSTOM_NUMBER = 2**53 - 1
TRUE_WORDS = {"true", "1", "yes", "y", "是", "对"}
FALSE_WORDS = {"false", "0", "no", "n", "否", "不"}
# A date as JSON sends it: ISO 8601's extended form only (not 20260517 or 2026-W20-7).
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


def _custom_value(definition: CustomField, raw: Any, *, from_text: bool) -> Any:
    key, kind = definition.key, definition.kind

    def invalid(message: str, **params: Any) -> ValidationFailed:
        # `message` is translated and names the field as %(field)s: by its label, which operators
        # read; the key travels in the details for API clients.
        return ValidationFailed(
            message % {"field": definition.label or key, **params},
            code="invalid_custom_field",
            details={"field": key},
        )

    if raw is None or raw == "":
        return None
    if kind == CustomFieldKind.TEXT:
        # Text read from a file may be a number a spreadsheet typed; a JSON number is not text.
        text_types = (str, int, float) if from_text else (str,)
        if not isinstance(raw, text_types) or isinstance(raw, bool):
            raise invalid(_("Custom field '%(field)s' must be text."))
        if contains_nul(raw):
            raise invalid(_("Custom field '%(field)s' must not contain the NUL character."))
        value = str(raw).strip()
        if len(value) > MAX_CUSTOM_TEXT:
            raise invalid(
                _("Custom field '%(field)s' is longer than %(max)s characters."),
                max=MAX_CUSTOM_TEXT,
            )
        return value
    if kind == CustomFieldKind.NUMBER:
        number_types = (int, float, Decimal, str) if from_text else (int, float, Decimal)
        if isinstance(raw, bool) or not isinstance(raw, number_types):
            raise invalid(_("Custom field '%(field)s' must be a number."))
        number: int | float | Decimal = raw
        if isinstance(raw, str):
            try:
                # Whole numbers exactly: through a float, 9007199254740993 would pass rounded.
                number = int(raw.strip())
            except ValueError:
                try:
                    number = float(raw.strip())
                except ValueError as exc:
                    raise invalid(_("Custom field '%(field)s' must be a number.")) from exc
        if not isinstance(number, int):
            if not math.isfinite(number):
                raise invalid(_("Custom field '%(field)s' must be a finite number."))
            if number == int(number) and abs(number) <= MAX_CUSTOM_NUMBER:
                number = int(number)
            else:
                number = float(number)
        if abs(number) > MAX_CUSTOM_NUMBER:
            raise invalid(
                _("Custom field '%(field)s' must be a number between -%(max)s and %(max)s."),
                max=MAX_CUSTOM_NUMBER,
            )
        return number
    if kind == CustomFieldKind.DATE:
        if isinstance(raw, dt.datetime):
            raw = raw.date()
        if isinstance(raw, dt.date):
            return raw.isoformat()
        try:
            if not from_text and not (isinstance(raw, str) and ISO_DATE.fullmatch(raw)):
                raise ValueError(raw)
            return dt.date.fromisoformat(str(raw).strip()).isoformat()
        except ValueError as exc:
            raise invalid(_("Custom field '%(field)s' must be a date like 2026-05-17.")) from exc
    if kind == CustomFieldKind.SINGLE_CHOICE:
        choice_types = (str, int) if from_text else (str,)
        value = str(raw).strip() if isinstance(raw, choice_types) else None
        if isinstance(raw, bool) or value not in [str(c) for c in definition.choices]:
            raise invalid(
                _("Custom field '%(field)s' must be one of: %(choices)s."),
                # The operator's own choices, listed as the language lists words (干性、油性).
                choices=pgettext("list separator", ", ").join(map(str, definition.choices)),
            )
        return value
    if kind == CustomFieldKind.MULTI_CHOICE:
        # Imports give "a,b"; the API and forms give a list (of texts).
        items = raw.split(",") if from_text and isinstance(raw, str) else raw
        if not isinstance(items, list | tuple) or (
            not from_text and not all(isinstance(i, str) for i in items)
        ):
            raise invalid(_("Custom field '%(field)s' must be a list of choices."))
        allowed = [str(c) for c in definition.choices]
        chosen = [str(i).strip() for i in items if str(i).strip()]
        unknown = [i for i in chosen if i not in allowed]
        if unknown or any(not isinstance(i, str | int) for i in items):
            raise invalid(
                _("Custom field '%(field)s' has options outside the choices: %(values)s."),
                values=", ".join(unknown),
            )
        return list(dict.fromkeys(chosen))
    if kind == CustomFieldKind.BOOLEAN:
        if isinstance(raw, bool):
            return raw
        word = str(raw).strip().lower() if from_text and isinstance(raw, str | int) else None
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise invalid(_("Custom field '%(field)s' must be true or false."))
    raise invalid(_("Custom field '%(field)s' has an unknown type '%(kind)s'."), kind=kind)


def custom_fields_validate(*, values: dict[str, Any], from_text: bool = False) -> dict[str, Any]:
    """Check values against the active custom field definitions; return the cleaned values.

    Each value must have its field's type, as JSON gives it (the API) and the contact form's
    fields do: text a string, a number a number, a date a "YYYY-MM-DD" string, a yes/no field
    true or false, a choice a string (a list of them for several): a value of another type is
    refused, not converted. With `from_text`, values a file holds as text or a person typed by
    hand are read for what they spell: "42" a number, "是" true, "20260517" a date, "a,b" two
    choices (the CSV import, the admin's attribute editor).
    """
    for key in values:
        if contains_nul(key):
            # Before the definitions' look-up by key: PostgreSQL refuses NUL in text.
            raise ValidationFailed(
                _("Unknown field '%(field)s'.") % {"field": key.replace("\x00", "\\0")},
                code="unknown_field",
                details={"field": key.replace("\x00", "\\0")},
            )
    definitions = {d.key: d for d in CustomField.objects.filter(key__in=list(values))}
    cleaned: dict[str, Any] = {}
    for key, raw in values.items():
        definition = definitions.get(key)
        if definition is None or not definition.is_active:
            raise ValidationFailed(
                _("Unknown field '%(field)s'.") % {"field": key},
                code="unknown_field",
                details={"field": key},
            )
        cleaned[key] = _custom_value(definition, raw, from_text=from_text)
    return cleaned


def custom_field_delete(*, field: CustomField) -> None:
    """Delete a custom field definition (the values stay in the contacts' attributes).

    Refused while something reads the field — a segment rule, a lead-scoring condition: they
    protect it (on_delete=PROTECT, defined in the apps that read it) and could no longer be
    evaluated without it. Deactivate the field instead to hide it from forms.
    """
    try:
        with transaction.atomic():
            # Locked first, so that a rule starting to read the field meanwhile either is seen
            # by the protection check or waits for the deletion (and then fails on its own).
            CustomField.objects.select_for_update().filter(pk=field.pk).first()
            field.delete()
    except ProtectedError as exc:
        readers = sorted(str(obj) for obj in exc.protected_objects)
        raise ValidationFailed(
            _("The custom field “%(field)s” is in use (%(readers)s); change those rules first.")
            % {"field": field.label, "readers": "; ".join(readers)},
            code="field_in_use",
            details={"field": field.key, "readers": readers},
        ) from exc


def custom_field_readers(*, field: CustomField) -> list[str]:
    """What reads the field ("segment “…” reads it", …), sorted.

    The readers are the rows that protect the field from deletion (on_delete=PROTECT); they
    are defined in the apps that read it, which this app does not import."""
    readers: list[str] = []
    for relation in CustomField._meta.related_objects:
        if relation.on_delete is PROTECT:
            refs = relation.related_model._default_manager.filter(**{relation.field.name: field})
            readers += [str(ref) for ref in refs]
    return sorted(readers)


def _json_lookup_names() -> frozenset[str]:
    from django.db.models import JSONField
    from django.db.models.fields.json import KeyTransform

    return frozenset(JSONField.get_lookups()) | frozenset(KeyTransform.get_lookups())


def custom_field_check_key(*, key: str) -> None:
    """Refuse a key that queries would not read as one literal key of Contact.attributes.

    Filters and rules reach a value as `attributes__<key>`: Django reads "__" there as nesting,
    a lookup name ("contains", "in", "gt") as that lookup, and a key starting with a digit as
    an array index on PostgreSQL, so such a field would match the wrong contacts or fail."""
    if not key[:1].isalpha() or "__" in key or key in _json_lookup_names():
        raise ValidationFailed(
            _(
                "The key “%(key)s” cannot be used: start it with a letter, do not use two "
                "underscores in a row, and do not use a word that filters reserve (such as "
                "“contains”, “in” or “exact”)."
            )
            % {"key": key},
            code="invalid_key",
            details={"field": "key"},
        )


def custom_field_check_change(*, field: CustomField, key: str, kind: str) -> None:
    """Refuse a new key or type for a field that rules read.

    A rule names the field by its key and compares its values as that type: after a rename it
    reads a field that is gone (its segment can no longer be refreshed), after a type change it
    compares values stored as another type."""
    stored = CustomField.objects.filter(pk=field.pk).values_list("key", "kind").first()
    if stored is None or stored == (key, kind):
        return
    readers = custom_field_readers(field=field)
    if readers:
        raise ValidationFailed(
            _(
                "The key and type of the custom field “%(field)s” cannot change while rules "
                "read it (%(readers)s); change those rules first."
            )
            % {"field": field.label, "readers": "; ".join(readers)},
            code="field_in_use",
            details={
                "field": stored[0],
                "readers": readers,
                "changed": [
                    name
                    for name, old, new in (("key", stored[0], key), ("kind", stored[1], kind))
                    if old != new
                ],
            },
        )


@transaction.atomic
def custom_field_save(*, field: CustomField) -> CustomField:
    """Save a custom field definition (new or changed); a key or type change is refused while
    rules read the field, and so is a key another field has.

    The checks a form made before are made again here: a rule or a field with the same key
    may have been saved by someone else since. Nothing is written when one refuses.
    """
    stored_key = (
        CustomField.objects.filter(pk=field.pk).values_list("key", flat=True).first()
        if field.pk is not None
        else None
    )
    if field.key != stored_key:
        # Only a new key: a field saved before keys were checked can still be edited.
        custom_field_check_key(key=field.key)
    if field.pk is not None:
        # Locked (a reference to the row, when a rule starts reading the field, waits for it,
        # and this waits for a reference not yet committed): the check sees every reader.
        CustomField.objects.select_for_update().filter(pk=field.pk).first()
        custom_field_check_change(field=field, key=field.key, kind=field.kind)
    try:
        # A savepoint, so that the transaction stays usable for the check below.
        with transaction.atomic():
            field.save()
    except IntegrityError as exc:
        # The key is the only unique column: another admin saved the same key first (this
        # insert waited for that transaction, then failed on its committed row).
        if not CustomField.objects.filter(key=field.key).exclude(pk=field.pk).exists():
            raise
        raise ValidationFailed(
            _("Another custom field already has the key “%(key)s”.") % {"key": field.key},
            code="key_taken",
            details={"field": field.key},
        ) from exc
    return field
