import functools
import json
from collections.abc import Callable
from urllib.parse import urlencode, urlsplit

from django import forms
from django.apps import apps
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.middleware.csrf import get_token
from django.shortcuts import get_object_or_404, redirect
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import SimpleLazyObject
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext, pgettext, pgettext_lazy
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from contacts import bulk, personal_data, pii, roles, selectors, services
from contacts.filters import ContactFilter, contact_filter_checked
from contacts.forms import BulkTagForm, ConsentForm, ContactEditForm, NoteForm, TagAddForm
from contacts.labels import contact_ref
from contacts.models import ConsentChannel, ConsentPurpose, Contact, Erasure, ErasureSource, Note
from core import jobs
from core.audit import audit_log, request_ip
from core.errors import DomainError, NotFound, ValidationFailed
from core.htmx import htmx_target, is_fragment_request, redirect_or_fragment, render_page
from core.ids import parse_id
from core.pagination import KeysetPage, keyset_page

PAGE_SIZE = 50
TIMELINE_SIZE = 30
DETAIL_TEMPLATE = "contacts/contact_detail.html"
EDIT_TEMPLATE = "contacts/contact_edit.html"
LIST_TEMPLATE = "contacts/contact_list.html"
# Regions of the 360 page that htmx may ask for by their DOM id.
DETAIL_FRAGMENTS = {
    "contact-tags",
    "contact-profile",
    "contact-notes",
    "contact-consent",
    "contact-merges",
}


def _get_contact(request: HttpRequest, pk: int) -> Contact:
    return get_object_or_404(
        selectors.contact_visible_to(user=request.user).select_related(
            "lifecycle_stage", "owner", "store"
        ),
        pk=pk,
    )


def _detail_url(contact: Contact) -> str:
    return reverse("contacts:detail", args=[contact.pk])


# --- Contact list and bulk actions -----------------------------------------------------------


def _filter_params(data) -> dict[str, list[str]]:
    """The list-filter values of a GET or POST, for re-running the filter later."""
    return {
        name: [v for v in data.getlist(name) if v]
        for name in ContactFilter.base_filters
        if any(data.getlist(name))
    }


def contact_list_data(
    *, data: QueryDict, user: AbstractBaseUser
) -> tuple[ContactFilter, KeysetPage, dict[str, list[str]]]:
    """The list's filter set, its page of rows and the filter values in use.

    bench/contact_list.py times this very function against raw SQL, so keep the list's whole
    data path here.
    """
    visible = selectors.contact_list(user=user)
    params = _filter_params(data)
    # Built only when used: without filter values it would only validate an empty form, which
    # costs about as much as the page's SQL. A full page still builds it for the filter bar.
    filters = SimpleLazyObject(lambda: ContactFilter(data, queryset=visible, user=user))
    qs = filters.qs if params else visible
    page = selectors.contact_list_page(qs=qs, after=data.get("after"), size=PAGE_SIZE)
    return filters, page, params


@login_required
def contact_list(request: HttpRequest) -> HttpResponse:
    filters, page, params = contact_list_data(data=request.GET, user=request.user)
    context = {
        "filters": filters,
        "filter_errors": bool(params) and bool(filters.errors),
        "page": page,
        "bulk_form": BulkTagForm(),
        "filter_params": params,
        "filter_query": urlencode(params, doseq=True),
        "store_scope": roles.is_store_staff(request.user) and not request.user.is_superuser,
        "can_bulk_tag": request.user.has_perm("contacts.add_contacttag")
        or request.user.has_perm("contacts.delete_contacttag"),
        # Called by the template only where the filter form is drawn (not for a table page).
        "source_suggestions": functools.partial(selectors.contact_source_labels, user=request.user),
    }
    return render_page(request, LIST_TEMPLATE, context, fragment="contact-table")


@login_required
@require_POST
def contact_bulk_tag(request: HttpRequest) -> HttpResponse:
    perm = (
        "contacts.delete_contacttag"
        if request.POST.get("op") == "remove"
        else "contacts.add_contacttag"
    )
    if not request.user.has_perm(perm):
        raise PermissionDenied
    form = BulkTagForm(request.POST)
    params = _filter_params(request.POST)
    back = reverse("contacts:list")
    if params:
        back += "?" + urlencode(params, doseq=True)
    if not form.is_valid():
        errors = [*form.selection_errors(), *form.errors.get("expires_at", [])]
        for error in errors or [_("Choose a tag and an action.")]:
            messages.error(request, error)
        return redirect(back)
    add = form.cleaned_data["op"] == "add"
    tag = form.cleaned_data["bulk_tag"]
    contact_ids = form.selected_ids
    if contact_ids is None:
        try:
            contact_filter_checked(data=request.POST)
        except ValidationFailed as exc:
            messages.error(
                request,
                _("Fix the filter before applying a bulk action to all matches.")
                + " "
                + exc.message,
            )
            return redirect(back)
    try:
        started = bulk.contacts_bulk_tag_start(
            tag=tag,
            add=add,
            actor=request.user,
            contact_ids=contact_ids,
            filter_params=params if contact_ids is None else None,
            expires_at=form.cleaned_data["expires_at"],
            list_filter=params,
        )
    except ValidationFailed as exc:  # the expiry passed between the form check and now
        messages.error(request, exc.message)
        return redirect(back)
    if started.job is not None:
        messages.info(
            request,
            _("Tagging %(count)s contacts in the background.") % {"count": started.job.total},
        )
        return redirect("contacts:bulk_job", job_id=started.job.pk)
    result = started.result
    if add and not result.changed:
        text = ngettext(
            "The contact already had the tag “%(tag)s”.",
            "All %(count)s contacts already had the tag “%(tag)s”.",
            result.processed,
        ) % {"tag": tag.name, "count": result.processed}
    elif add:
        text = ngettext(
            "Tag “%(tag)s” added to %(count)s contact.",
            "Tag “%(tag)s” added to %(count)s contacts.",
            result.changed,
        ) % {"tag": tag.name, "count": result.changed}
    else:
        text = ngettext(
            "Tag “%(tag)s” removed from %(count)s contact.",
            "Tag “%(tag)s” removed from %(count)s contacts.",
            result.changed,
        ) % {"tag": tag.name, "count": result.changed}
    if result.expiry_moved:
        # Contacts that had the tag already are not "added to", yet their expiry changed: say
        # so (the job page says the same, contact_bulk_result.html). At most INLINE_LIMIT here:
        # the count needs no thousands separator. Chinese runs sentences together.
        moved = ngettext(
            "%(shown)s contact that already had the tag got the new expiry.",
            "%(shown)s contacts that already had the tag got the new expiry.",
            result.expiry_moved,
        ) % {"shown": result.expiry_moved}
        text = pgettext("two sentences", "%(first)s %(second)s") % {"first": text, "second": moved}
    messages.success(request, text)
    return redirect(back)


@login_required
def contact_bulk_job(request: HttpRequest, job_id: int) -> HttpResponse:
    job = get_object_or_404(
        jobs.jobs_visible_to(user=request.user).filter(kind=bulk.JOB_KIND), pk=job_id
    )
    # Back to the list as the job was started from it: the filter of the page, whether the
    # job ran on its ticked rows or on all its matches (jobs from before "list_filter" was kept
    # have only the latter).
    list_filter = job.params.get("list_filter") or job.params.get("filter_params") or {}
    list_url = reverse("contacts:list")
    if list_filter:
        list_url += "?" + urlencode(list_filter, doseq=True)
    context = {
        "job": job,
        "list_url": list_url,
        "poll_url": reverse("contacts:bulk_job", args=[job.pk]),
        "result_template": "contacts/contact_bulk_result.html",
    }
    return render_page(request, "contacts/contact_bulk_job.html", context, fragment="job-progress")


# --- The 360 page ----------------------------------------------------------------------------


def _tags_context(contact: Contact) -> dict:
    return {
        "contact": contact,
        "contact_tags": list(selectors.contact_tags(contact=contact)),
        "tag_form": TagAddForm(contact=contact),
    }


def _profile_context(request: HttpRequest, contact: Contact, *, unmasked: bool = False) -> dict:
    return {
        "contact": contact,
        "profile_attributes": selectors.contact_profile_attributes(contact=contact),
        "unmasked": unmasked,
        "can_unmask": pii.can_view_personal_data(request.user),
    }


def _identities_context(request: HttpRequest, contact: Contact, *, unmasked: bool) -> dict:
    """The identities panel: values masked as the user's role and an unmask say (pii)."""
    return {
        "contact": contact,
        "identities": pii.identities_shown(
            selectors.contact_identities(contact=contact),
            personal=pii.can_view_personal_data(request.user),
            unmasked=unmasked,
        ),
    }


def _notes_context(contact: Contact, form: NoteForm | None = None) -> dict:
    return {
        "contact": contact,
        "notes": selectors.contact_notes(contact=contact),
        # Where overdue and due today end, the same as on the "My follow-ups" page.
        "follow_up_bounds": selectors.follow_up_bounds(),
        "note_form": form or NoteForm(),
    }


def _consent_context(contact: Contact, form: ConsentForm | None = None) -> dict:
    return {
        "contact": contact,
        "consents": list(selectors.contact_consents(contact=contact)),
        # Each record with its evidence as one line of text (the template shortens it).
        "consent_records": [
            (record, _evidence_text(record.evidence))
            for record in selectors.contact_consent_records(contact=contact)
        ],
        "consent_form": form or ConsentForm(),
    }


def _evidence_text(evidence: object) -> str:
    """A consent record's evidence as one line: the note the consent form stores as it is, an
    API client's object as `key: value` pairs (nested values as JSON)."""
    if not evidence:
        return ""
    if not isinstance(evidence, dict):
        return json.dumps(evidence, ensure_ascii=False)
    parts = []
    for key, value in evidence.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        parts.append(text if key == "note" else f"{key}: {text}")
    return "; ".join(parts)


def _merges_context(contact: Contact) -> dict:
    return {
        "contact": contact,
        "merges": list(selectors.contact_merges(contact=contact)),
        "merge_blocks": selectors.contact_merge_blocks(contact=contact),
    }


def _render_detail(
    request: HttpRequest, contact: Contact, *, unmasked: bool = False
) -> HttpResponse:
    before = parse_id(request.GET.get("before"))
    events = selectors.contact_timeline(contact=contact, before=before, limit=TIMELINE_SIZE + 1)
    more = len(events) > TIMELINE_SIZE
    timeline = {
        # With the import that created the contact (derived, not stored) on its page.
        "events": selectors.contact_timeline_with_origin(
            contact=contact, events=events[:TIMELINE_SIZE], before=before, more=more
        ),
        "next_before": events[TIMELINE_SIZE - 1].pk if more else None,
    }
    fragment = "timeline-more" if before else htmx_target(request, allowed=DETAIL_FRAGMENTS)
    context = {
        **_tags_context(contact),
        **_profile_context(request, contact, unmasked=unmasked),
        **_notes_context(contact),
        **_consent_context(contact),
        **_merges_context(contact),
        **_identities_context(request, contact, unmasked=unmasked),
        "data_rights": _data_rights(request.user),
        "timeline": timeline,
        "before": before,
    }
    return render_page(request, DETAIL_TEMPLATE, context, fragment=fragment)


@login_required
def contact_detail(request: HttpRequest, pk: int) -> HttpResponse:
    visible = selectors.contact_visible_to(user=request.user).select_related(
        "lifecycle_stage", "owner", "store"
    )
    contact = visible.filter(pk=pk).first()
    if contact is None:
        # Old links to a merged-away contact lead to the contact it now lives in.
        survivor = selectors.contact_merged_into_visible(user=request.user, pk=pk)
        if survivor is None:
            if gone := _already_erased(request, pk):
                return gone
            get_object_or_404(visible, pk=pk)
        return redirect(_detail_url(survivor))
    return _render_detail(request, contact)


@login_required
@require_POST
@permission_required("contacts.view_personal_data", raise_exception=True)
def contact_unmask(request: HttpRequest, pk: int) -> HttpResponse:
    """Reveal phone, email and identities once, for this response only; every reveal is
    audit-logged."""
    contact = _get_contact(request, pk)
    audit_log(
        actor=request.user,
        action="contact.unmask",
        obj=contact,
        details={"fields": ["phone", "email", "identities"]},
        request=request,
    )
    if is_fragment_request(request):
        response = render_page(
            request,
            DETAIL_TEMPLATE,
            _profile_context(request, contact, unmasked=True),
            fragment="contact-profile",
        )
        # The identities panel is revealed too, swapped out of band next to the profile.
        response.content += render_to_string(
            f"{DETAIL_TEMPLATE}#contact-identities",
            {**_identities_context(request, contact, unmasked=True), "oob": True},
            request=request,
        ).encode(response.charset)
        return response
    # Without htmx the whole page is rendered here: a redirect would mask the values again.
    return _render_detail(request, contact, unmasked=True)


@login_required
@permission_required("contacts.change_contact", raise_exception=True)
def contact_edit(request: HttpRequest, pk: int) -> HttpResponse:
    contact = _get_contact(request, pk)
    personal = pii.can_view_personal_data(request.user)
    form = ContactEditForm(
        request.POST or None, contact=contact, personal_data=personal, user=request.user
    )
    if request.method == "POST":
        valid = form.is_valid()
        changes = form.changes()
        try:
            if not valid:
                # The service checks the values the form let through all the same: every
                # problem is shown at once, not one more after each save.
                if changes:
                    services.contact_changes_validate(contact=contact, data=changes)
            elif changes:
                services.contact_update(
                    contact=contact, data=changes, actor=request.user, source="manual"
                )
        except ValidationFailed as exc:
            details = exc.details if isinstance(exc.details, dict) else {}
            # Several problems come as one error listing each (details["errors"]).
            for error in details.get("errors") or [
                {**details, "code": exc.code, "message": exc.message}
            ]:
                field = error.get("field") or _field_named(
                    error.get("code"), error["message"], form
                )
                form.add_service_error(field, error["message"])
        if not form.errors:
            if changes:
                messages.success(request, _("Profile saved."))
            else:
                messages.info(request, _("Nothing changed."))
            contact = _get_contact(request, pk)
            if _on_page(request, reverse("contacts:edit", args=[pk])):
                # The form was the whole page (its own address): go to the contact's page, or
                # a reload would open the form again. The toast waits in the session.
                response = HttpResponse()
                response["HX-Location"] = _detail_url(contact)
                return response
            return redirect_or_fragment(
                request,
                to=_detail_url(contact),
                template=DETAIL_TEMPLATE,
                fragment="contact-profile",
                context=_profile_context(request, contact),
            )
    elif request.method == "GET" and personal and (revealed := pii.revealed_fields(contact)):
        # The form shows phone and email in full in its inputs: logged when that reveals
        # something the pages mask (not for a contact without either).
        audit_log(
            actor=request.user,
            action="contact.unmask",
            obj=contact,
            details={"fields": revealed, "via": "edit_form"},
            request=request,
        )
    return render_page(
        request, EDIT_TEMPLATE, {"contact": contact, "form": form}, fragment="contact-profile"
    )


def _on_page(request: HttpRequest, path: str) -> bool:
    """Whether an htmx request comes from the page at `path` (not from a fragment loaded
    into another page)."""
    current = request.headers.get("HX-Current-URL")
    return is_fragment_request(request) and bool(current) and urlsplit(current).path == path


# Service error codes that always concern one field.
ERROR_CODE_FIELDS = {"invalid_phone": "phone", "invalid_email": "email"}


def _field_named(code: str | None, message: str, form: ContactEditForm) -> str | None:
    """The form field a service error without a field is about: by its code, or the name or
    label it quotes."""
    if code in ERROR_CODE_FIELDS:
        return ERROR_CODE_FIELDS[code]
    for name, field in form.fields.items():
        key = name.removeprefix("cf__")
        if f"'{key}'" in message or f"'{field.label}'" in message:
            return name
    return None


@login_required
@require_POST
@permission_required("contacts.add_contacttag", raise_exception=True)
def contact_tag_add(request: HttpRequest, pk: int) -> HttpResponse:
    contact = _get_contact(request, pk)
    form = TagAddForm(request.POST)
    if form.is_valid():
        tag = form.cleaned_data["tag"]
        expires_at = form.cleaned_data["expires_at"]
        if services.contact_tag_add(
            contact=contact, tag=tag, actor=request.user, expires_at=expires_at
        ):
            messages.success(request, _("Tag “%(tag)s” added.") % {"tag": tag.name})
        else:
            messages.info(request, _("The contact already has “%(tag)s”.") % {"tag": tag.name})
    elif "expires_at" in form.errors:
        messages.error(request, form.errors["expires_at"][0])
    else:
        messages.error(request, _("Choose a tag to add."))
    return _tags_response(request, contact)


@login_required
@require_POST
@permission_required("contacts.delete_contacttag", raise_exception=True)
def contact_tag_remove(request: HttpRequest, pk: int, tag_id: int) -> HttpResponse:
    contact = _get_contact(request, pk)
    tag = get_object_or_404(selectors.tags_grouped(), pk=tag_id)
    if services.contact_tag_remove(contact=contact, tag=tag, actor=request.user):
        messages.success(request, _("Tag “%(tag)s” removed.") % {"tag": tag.name})
    else:
        messages.info(request, _("The contact did not have “%(tag)s”.") % {"tag": tag.name})
    return _tags_response(request, contact)


# --- Notes and follow-ups --------------------------------------------------------------------


@login_required
@require_POST
@permission_required("contacts.add_note", raise_exception=True)
def contact_note_add(request: HttpRequest, pk: int) -> HttpResponse:
    contact = _get_contact(request, pk)
    saved: list[Note] = []
    form = _submit(
        request,
        NoteForm(request.POST),
        lambda data: saved.append(
            services.note_add(
                contact=contact,
                author=request.user,
                body=data["body"],
                follow_up_at=data["follow_up_at"],
            )
        ),
        success=_("Note added."),
        failure=_("The note was not saved: %(errors)s"),
    )
    if saved and saved[0].contact_id != contact.pk:
        # A merge committed meanwhile and the note went to the survivor: this page shows a
        # contact that is gone, so the browser goes where the note is (the detail view sends
        # it on to the survivor, or answers 404 to someone who may not see it).
        to = _detail_url(contact) + "#contact-notes"
        if is_fragment_request(request):
            response = HttpResponse(status=204)
            response["HX-Redirect"] = to
            return response
        return redirect(to)
    return _notes_response(request, contact, form)


def _submit(
    request: HttpRequest,
    form: forms.Form,
    save: Callable[[dict], object],
    *,
    success: str | Callable[[dict], str],
    failure: str,
) -> forms.Form | None:
    """Validate a 360-page form and save it through a service; return the form to show again
    with its errors, or None once saved. A full page gets the errors as a toast too.

    `success` is the toast, or makes it from the saved data (to say what was done)."""
    if form.is_valid():
        try:
            save(form.cleaned_data)
        except ValidationFailed as exc:
            form.add_error(None, exc.message)
        else:
            text = success(form.cleaned_data) if callable(success) else success
            messages.success(request, text)
            return None
    if not is_fragment_request(request):
        text = " ".join(str(e) for errors in form.errors.values() for e in errors)
        messages.error(request, failure % {"errors": text})
    return form


def _toast_outcome(request: HttpRequest, call: Callable[[], object], *, success: str) -> None:
    """Run a service call and say how it went: its domain error, or `success`."""
    try:
        call()
    except DomainError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, success)


@login_required
@require_POST
@permission_required("contacts.change_note", raise_exception=True)
def contact_note_done(request: HttpRequest, pk: int, note_id: int) -> HttpResponse:
    contact = _get_contact(request, pk)
    note = get_object_or_404(Note.objects.filter(contact=contact), pk=note_id)
    _toast_outcome(
        request,
        lambda: services.note_complete(note=note, actor=request.user),
        success=_("Follow-up marked done."),
    )
    return _notes_response(request, contact)


# --- Consent ---------------------------------------------------------------------------------


@login_required
@require_POST
@permission_required("contacts.add_consentrecord", raise_exception=True)
def contact_consent(request: HttpRequest, pk: int) -> HttpResponse:
    contact = _get_contact(request, pk)
    form = _submit(
        request,
        ConsentForm(request.POST),
        lambda data: services.consent_record(
            contact=contact,
            channel=data["channel"],
            purpose=data["purpose"],
            granted=data["granted"],
            source=data["source"],
            notice_version=data["notice_version"],
            evidence={"note": data["evidence"]} if data["evidence"] else None,
            actor=request.user,
        ),
        success=_consent_toast,
        failure=_("The consent was not recorded: %(errors)s"),
    )
    return redirect_or_fragment(
        request,
        to=_detail_url(contact) + "#contact-consent",
        template=DETAIL_TEMPLATE,
        fragment="contact-consent",
        context=_consent_context(contact, form),
    )


def _consent_toast(data: dict) -> str:
    """What the consent form recorded: a grant or a withdrawal, for which channel and purpose."""
    names = {
        "channel": dict(ConsentChannel.choices).get(data["channel"], data["channel"]),
        "purpose": dict(ConsentPurpose.choices).get(data["purpose"], data["purpose"]),
    }
    if data["granted"]:
        return _("Consent granted: %(channel)s · %(purpose)s.") % names
    return _("Consent withdrawn: %(channel)s · %(purpose)s.") % names


# --- Manual merge and undo -------------------------------------------------------------------


@login_required
@permission_required("contacts.merge_contact", raise_exception=True)
def contact_merge_search(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        contact = _get_contact(request, pk)
    except Http404:
        if gone := _merged_away(request, [pk]):
            return gone
        raise
    query = request.GET.get("q", "")
    context = {
        "contact": contact,
        "query": query,
        "candidates": selectors.contact_merge_candidates(
            user=request.user, contact=contact, query=query
        ),
    }
    return render_page(request, "contacts/contact_merge.html", context, fragment="merge-candidates")


@login_required
@permission_required("contacts.merge_contact", raise_exception=True)
def contact_merge_preview(request: HttpRequest, pk: int, other_pk: int) -> HttpResponse:
    try:
        survivor = _get_contact(request, pk)
        duplicate = _get_contact(request, other_pk)
    except Http404:
        # Back from the page a merge led to, or the button pressed twice: the merge is done.
        if gone := _merged_away(request, [other_pk, pk]):
            return gone
        raise
    if survivor.pk == duplicate.pk:
        messages.error(request, _("A contact cannot be merged with itself."))
        return redirect("contacts:merge", pk=survivor.pk)
    if request.method == "POST":
        try:
            record = services.contact_merge(
                survivor=survivor,
                duplicate=duplicate,
                actor=request.user,
                reason="manual",
                ip=request_ip(request),
            )
        except DomainError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, _merged_message(request, record, duplicate))
            return redirect(_detail_url(survivor))
    context = {
        "survivor": survivor,
        "duplicate": duplicate,
        "preview": selectors.contact_merge_preview(survivor=survivor, duplicate=duplicate),
        "blocked": bool(services.merge_blocked_with(contact_id=survivor.pk, others=[duplicate.pk])),
    }
    return render_page(request, "contacts/contact_merge_preview.html", context)


def _merged_away(request: HttpRequest, pks: list[int]) -> HttpResponse | None:
    """For the first of `pks` that was merged into a contact the user sees: to that
    contact's merges (where the merge can be undone), saying so. None when none was."""
    for pk in pks:
        survivor = selectors.contact_merged_into_visible(user=request.user, pk=pk)
        if survivor is None:
            continue  # not merged away, or into a contact the user may not see
        merged = Contact.objects.get(pk=pk)
        messages.info(
            request,
            _(
                "“%(duplicate)s” was already merged into “%(survivor)s”. To undo the merge, "
                "use “%(undo)s” under “%(merges)s” on this page."
            )
            % {
                "duplicate": contact_ref(merged),
                "survivor": contact_ref(survivor),
                "undo": _("Undo merge"),
                "merges": _("Merged contacts"),
            },
        )
        return redirect(_detail_url(survivor) + "#contact-merges")
    return None


def _merged_message(request: HttpRequest, record, duplicate: Contact) -> str:
    """A toast that carries its own undo button (a plain POST form, works without JS)."""
    return format_html(
        '{} <form class="inline-form" method="post" action="{}">'
        '<input type="hidden" name="csrfmiddlewaretoken" value="{}">'
        '<button type="submit" class="link-button">{}</button></form>',
        _("“%(name)s” was merged into this contact.") % {"name": contact_ref(duplicate)},
        reverse("contacts:merge_undo", args=[record.pk]),
        get_token(request),
        _("Undo"),
    )


@login_required
@require_POST
@permission_required("contacts.merge_contact", raise_exception=True)
def contact_merge_undo(request: HttpRequest, record_id: int) -> HttpResponse:
    record = get_object_or_404(selectors.merge_record_visible_to(user=request.user), pk=record_id)
    _toast_outcome(
        request,
        lambda: services.contact_merge_undo(
            record=record, actor=request.user, ip=request_ip(request)
        ),
        success=_("Merge undone: “%(name)s” is a separate contact again.")
        % {"name": record.duplicate.display_name},
    )
    return _merges_response(request, record.survivor)


@login_required
@require_POST
@permission_required("contacts.merge_contact", raise_exception=True)
def contact_merge_block(request: HttpRequest, pk: int, other_pk: int) -> HttpResponse:
    """Mark two contacts as different people: neither identify nor an operator merges them."""
    contact, other = _get_contact(request, pk), _get_contact(request, other_pk)
    _toast_outcome(
        request,
        lambda: services.merge_block_add(
            contact=contact, other=other, actor=request.user, ip=request_ip(request)
        ),
        success=_("“%(name)s” is marked as not the same person; the two will not be merged.")
        % {"name": other.display_name},
    )
    return _merges_response(request, contact)


@login_required
@require_POST
@permission_required("contacts.merge_contact", raise_exception=True)
def contact_merge_unblock(request: HttpRequest, pk: int, other_pk: int) -> HttpResponse:
    contact, other = _get_contact(request, pk), _get_contact(request, other_pk)
    if services.merge_block_remove(
        contact=contact, other=other, actor=request.user, ip=request_ip(request)
    ):
        messages.success(
            request,
            _("“%(name)s” may be merged with this contact again.") % {"name": other.display_name},
        )
    else:
        messages.info(request, _("The two contacts were not marked as different people."))
    if request.POST.get("then") == "merge":
        return redirect("contacts:merge_preview", pk=contact.pk, other_pk=other.pk)
    return _merges_response(request, contact)


def _merges_response(request: HttpRequest, contact: Contact) -> HttpResponse:
    """After a merge, undo or block: the merges region for htmx, the 360 page otherwise."""
    return redirect_or_fragment(
        request,
        to=_detail_url(contact) + "#contact-merges",
        template=DETAIL_TEMPLATE,
        fragment="contact-merges",
        context=_merges_context(contact),
    )


def _tags_response(request: HttpRequest, contact: Contact) -> HttpResponse:
    """After a tag change: the tags region for htmx, the 360 page otherwise."""
    return redirect_or_fragment(
        request,
        to=_detail_url(contact),
        template=DETAIL_TEMPLATE,
        fragment="contact-tags",
        context=_tags_context(contact),
    )


def _notes_response(
    request: HttpRequest, contact: Contact, form: NoteForm | None = None
) -> HttpResponse:
    """After a note change: the notes region for htmx, the 360 page's notes otherwise."""
    return redirect_or_fragment(
        request,
        to=_detail_url(contact) + "#contact-notes",
        template=DETAIL_TEMPLATE,
        fragment="contact-notes",
        context=_notes_context(contact, form),
    )


# --- Personal data requests (PIPL) -----------------------------------------------------------

ERASE_TEMPLATE = "contacts/contact_erase.html"
ERASURES_TEMPLATE = "contacts/erasures.html"
ERASURES_PAGE_SIZE = 50
COPY_PERMISSIONS = (pii.PERSONAL_DATA_PERMISSION, "contacts.export_contact")
ERASURE_VIEW_PERMISSION = "contacts.view_erasure"


def _data_rights(user: AbstractBaseUser) -> dict[str, bool]:
    """Which of a person's requests the user may answer from the 360 page. Never store
    staff: the requests concern the whole brand's data, not one store's relationship."""
    if not user.is_superuser and roles.is_store_staff(user):
        return {"copy": False, "erase": False, "log": False}
    erase = user.has_perm(roles.ERASE_PERMISSION)
    return {
        "copy": user.has_perms(COPY_PERMISSIONS),
        "erase": erase,
        "log": erase or user.has_perm(ERASURE_VIEW_PERMISSION),
    }


def _require_right(request: HttpRequest, right: str) -> None:
    if not _data_rights(request.user)[right]:
        raise PermissionDenied


@login_required
@require_POST
@never_cache
def contact_data_copy(request: HttpRequest, pk: int) -> HttpResponse:
    """A copy of everything stored about the person, unmasked, as a JSON file; audit-logged.
    A POST, like unmasking: a link prefetched or followed by a crawler must not log a copy."""
    _require_right(request, "copy")
    contact = _get_contact(request, pk)
    try:
        data = personal_data.contact_personal_data(contact=contact)
    except NotFound:  # erased since the line above
        if gone := _already_erased(request, pk):
            return gone
        raise Http404 from None
    audit_log(
        actor=request.user,
        action="contact.data_copy",
        obj=contact,
        # Ids only: the entry outlives an erasure of the person.
        details={"contacts": data["contact_ids"]},
        request=request,
    )
    response = HttpResponse(
        personal_data.personal_data_file(data), content_type="application/json; charset=utf-8"
    )
    filename = personal_data.personal_data_filename(data)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


class ErasureForm(forms.Form):
    reference = forms.CharField(
        label=gettext_lazy("Request reference"),
        max_length=100,
        required=False,
        help_text=gettext_lazy(
            "Your own number for the request (a ticket or letter), to answer the person later. "
            "Do not enter personal data here: it is kept after the erasure."
        ),
    )
    confirm = forms.CharField(label=gettext_lazy("Confirmation"), max_length=30)

    def __init__(self, data: QueryDict | None = None, *, contact: Contact) -> None:
        super().__init__(data)
        self.contact = contact
        self.fields["confirm"].help_text = _("Type the contact's id, %(id)s, to confirm.") % {
            "id": contact.pk
        }

    def clean_confirm(self) -> str:
        value = self.cleaned_data["confirm"].strip().lstrip("#").strip()
        if value != str(self.contact.pk):
            raise forms.ValidationError(
                _("This is not the contact's id (%(id)s); nothing was erased.")
                % {"id": self.contact.pk},
                code="mismatch",
            )
        return value


@login_required
def contact_erase_confirm(request: HttpRequest, pk: int) -> HttpResponse:
    """Explain what an erasure deletes and keeps, and erase the person once confirmed."""
    _require_right(request, "erase")
    try:
        contact = _get_contact(request, pk)
    except Http404:
        if gone := _already_erased(request, pk) or _erase_survivor(request, pk):
            return gone
        raise
    form = ErasureForm(request.POST if request.method == "POST" else None, contact=contact)
    if request.method == "POST" and form.is_valid():
        try:
            erasure = services.contact_erase(
                contact=contact,
                source=ErasureSource.OPERATOR,
                actor=request.user,
                reference=form.cleaned_data["reference"],
                ip=request_ip(request),
            )
        except NotFound:
            # Erased (or merged and erased) by someone else since the page was loaded.
            if gone := _already_erased(request, pk):
                return gone
            raise Http404 from None
        except DomainError as exc:  # ErasureContended: nothing was erased, the form stays
            messages.error(request, exc.message)
        else:
            messages.success(
                request,
                _(
                    "The personal data of contact %(contact)s was erased (erasure record "
                    "%(erasure)s)."
                )
                % {"contact": f"#{contact.pk}", "erasure": f"#{erasure.pk}"},
            )
            return redirect("contacts:erasures")
    context = {
        "contact": contact,
        "form": form,
        "family": [pk for pk in personal_data.contact_family(contact=contact) if pk != contact.pk],
    }
    return render_page(request, ERASE_TEMPLATE, context)


def _already_erased(request: HttpRequest, pk: int) -> HttpResponse | None:
    """For a contact that was erased, to the erasure log saying which erasure did it (for
    users who may see the log); None otherwise."""
    if not _data_rights(request.user)["log"]:
        return None
    erasure = services.erasure_of_contact(contact_id=pk)
    if erasure is None:
        return None
    messages.info(
        request,
        _("Contact %(contact)s was already erased on %(date)s (erasure record %(erasure)s).")
        % {
            "contact": f"#{pk}",
            "date": f"{timezone.localtime(erasure.created_at):%Y-%m-%d %H:%M}",
            "erasure": f"#{erasure.pk}",
        },
    )
    return redirect(reverse("contacts:erasures") + f"#erasure-{erasure.pk}")


def _erase_survivor(request: HttpRequest, pk: int) -> HttpResponse | None:
    """A merged-away contact is erased with the contact it was merged into: to that one."""
    survivor = selectors.contact_merged_into_visible(user=request.user, pk=pk)
    if survivor is None:
        return None
    messages.info(
        request,
        _("Contact %(merged)s was merged into “%(survivor)s”: erasing it erases both.")
        % {"merged": f"#{pk}", "survivor": contact_ref(survivor)},
    )
    return redirect("contacts:erase", pk=survivor.pk)


@login_required
def erasure_list(request: HttpRequest) -> HttpResponse:
    """The erasures done at people's requests, newest first: ids, who, when, counts."""
    _require_right(request, "log")
    page = keyset_page(
        personal_data.erasures_recorded(), after=request.GET.get("after"), size=ERASURES_PAGE_SIZE
    )
    page.items = [_erasure_row(erasure) for erasure in page.items]
    return render_page(request, ERASURES_TEMPLATE, {"page": page}, fragment="erasure-table")


def _erasure_row(erasure: Erasure) -> dict:
    summary = erasure.summary if isinstance(erasure.summary, dict) else {}
    return {
        "erasure": erasure,
        "contact_ids": sorted(row.contact_id for row in erasure.contacts.all()),
        "total": sum(n for n in summary.values() if isinstance(n, int)),
        "counts": [(_model_label(label), count) for label, count in sorted(summary.items())],
    }


def _model_label(label: str) -> str:
    """A summary key ("contacts.event") as the model's name ("events"), if it still exists."""
    try:
        model = apps.get_model(label)
    except (LookupError, ValueError):
        return label
    return str(model._meta.verbose_name_plural)


# --- My follow-ups ---------------------------------------------------------------------------

FOLLOW_UPS_TEMPLATE = "contacts/followups.html"
FOLLOW_UPS_PAGE_SIZE = 50
# Bucket counts stop here ("99+"): an old backlog is not worth counting on every page view.
FOLLOW_UP_COUNT_CAP = 99
# The list's own parameters, kept when the done button sends a browser without htmx back.
FOLLOW_UP_PARAMS = ("bucket", "staff", "after")
EVERYONE = "all"


class FollowUpFilterForm(forms.Form):
    bucket = forms.ChoiceField(
        label=pgettext_lazy("follow-up", "Due"),
        required=False,
        choices=[
            (selectors.FOLLOW_UP_OPEN, gettext_lazy("All open")),
            (selectors.FOLLOW_UP_OVERDUE, gettext_lazy("Overdue")),
            (selectors.FOLLOW_UP_TODAY, gettext_lazy("Due today")),
            (selectors.FOLLOW_UP_UPCOMING, gettext_lazy("Next 7 days")),
        ],
    )
    staff = forms.ChoiceField(label=gettext_lazy("Whose"), required=False)

    def __init__(self, data: QueryDict, *, user: AbstractBaseUser, can_see_others: bool) -> None:
        super().__init__(data)
        self.user = user
        if can_see_others:
            self.fields["staff"].choices = [
                ("", _("Mine")),
                (EVERYONE, _("Everyone")),
                *(
                    (str(pk), username)
                    for pk, username in selectors.staff_users()
                    .exclude(pk=user.pk)
                    .values_list("pk", "username")
                ),
            ]
        else:
            del self.fields["staff"]

    def bucket_value(self) -> str:
        """The chosen bucket; a missing or unknown one means every open follow-up."""
        self.is_valid()  # an invalid value of one field leaves the other's in cleaned_data
        return self.cleaned_data.get("bucket") or selectors.FOLLOW_UP_OPEN

    def staff_id(self) -> int | None:
        """Whose follow-ups to list: the user's own unless another (or everyone, None) is picked."""
        if "staff" not in self.fields:
            return self.user.pk
        self.is_valid()
        value = self.cleaned_data.get("staff")
        if value == EVERYONE:
            return None
        return parse_id(value) or self.user.pk


def _follow_up_scope(
    request: HttpRequest,
) -> tuple[FollowUpFilterForm, QuerySet[Note], selectors.FollowUpBounds]:
    """The list's filter form, the open follow-ups it scopes to, and the bucket bounds."""
    can_see_others = selectors.follow_ups_can_see_others(user=request.user)
    form = FollowUpFilterForm(request.GET, user=request.user, can_see_others=can_see_others)
    open_qs = selectors.follow_ups_open(user=request.user, staff_id=form.staff_id())
    return form, open_qs, selectors.follow_up_bounds()


def _follow_up_counts_context(open_qs: QuerySet[Note], bounds: selectors.FollowUpBounds) -> dict:
    counts = selectors.follow_ups_due_counts(qs=open_qs, bounds=bounds, cap=FOLLOW_UP_COUNT_CAP)
    return {
        "counts": {
            bucket: f"{FOLLOW_UP_COUNT_CAP}+" if n > FOLLOW_UP_COUNT_CAP else str(n)
            for bucket, n in counts.items()
        }
    }


@login_required
@permission_required("contacts.view_note", raise_exception=True)
def follow_up_list(request: HttpRequest) -> HttpResponse:
    """The follow-ups due for the user (or, for admins and operators, anyone), soonest first."""
    form, open_qs, bounds = _follow_up_scope(request)
    bucket = form.bucket_value()
    context = {
        **_follow_up_counts_context(open_qs, bounds),
        "form": form,
        "bucket": bucket,
        "page": selectors.follow_ups_page(
            qs=selectors.follow_ups_in_bucket(qs=open_qs, bucket=bucket, bounds=bounds),
            bounds=bounds,
            after=request.GET.get("after"),
            size=FOLLOW_UPS_PAGE_SIZE,
        ),
    }
    return render_page(request, FOLLOW_UPS_TEMPLATE, context, fragment="follow-up-table")


@login_required
@require_POST
@permission_required("contacts.change_note", raise_exception=True)
def follow_up_done(request: HttpRequest, note_id: int) -> HttpResponse:
    """Mark a follow-up done from the list; posting again for a done one changes nothing."""
    note = get_object_or_404(
        selectors.note_visible_to(user=request.user).filter(follow_up_at__isnull=False),
        pk=note_id,
    )
    was_open = note.done_at is None
    services.note_complete(note=note, actor=request.user)
    if was_open:
        messages.success(request, _("Follow-up marked done."))
    else:
        messages.info(request, _("This follow-up was already done."))
    if is_fragment_request(request):
        _form, open_qs, bounds = _follow_up_scope(request)
        row = selectors.follow_up_row(user=request.user, note_id=note.pk, bounds=bounds)
        response = render_page(request, FOLLOW_UPS_TEMPLATE, {"row": row}, fragment="follow-up-row")
        # The overdue / today counters above the table changed too: refresh them out of band.
        response.content += render_to_string(
            f"{FOLLOW_UPS_TEMPLATE}#follow-up-counts",
            {**_follow_up_counts_context(open_qs, bounds), "oob": True},
            request=request,
        ).encode(response.charset)
        return response
    params = {k: request.GET[k] for k in FOLLOW_UP_PARAMS if request.GET.get(k)}
    back = reverse("contacts:followups")
    return redirect(back + "?" + urlencode(params) if params else back)
