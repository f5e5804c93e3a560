from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from core.errors import ValidationFailed
from core.models import KEY_PREFIX_LEN, ApiKey, AuditLog, hash_api_key


@transaction.atomic
def api_key_create(
    *,
    name: str,
    created_by: AbstractBaseUser | None = None,
    throttle_rate: str = "",
    personal_data_requests: bool = False,
    ip: str | None = None,
) -> tuple[ApiKey, str]:
    """Create an API key and return it with the raw key, which is never stored; audited.

    `personal_data_requests`: the key may erase people and read full copies of their data."""
    name = name.strip()
    if not name:
        raise ValidationFailed("An API key needs a name.")
    name = _checked(field="name", value=name)
    # A rate the throttle cannot apply would answer every request of the key with a 500, and
    # one of 0 with a 429 (validate_throttle_rate); empty is the site default.
    throttle_rate = _checked(field="throttle_rate", value=throttle_rate.strip())
    raw = ApiKey.generate()
    key = ApiKey.objects.create(
        name=name,
        prefix=raw[:KEY_PREFIX_LEN],
        hashed_key=hash_api_key(raw),
        created_by=created_by,
        throttle_rate=throttle_rate,
        personal_data_requests=personal_data_requests,
    )
    _audit(
        key=key,
        action="api_key.create",
        details={"name": key.name, "personal_data_requests": personal_data_requests},
        actor=created_by,
        ip=ip,
    )
    return key, raw


def _audit(
    *, key: ApiKey, action: str, details: dict, actor: AbstractBaseUser | None, ip: str | None
) -> None:
    AuditLog.objects.create(
        actor=actor if actor is not None and actor.is_authenticated else None,
        action=action,
        object_type=ApiKey._meta.label_lower,
        object_id=str(key.pk),
        details=details,
        ip=ip,
    )


# What an edit of a key may change that the audit log records (never the key's hash).
API_KEY_AUDITED_FIELDS = ("name", "is_active", "throttle_rate", "personal_data_requests")


def api_key_changes_audit(
    *,
    key: ApiKey,
    before: dict,
    actor: AbstractBaseUser | None,
    ip: str | None = None,
) -> None:
    """Record what an edit changed on a key (`before`: its API_KEY_AUDITED_FIELDS as they
    were): who may erase people or read their data, and who may call at all, is what the
    audit log is for."""
    changed = {
        field: {"from": before[field], "to": getattr(key, field)}
        for field in API_KEY_AUDITED_FIELDS
        if before[field] != getattr(key, field)
    }
    if changed:
        _audit(key=key, action="api_key.change", details=changed, actor=actor, ip=ip)


def _checked(*, field: str, value: str) -> str:
    """`value` checked by the model field's own validators (length, validate_throttle_rate),
    which the admin's form runs too."""
    try:
        return ApiKey._meta.get_field(field).clean(value, None)
    except ValidationError as exc:
        raise ValidationFailed(exc.messages[0], details={"field": field}) from exc


def api_key_authenticate(*, raw: str) -> ApiKey | None:
    """Return the active key matching a raw key, recording its use at most once a minute."""
    key = ApiKey.objects.filter(hashed_key=hash_api_key(raw), is_active=True).first()
    if key is None:
        return None
    now = timezone.now()
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key
