"""The operator roles (admin, operator, store staff, analyst) as Django groups with permissions.

Group names are stable English keys; the UI shows the translated labels. `roles_sync` makes the
groups hold exactly the permissions listed here, so running it again after an upgrade is safe.
"""

from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group, Permission
from django.db import transaction
from django.db.models import Q
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

ADMIN = "admin"
OPERATOR = "operator"
STORE_STAFF = "store_staff"
ANALYST = "analyst"

# The apps whose data operators run day to day.
BUSINESS_APPS = ("contacts", "segments", "journeys", "channels", "membership")
# Who may see segments (their pages, the 360 page's panel, their names in a timeline): a
# permission string, since contacts sits below segments and cannot import it.
SEGMENT_VIEW_PERMISSION = "segments.view_segment"


@dataclass(frozen=True)
class Role:
    name: str
    label: Promise
    description: Promise
    # "*" = every permission; "app.*" = every permission of an app; "app.view_*" = every view
    # permission of an app; otherwise "app.codename".
    permissions: tuple[str, ...]


ROLES: dict[str, Role] = {
    role.name: role
    for role in (
        Role(
            ADMIN,
            pgettext_lazy("role", "Administrator"),
            _("Everything, including users, API keys and the audit log."),
            ("*",),
        ),
        Role(
            OPERATOR,
            pgettext_lazy("role", "Operator"),
            _("Runs contacts, segments, journeys, channels and membership; exports and merges."),
            tuple(f"{app}.*" for app in BUSINESS_APPS),
        ),
        Role(
            STORE_STAFF,
            pgettext_lazy("role", "Store staff"),
            _("Sees and edits only the contacts they or their store own; no export."),
            (
                "contacts.view_contact",
                "contacts.change_contact",
                "contacts.view_identity",
                "contacts.view_event",
                "contacts.view_tag",
                "contacts.view_taggroup",
                "contacts.view_contacttag",
                "contacts.add_contacttag",
                "contacts.delete_contacttag",
                "contacts.view_note",
                "contacts.add_note",
                "contacts.change_note",
                "contacts.view_consent",
                "contacts.view_consentrecord",
                "contacts.add_consentrecord",
                "contacts.view_stage",
                "contacts.view_store",
                "membership.view_member",
                "membership.view_tier",
                "membership.view_pointsentry",
            ),
        ),
        Role(
            ANALYST,
            pgettext_lazy("role", "Analyst"),
            _("Read-only; phone numbers and emails stay masked."),
            tuple(f"{app}.view_*" for app in BUSINESS_APPS),
        ),
    )
}

# Never granted to analysts by a wildcard: unmasking is a deliberate grant.
_PERSONAL_DATA = ("contacts", "view_personal_data")
# Never granted by a wildcard below "*": an erasure cannot be undone, so by default only
# administrators answer erasure requests; they may grant it to a privacy officer's account.
ERASE_PERMISSION = "contacts.erase_contact"


def _permissions_for(role: Role) -> list[Permission]:
    if "*" in role.permissions:
        return list(Permission.objects.all())
    cond = Q(pk__in=[])
    for spec in role.permissions:
        app_label, codename = spec.split(".", 1)
        if codename == "*":
            cond |= Q(content_type__app_label=app_label)
        elif codename.endswith("*"):
            cond |= Q(content_type__app_label=app_label, codename__startswith=codename[:-1])
        else:
            cond |= Q(content_type__app_label=app_label, codename=codename)
    perms = Permission.objects.filter(cond).exclude(
        content_type__app_label=ERASE_PERMISSION.split(".")[0],
        codename=ERASE_PERMISSION.split(".")[1],
    )
    if role.name == ANALYST:
        perms = perms.exclude(content_type__app_label=_PERSONAL_DATA[0], codename=_PERSONAL_DATA[1])
    return list(perms)


@transaction.atomic
def roles_sync() -> dict[str, int]:
    """Create the role groups and give each exactly its permissions; return counts per role."""
    counts: dict[str, int] = {}
    for role in ROLES.values():
        group, _created = Group.objects.get_or_create(name=role.name)
        perms = _permissions_for(role)
        group.permissions.set(perms)
        counts[role.name] = len(perms)
    return counts


def role_label(name: str) -> str:
    """The translated label of a role's group name; other groups keep their own name."""
    role = ROLES.get(name)
    return str(role.label) if role else name


def user_role_names(user: AbstractBaseUser | AnonymousUser) -> list[str]:
    """Names of the roles a user holds, cached on the user object for the request."""
    if not user.is_authenticated:
        return []
    cached = getattr(user, "_scrm_role_names", None)
    if cached is None:
        cached = list(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
        user._scrm_role_names = cached
    return cached


def is_store_staff(user: AbstractBaseUser | AnonymousUser) -> bool:
    return STORE_STAFF in user_role_names(user)
