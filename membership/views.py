from django.contrib.auth.decorators import login_required, permission_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404

from contacts.selectors import contact_pair_visible_to, contact_visible_to
from core.htmx import render_page
from core.pagination import keyset_page
from membership import selectors
from membership.filters import MemberFilter

PAGE_SIZE = 50
POINTS_HISTORY_SIZE = 10
VIEW_PERMISSION = "membership.view_member"


@login_required
@permission_required(VIEW_PERMISSION, raise_exception=True)
def membership_index(request: HttpRequest) -> HttpResponse:
    """Tiers with their member counts, and the members of the contacts the user may see."""
    visible = contact_visible_to(user=request.user)
    filters = MemberFilter(request.GET, queryset=selectors.member_list(contacts=visible))
    page = keyset_page(filters.qs, after=request.GET.get("after"), size=PAGE_SIZE)
    context = {
        "tiers": list(selectors.tiers_with_member_counts(contacts=visible)),
        "filters": filters,
        "page": page,
    }
    return render_page(request, "membership/index.html", context, fragment="member-table")


@login_required
@permission_required(VIEW_PERMISSION, raise_exception=True)
def contact_card(request: HttpRequest, contact_id: int) -> HttpResponse:
    """The membership panel of the contact 360 page."""
    contact = get_object_or_404(contact_visible_to(user=request.user), pk=contact_id)
    member = selectors.member_for_contact(contact=contact)
    history = selectors.points_history(member=member, limit=POINTS_HISTORY_SIZE) if member else []
    context = {"contact": contact, "member": member, "history": history}
    return render_page(request, "membership/contact_card.html", context, fragment="member-card")


@login_required
@permission_required(VIEW_PERMISSION, raise_exception=True)
def contact_merge_preview(
    request: HttpRequest, survivor_id: int, duplicate_id: int
) -> HttpResponse:
    """The membership panel of the merge preview: both memberships and the merged one."""
    pair = contact_pair_visible_to(
        user=request.user, survivor_id=survivor_id, duplicate_id=duplicate_id
    )
    if pair is None:
        raise Http404
    survivor, duplicate = pair
    context = {
        "survivor": survivor,
        "duplicate": duplicate,
        "preview": selectors.member_merge_preview(survivor=survivor, duplicate=duplicate),
    }
    return render_page(
        request, "membership/contact_merge_preview.html", context, fragment="merge-membership"
    )
