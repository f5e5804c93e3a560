"""One way to write the audit log: who did which sensitive thing to what, and from where."""

from collections.abc import Iterable
from typing import Any

from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.http import HttpRequest

from core.models import AuditLog


def audit_log(
    *,
    actor: AbstractBaseUser | AnonymousUser | None,
    action: str,
    obj: models.Model | None = None,
    details: dict[str, Any] | None = None,
    request: HttpRequest | None = None,
) -> AuditLog:
    """Record one audit entry; `action` is a dotted verb such as "contact.unmask"."""
    return AuditLog.objects.create(
        actor=actor if actor is not None and actor.is_authenticated else None,
        action=action,
        object_type=obj._meta.label_lower if obj is not None else "",
        object_id=str(obj.pk) if obj is not None and obj.pk is not None else "",
        details=details or {},
        ip=request_ip(request),
    )


def request_ip(request: HttpRequest | None) -> str | None:
    """The address an audit entry records for a request, also for work it hands to a job."""
    # REMOTE_ADDR only: X-Forwarded-For is client-controlled unless a proxy rewrites it.
    return request.META.get("REMOTE_ADDR") or None if request is not None else None


def admin_history_forget(*, model: type[models.Model], pks: Iterable[Any]) -> int:
    """Make the Django admin's history entries (django_admin_log) of these rows of `model`
    name each row by its id and nothing else; return how many were changed. An entry names its
    row as the admin showed it (a contact's name, a note's first words), and its message names
    the inline rows added, changed or deleted with it the same way (an identity's value), none
    of which may outlive the erasure of the person. Who changed the row, and when, stays."""
    ids = [str(pk) for pk in pks]
    if not ids:
        return 0
    content_type = ContentType.objects.get_for_model(model, for_concrete_model=False)
    changed = 0
    for start in range(0, len(ids), 1000):
        changed += LogEntry.objects.filter(
            content_type=content_type, object_id__in=ids[start : start + 1000]
        ).update(object_repr=Concat(Value("#"), F("object_id")), change_message="")
    return changed
