"""Masking of personal data (phones, emails, identities) for operators who may not see it (PIPL)."""

from collections.abc import Iterable

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from contacts.models import Contact, Identity, IdentityKind

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


def mask_identifier(value: str) -> str:
    """Keep the first and the last four characters of an id, enough to tell two apart:
    oUpF8uMuAJO_M2pxb1Q9zNjWeS6o → oUpF****eS6o. Shorter ids keep less (a quarter at each
    end), ids under four characters nothing."""
    value = value or ""
    keep = min(4, len(value) // 4)
    if not keep:
        return "****" if value else ""
    return f"{value[:keep]}****{value[-keep:]}"


def mask_identity(kind: str, value: str) -> str:
    """An identity's value masked as its kind is: phones and emails as above, ids partially."""
    if kind == IdentityKind.PHONE:
        return mask_phone(value)
    if kind == IdentityKind.EMAIL:
        return mask_email(value)
    return mask_identifier(value)


def identities_shown(
    identities: Iterable[Identity], *, personal: bool, unmasked: bool
) -> list[tuple[Identity, str]]:
    """Each identity with its value as the contact page shows it (openids as `app_id:value`).

    Every kind is personal data (PIPL): without the personal-data permission (`personal`) all
    are masked. Holders of it see ids in full and phones and emails masked, like the profile,
    until an audited unmask (`unmasked`) shows every value.
    """
    rows = []
    for identity in identities:
        value = identity.value
        if not unmasked and not (
            personal and identity.kind not in (IdentityKind.PHONE, IdentityKind.EMAIL)
        ):
            value = mask_identity(identity.kind, value)
        scope = f"{identity.app_id}:" if identity.app_id else ""
        rows.append((identity, f"{scope}{value}"))
    return rows


def revealed_fields(contact: Contact) -> list[str]:
    """The contact's personal fields (phone, email) whose full value differs from the masked
    one: what a page showing them in full reveals, and an unmask audit entry names."""
    masks = {"phone": mask_phone, "email": mask_email}
    return [
        name
        for name, mask in masks.items()
        if mask(getattr(contact, name)) != getattr(contact, name)
    ]
