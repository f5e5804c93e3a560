from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from core.errors import ValidationFailed
from core.models import KEY_PREFIX_LEN, ApiKey, hash_api_key


@transaction.atomic
def api_key_create(
    *, name: str, created_by: AbstractBaseUser | None = None, throttle_rate: str = ""
) -> tuple[ApiKey, str]:
    """Create an API key and return it with the raw key, which is never stored."""
    name = name.strip()
    if not name:
        raise ValidationFailed("An API key needs a name.")
    raw = ApiKey.generate()
    key = ApiKey.objects.create(
        name=name,
        prefix=raw[:KEY_PREFIX_LEN],
        hashed_key=hash_api_key(raw),
        created_by=created_by,
        throttle_rate=throttle_rate,
    )
    return key, raw


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
