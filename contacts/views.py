from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from contacts import selectors, services
from contacts.filters import ContactFilter
from contacts.forms import TagAddForm
from contacts.models import Contact
from core.htmx import htmx_target, redirect_or_fragment, render_page
from core.pagination import keyset_page

PAGE_SIZE = 50
TIMELINE_SIZE = 30
DETAIL_TEMPLATE = "contacts/contact_detail.html"


def _int_or_none(raw: str | None) -> int | None:
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


def _get_contact(request: HttpRequest, pk: int) -> Contact:
    return get_object_or_404(selectors.contact_visible_to(user=request.user), pk=pk)


def _tags_context(contact: Contact) -> dict:
    return {
        "contact": contact,
        "contact_tags": list(selectors.contact_tags(contact=contact)),
        "tag_form": TagAddForm(contact=contact),
    }


@login_required
def contact_list(request: HttpRequest) -> HttpResponse:
    filters = ContactFilter(request.GET, queryset=selectors.contact_list(user=request.user))
    page = keyset_page(filters.qs, after=request.GET.get("after"), size=PAGE_SIZE)
    return render_page(
        request,
        "contacts/contact_list.html",
        {"filters": filters, "page": page},
        fragment="contact-table",
    )


@login_required
def contact_detail(request: HttpRequest, pk: int) -> HttpResponse:
    contact = _get_contact(request, pk)
    before = _int_or_none(request.GET.get("before"))
    events = selectors.contact_timeline(contact=contact, before=before, limit=TIMELINE_SIZE + 1)
    timeline = {
        "events": events[:TIMELINE_SIZE],
        "next_before": events[TIMELINE_SIZE - 1].pk if len(events) > TIMELINE_SIZE else None,
    }
    fragment = "timeline-more" if before else htmx_target(request, allowed={"contact-tags"})
    context = {
        **_tags_context(contact),
        "identities": list(selectors.contact_identities(contact=contact)),
        "timeline": timeline,
        "before": before,
    }
    return render_page(request, DETAIL_TEMPLATE, context, fragment=fragment)


@login_required
@require_POST
def contact_tag_add(request: HttpRequest, pk: int) -> HttpResponse:
    contact = _get_contact(request, pk)
    form = TagAddForm(request.POST)
    if form.is_valid():
        tag = form.cleaned_data["tag"]
        if services.contact_tag_add(contact=contact, tag=tag, actor=request.user):
            messages.success(request, _("Tag “%(tag)s” added.") % {"tag": tag.name})
        else:
            messages.info(request, _("The contact already has “%(tag)s”.") % {"tag": tag.name})
    else:
        messages.error(request, _("Choose a tag to add."))
    return redirect_or_fragment(
        request,
        to=reverse("contacts:detail", args=[contact.pk]),
        template=DETAIL_TEMPLATE,
        fragment="contact-tags",
        context=_tags_context(contact),
    )


@login_required
@require_POST
def contact_tag_remove(request: HttpRequest, pk: int, tag_id: int) -> HttpResponse:
    contact = _get_contact(request, pk)
    tag = get_object_or_404(selectors.tags_grouped(), pk=tag_id)
    if services.contact_tag_remove(contact=contact, tag=tag, actor=request.user):
        messages.success(request, _("Tag “%(tag)s” removed.") % {"tag": tag.name})
    else:
        messages.info(request, _("The contact did not have “%(tag)s”.") % {"tag": tag.name})
    return redirect_or_fragment(
        request,
        to=reverse("contacts:detail", args=[contact.pk]),
        template=DETAIL_TEMPLATE,
        fragment="contact-tags",
        context=_tags_context(contact),
    )
