"""Masking of personal data (phones, emails) for operators who may not see it (PIPL)."""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

PERSONAL_DATA_PERMISSION = "contacts.view_personal_data"


def can_view_personal_data(user: AbstractBaseUser | AnonymousUser) -> bool:
    """True when the user may unmask phone numbers and emails (each unmasking is audit-logged)."""
    return bool(user.is_authenticated and user.has_perm(PERSONAL_DATA_PERMISSION))


def mask_phone(value: str) -> str:
    """Keep the prefix and the last four digits: +8613800138000 → +86138****8000."""
    value = value or ""
    return f"{value[:-8]}****{value[-4:]}" if len(value) >= 11 else value


def mask_email(value: str) -> str:
    """Keep the first character and the domain: lin@example.com → l***@example.com."""
    value = value or ""
    local, at, domain = value.partition("@")
    if not at:
        return value
    return f"{local[:1]}***@{domain}"
