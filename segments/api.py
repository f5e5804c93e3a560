from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from contacts.models import Contact
from contacts.selectors import contact_follow_merges
from core.api import ErrorSerializer, QueryIntegerField, WholeNumberField
from core.apiviews import BaseApiView
from core.ids import MAX_ID
from core.pagination import keyset_page
from segments import selectors, services
from segments.models import Segment, SegmentKind

# One call changes at most this many members: a static list of any size is built in calls of
# this size, and no single request holds its transaction open for long.
MAX_IDS = 1000
LIST_PAGE_SIZE = 100
NOT_FOUND = {404: ErrorSerializer, 401: ErrorSerializer, 429: ErrorSerializer}
ERRORS = {400: ErrorSerializer, **NOT_FOUND}
BODY_ERRORS = {**ERRORS, 413: ErrorSerializer}


class SegmentListQuerySerializer(serializers.Serializer):
    after = QueryIntegerField(
        required=False,
        min_value=1,
        max_value=MAX_ID,
        help_text="`next_after` of the previous page; an empty one is refused.",
    )
    kind = serializers.ChoiceField(
        choices=SegmentKind.choices,
        required=False,
        # `?kind=` is the same as leaving it out, as a form sending an empty filter gives it.
        allow_blank=True,
        help_text=(
            "Only segments of this kind: `dynamic` (rule-based) or `static` (a list); empty is "
            "the same as leaving it out."
        ),
    )


class SegmentOutSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.ChoiceField(
        choices=SegmentKind.choices, help_text="`dynamic` (rule-based) or `static` (a list)."
    )
    member_count = serializers.IntegerField()
    last_refreshed_at = serializers.DateTimeField(
        allow_null=True,
        help_text=(
            "A dynamic segment: when its members were last worked out from its rule. A static "
            "list: when members were last added or removed (the UI's “members updated”). Null "
            "before the first time."
        ),
    )


class SegmentPageSerializer(serializers.Serializer):
    results = SegmentOutSerializer(many=True)
    next_after = serializers.IntegerField(
        allow_null=True, help_text="Pass as `after` for the next page; null on the last page."
    )


class ContactSegmentSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="segment_id")
    name = serializers.CharField(source="segment.name")
    kind = serializers.CharField(source="segment.kind")
    entered_at = serializers.DateTimeField()


class MembershipOutSerializer(serializers.Serializer):
    member = serializers.BooleanField()
    entered_at = serializers.DateTimeField(
        allow_null=True, help_text="When the contact entered; null when not a member."
    )


class MembersInSerializer(serializers.Serializer):
    # JSON numbers only: "42" or 42.0 is refused, as a wrong JSON type is everywhere in the API.
    contact_ids = serializers.ListField(
        child=WholeNumberField(min_value=1, max_value=MAX_ID),
        allow_empty=False,
        min_length=1,
        max_length=MAX_IDS,
        help_text=f"Contact ids, at most {MAX_IDS} per call.",
    )


class MembersQuerySerializer(serializers.Serializer):
    """The ids of a DELETE sent in the query string (`?contact_ids=42&contact_ids=57`), which
    writes them as text."""

    contact_ids = serializers.ListField(
        child=QueryIntegerField(min_value=1, max_value=MAX_ID),
        allow_empty=False,
        min_length=1,
        max_length=MAX_IDS,
    )


class MembersOutSerializer(serializers.Serializer):
    changed = serializers.IntegerField(
        help_text="How many were added (POST) or removed (DELETE); repeats change nothing."
    )
    member_count = serializers.IntegerField()


SEGMENT_EXAMPLE = {
    "id": 7,
    "name": "上海高价值客户",
    "kind": "dynamic",
    "member_count": 1284,
    "last_refreshed_at": "2026-11-26T10:15:00+08:00",
}


def _segment(segment_id: int) -> Segment:
    return get_object_or_404(Segment.objects.filter(is_archived=False), pk=segment_id)


def _contact(contact_id: int) -> Contact:
    return contact_follow_merges(contact=get_object_or_404(Contact, pk=contact_id))


def _ids(request: Request) -> list[int]:
    """The contact ids of a members call: the JSON body, or `contact_ids` query parameters
    (some proxies drop the body of a DELETE)."""
    data, serializer = request.data, MembersInSerializer
    if not data and "contact_ids" in request.query_params:
        data, serializer = request.query_params, MembersQuerySerializer
    checked = serializer(data=data)
    checked.is_valid(raise_exception=True)
    return checked.validated_data["contact_ids"]


class SegmentListApi(BaseApiView):
    @extend_schema(
        operation_id="segments_list",
        summary="Active segments and static lists",
        description=(
            "An unknown `kind` or a malformed or empty `after` answers 400: a filter or cursor "
            "that was silently ignored would answer every segment, or the first page again. An "
            "empty `kind` is the same as leaving it out."
        ),
        parameters=[SegmentListQuerySerializer],
        responses={
            200: SegmentPageSerializer,
            400: ErrorSerializer,
            401: ErrorSerializer,
            429: ErrorSerializer,
        },
        examples=[
            OpenApiExample(
                "A page",
                response_only=True,
                value={"results": [SEGMENT_EXAMPLE], "next_after": None},
            )
        ],
    )
    def get(self, request: Request) -> Response:
        query = SegmentListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        qs = selectors.segment_list()
        if kind := query.validated_data.get("kind"):
            qs = qs.filter(kind=kind)
        page = keyset_page(qs, after=query.validated_data.get("after"), size=LIST_PAGE_SIZE)
        body = {"results": page.items, "next_after": page.next_after}
        return Response(SegmentPageSerializer(body).data)


class ContactSegmentsApi(BaseApiView):
    @extend_schema(
        operation_id="contact_segments",
        summary="The segments a contact is in, with entry times",
        description=(
            "The active segments and static lists the contact is a member of, by name, with "
            "when the contact entered each; an empty list when none. Answers from the "
            "materialised membership, as fresh as each segment's last refresh. A merged-away id "
            "answers for the contact that absorbed it."
        ),
        responses={200: ContactSegmentSerializer(many=True), **NOT_FOUND},
        examples=[
            OpenApiExample(
                "Segments",
                response_only=True,
                # One item: drf-spectacular wraps the example of a list answer in a list itself.
                value={
                    "id": 7,
                    "name": "上海高价值客户",
                    "kind": "dynamic",
                    "entered_at": "2026-11-20T09:00:00+08:00",
                },
            )
        ],
    )
    def get(self, request: Request, contact_id: int) -> Response:
        contact = _contact(contact_id)
        rows = selectors.segments_for_contact(contact=contact).filter(segment__is_archived=False)
        return Response(ContactSegmentSerializer(rows.order_by("segment__name"), many=True).data)


class SegmentMemberApi(BaseApiView):
    @extend_schema(
        operation_id="segment_member_check",
        summary="Is this contact in the segment? (for personalisation)",
        description=(
            "Answers from the materialised membership, so it is as fresh as the segment's last "
            "refresh (changed contacts are re-evaluated within about a minute)."
        ),
        responses={200: MembershipOutSerializer, **NOT_FOUND},
        examples=[
            OpenApiExample(
                "A member",
                response_only=True,
                value={"member": True, "entered_at": "2026-11-20T09:00:00+08:00"},
            ),
            OpenApiExample(
                "Not a member", response_only=True, value={"member": False, "entered_at": None}
            ),
        ],
    )
    def get(self, request: Request, segment_id: int, contact_id: int) -> Response:
        segment = _segment(segment_id)
        contact = _contact(contact_id)
        membership = selectors.segment_membership_of(segment=segment, contact_id=contact.pk)
        body = {
            "member": membership is not None,
            "entered_at": membership.entered_at if membership else None,
        }
        return Response(MembershipOutSerializer(body).data)


MEMBERS_DESCRIPTION = (
    "Only for static lists: a rule-based segment answers 400 `not_static`. Unknown or "
    "merged-away contact ids answer 400 `unknown_contact` with the ids in `details` and change "
    f"nothing. At most {MAX_IDS} ids per call. Safe to retry."
)


class SegmentMembersApi(BaseApiView):
    @extend_schema(
        operation_id="segment_members_add",
        summary="Add contacts to a static list",
        description=MEMBERS_DESCRIPTION,
        request=MembersInSerializer,
        responses={200: MembersOutSerializer, **BODY_ERRORS},
        examples=[
            OpenApiExample("Contacts", request_only=True, value={"contact_ids": [42, 57]}),
            OpenApiExample("Answer", response_only=True, value={"changed": 2, "member_count": 310}),
            OpenApiExample(
                "A rule-based segment",
                response_only=True,
                status_codes=["400"],
                value={
                    "error": {
                        "code": "not_static",
                        "message": "Members can be added or removed by hand only in a static list.",
                        "details": None,
                    }
                },
            ),
        ],
    )
    def post(self, request: Request, segment_id: int) -> Response:
        segment = _segment(segment_id)
        changed = services.segment_static_add(segment=segment, contact_ids=_ids(request))
        return Response({"changed": changed, "member_count": segment.member_count})

    @extend_schema(
        operation_id="segment_members_remove",
        summary="Remove contacts from a static list",
        description=(
            MEMBERS_DESCRIPTION
            + ' Send the same JSON body as for adding, `{"contact_ids": [42, 57]}`, or repeat '
            "`contact_ids` in the query: `?contact_ids=42&contact_ids=57`. (OpenAPI 3.0 gives a "
            "DELETE no request body, so the body form is described here.)"
        ),
        parameters=[
            OpenApiParameter(
                "contact_ids",
                {
                    "type": "array",
                    "items": {
                        "type": "integer",
                        "format": "int64",
                        "minimum": 1,
                        "maximum": MAX_ID,
                    },
                    "minItems": 1,
                    "maxItems": MAX_IDS,
                },
                # Required in the form OpenAPI can describe; the body form is in the description.
                required=True,
                description="Contact ids, when the body cannot be sent.",
                examples=[
                    OpenApiExample(
                        "Two contacts",
                        description="Sent as ?contact_ids=42&contact_ids=57.",
                        value=[42, 57],
                    )
                ],
            )
        ],
        # Its body is read like a POST's, so a body that is not JSON answers 415 here too.
        responses={200: MembersOutSerializer, **BODY_ERRORS, 415: ErrorSerializer},
        examples=[
            OpenApiExample("Answer", response_only=True, value={"changed": 1, "member_count": 309}),
            OpenApiExample(
                "Unknown contacts",
                description="Nothing is removed when one id is unknown or merged away.",
                response_only=True,
                status_codes=["400"],
                value={
                    "error": {
                        "code": "unknown_contact",
                        "message": "Unknown contacts: [99999]",
                        "details": {"contact_ids": [99999]},
                    }
                },
            ),
        ],
    )
    def delete(self, request: Request, segment_id: int) -> Response:
        segment = _segment(segment_id)
        changed = services.segment_static_remove(segment=segment, contact_ids=_ids(request))
        return Response({"changed": changed, "member_count": segment.member_count})
