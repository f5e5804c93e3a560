"""One way to write the audit log: who did which sensitive thing to what, and from where."""

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import models
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
