"""Errors shared by the services that validate field values."""

from core.errors import ValidationFailed


def field_error(key: str, message: str, code: str = "invalid_field") -> ValidationFailed:
    return ValidationFailed(f"Field '{key}' {message}.", code=code, details={"field": key})
