"""Errors shared by the services that validate field values."""

from core.errors import ValidationFailed


def field_error(key: str, message: str, code: str = "invalid_field") -> ValidationFailed:
    """A validation error about field `key`; `message` is a whole, already translated sentence.

    Build it with gettext and named placeholders, e.g.
    `_("Field '%(field)s' is empty.") % {"field": key}`, never by gluing fragments together:
    word order differs between languages.
    """
    return ValidationFailed(message, code=code, details={"field": key})
