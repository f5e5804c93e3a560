from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404

from channels import selectors
from channels.filters import DeliveryFilter
from contacts.selectors import contact_pair_visible_to, contact_visible_to
from core.htmx import render_page
from core.pagination import keyset_page

PAGE_SIZE = 50
OVERVIEW_DAYS = 7
CONTACT_DELIVERIES_LIMIT = 20


@login_required
def channel_list(request: HttpRequest) -> HttpResponse:
    context = {"rows": selectors.channel_overview(days=OVERVIEW_DAYS), "days": OVERVIEW_DAYS}
    return render_page(request, "channels/channel_list.html", context)


@login_required
def delivery_list(request: HttpRequest) -> HttpResponse:
    """Deliveries to the contacts the user may see (store staff: their own and their store's)."""
    deliveries = selectors.delivery_list(contacts=contact_visible_to(user=request.user))
    filters = DeliveryFilter(request.GET, queryset=deliveries)
    page = keyset_page(filters.qs, after=request.GET.get("after"), size=PAGE_SIZE)
    return render_page(
        request,
        "channels/delivery_list.html",
        {"filters": filters, "page": page},
        fragment="delivery-table",
    )


@login_required
def contact_deliveries(request: HttpRequest, contact_id: int) -> HttpResponse:
    """The messages panel of the contact 360 page."""
    contact = get_object_or_404(contact_visible_to(user=request.user), pk=contact_id)
    deliveries = selectors.deliveries_for_contact(contact=contact, limit=CONTACT_DELIVERIES_LIMIT)
    context = {"contact": contact, "deliveries": deliveries}
    return render_page(
        request, "channels/contact_deliveries.html", context, fragment="contact-deliveries"
    )


@login_required
def contact_merge_preview(
    request: HttpRequest, survivor_id: int, duplicate_id: int
) -> HttpResponse:
    """The messages panel of the merge preview: both contacts' deliveries and the survivor's
    after the merge."""
    pair = contact_pair_visible_to(
        user=request.user, survivor_id=survivor_id, duplicate_id=duplicate_id
    )
    if pair is None:
        raise Http404
    survivor, duplicate = pair
    context = {
        "survivor": survivor,
        "duplicate": duplicate,
        "preview": selectors.deliveries_merge_preview(survivor=survivor, duplicate=duplicate),
    }
    return render_page(
        request, "channels/contact_merge_preview.html", context, fragment="merge-deliveries"
    )
