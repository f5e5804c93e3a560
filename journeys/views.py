from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from contacts.models import Contact
from contacts.selectors import (
    contact_pair_visible_to,
    contact_visible_to,
    contact_visible_to_all,
)
from core.errors import ValidationFailed
from core.htmx import render_page
from core.pagination import keyset_page
from journeys import selectors, services
from journeys.models import Journey

PAGE_SIZE = 50
ENROLLMENTS_PAGE_SIZE = 25
CONTACT_ENROLLMENTS_LIMIT = 20
CHANGE_PERMISSION = "journeys.change_journey"


def _counted_contacts(user: AbstractBaseUser) -> QuerySet[Contact] | None:
    """Whose enrollments the user's counts include: the contacts they may see, as in the
    enrollment table; None (every live contact) spares the visibility filter for those who see
    them all, as on the dashboard."""
    return None if contact_visible_to_all(user=user) else contact_visible_to(user=user)


def _activation_error(exc: ValidationFailed) -> str:
    if exc.code == "no_steps":
        return _("A journey needs at least one step before it can go live.")
    # Other refusals (a send step's missing or inactive channel, …) name what is wrong
    # themselves, in the operator's language.
    return exc.message


@login_required
def journey_list(request: HttpRequest) -> HttpResponse:
    journeys = selectors.journey_list(contacts=_counted_contacts(request.user))
    page = keyset_page(journeys, after=request.GET.get("after"), size=PAGE_SIZE)
    return render_page(
        request, "journeys/journey_list.html", {"page": page}, fragment="journey-table"
    )


@login_required
def journey_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """The journey's steps and the enrollments of the contacts the user may see."""
    journey = get_object_or_404(
        selectors.journey_list(contacts=_counted_contacts(request.user)), pk=pk
    )
    enrollments = keyset_page(
        selectors.journey_enrollments(
            journey=journey, contacts=contact_visible_to(user=request.user)
        ),
        after=request.GET.get("after"),
        size=ENROLLMENTS_PAGE_SIZE,
    )
    context = {
        "journey": journey,
        "steps": list(selectors.journey_steps(journey=journey)),
        "page": enrollments,
    }
    return render_page(
        request, "journeys/journey_detail.html", context, fragment="journey-enrollments"
    )


@login_required
@require_POST
@permission_required(CHANGE_PERMISSION, raise_exception=True)
def journey_activate(request: HttpRequest, pk: int) -> HttpResponse:
    journey = get_object_or_404(Journey, pk=pk)
    try:
        services.journey_activate(journey=journey)
    except ValidationFailed as exc:
        messages.error(request, _activation_error(exc))
    else:
        messages.success(request, _("Journey “%(name)s” is live.") % {"name": journey.name})
    return redirect("journeys:detail", pk=journey.pk)


@login_required
@require_POST
@permission_required(CHANGE_PERMISSION, raise_exception=True)
def journey_pause(request: HttpRequest, pk: int) -> HttpResponse:
    journey = get_object_or_404(Journey, pk=pk)
    services.journey_pause(journey=journey)
    messages.success(request, _("Journey “%(name)s” is paused.") % {"name": journey.name})
    return redirect("journeys:detail", pk=journey.pk)


@login_required
def contact_enrollments(request: HttpRequest, contact_id: int) -> HttpResponse:
    """The journeys panel of the contact 360 page."""
    contact = get_object_or_404(contact_visible_to(user=request.user), pk=contact_id)
    enrollments = selectors.enrollments_for_contact(contact=contact).order_by("-pk")[
        :CONTACT_ENROLLMENTS_LIMIT
    ]
    context = {"contact": contact, "enrollments": list(enrollments)}
    return render_page(
        request, "journeys/contact_enrollments.html", context, fragment="contact-enrollments"
    )


@login_required
def contact_merge_preview(
    request: HttpRequest, survivor_id: int, duplicate_id: int
) -> HttpResponse:
    """The journeys panel of the merge preview: both contacts' enrollments and what the merge
    does with each."""
    pair = contact_pair_visible_to(
        user=request.user, survivor_id=survivor_id, duplicate_id=duplicate_id
    )
    if pair is None:
        raise Http404
    survivor, duplicate = pair
    context = {
        "survivor": survivor,
        "duplicate": duplicate,
        "rows": selectors.enrollments_merge_preview(survivor=survivor, duplicate=duplicate),
    }
    return render_page(
        request, "journeys/contact_merge_preview.html", context, fragment="merge-journeys"
    )
