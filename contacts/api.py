from django.shortcuts import get_object_or_404
from django.utils import timezone
from django.utils.translation import gettext, gettext_lazy
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
)
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from contacts import selectors, services
from contacts.models import (
    PROFILE_COLUMNS,
    ConsentChannel,
    ConsentPurpose,
    Contact,
    Erasure,
    ErasureSource,
    Gender,
    IdentityKind,
    TagSource,
)
from contacts.personal_data import contact_personal_data
from contacts.services.consent import MAX_REQUEST_ID, consent_request_id
from contacts.services.ingest import events_batch_check
from core.api import (
    ApiJSONParser,
    ErrorSerializer,
    QueryIntegerField,
    Rfc3339DateTimeField,
    WholeNumberField,
    error_response,
    json_problem,
    replace_lone_surrogates,
)
from core.apiviews import BaseApiView
from core.audit import audit_log, request_ip
from core.errors import DomainError, NotFound
from core.ids import MAX_ID

ERRORS = {400: ErrorSerializer, 401: ErrorSerializer, 413: ErrorSerializer, 429: ErrorSerializer}


def _validated(serializer: type[serializers.Serializer], data) -> dict:
    """The validated request body or query; invalid input answers 400 with the field errors."""
    checked = serializer(data=data)
    checked.is_valid(raise_exception=True)
    return checked.validated_data


class OffsetDateTimeField(serializers.DateTimeField):
    """A moment sent with its UTC offset (`+08:00`, or `Z`); a bare local time is refused.

    A time without an offset would be read in the server's time zone, which the sender may not
    share: a client in UTC would have its events stored eight hours off, with no error to see.
    """

    default_error_messages = {
        "no_offset": gettext_lazy(
            "Give the time with its UTC offset, like 2026-11-26T10:15:00+08:00 "
            "(or Z for UTC); a time without one is ambiguous."
        ),
    }

    def to_internal_value(self, value):
        # Python's ISO parser stops reading at a NUL, so "…+08:00\x00" would pass as a time;
        # any other character there makes it fail with the usual message.
        if isinstance(value, str):
            value = value.replace("\x00", "\ufffd")
        return super().to_internal_value(value)

    def enforce_timezone(self, value):
        if timezone.is_naive(value):
            self.fail("no_offset")
        return super().enforce_timezone(value)


class TextField(serializers.CharField):
    """Text, and only text: a number is refused rather than turned into text (DRF's CharField
    makes `0` "0", and `1e400`, parsed as infinity, "inf")."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class IdentityInSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=IdentityKind.choices)
    app_id = TextField(
        max_length=64,
        required=False,
        allow_blank=True,
        default="",
        help_text=(
            "Required for `miniprogram_openid`, `wechat_openid` (the AppID) and "
            "`wecom_external_userid` (the corp id); optional for `external_id` (your system's "
            "name); refused for `wechat_unionid`, `phone`, `email` and `anonymous_id`, which "
            "take none (`invalid_identity`)."
        ),
    )
    value = TextField(max_length=191)

    def to_internal_value(self, data):
        return services.IdentityInput(**super().to_internal_value(data))


class IdentifyInSerializer(serializers.Serializer):
    # A ListField rather than many=True: the schema then carries minItems and maxItems.
    identities = serializers.ListField(
        child=IdentityInSerializer(), allow_empty=False, min_length=1, max_length=20
    )
    traits = serializers.DictField(
        required=False,
        default=dict,
        help_text=(
            "Checked like a `PATCH` of the contact: the profile fields it lists, plus `source` "
            "and `channel_code`, go to their own fields (with the same types and lengths), the "
            "keys of active custom fields to `attributes`. Any other key is refused with "
            "`unknown_trait`, a wrong type or length with `invalid_trait` (a custom field's "
            "with `invalid_custom_field`, a phone or email with `invalid_phone` / "
            "`invalid_email`); a refused call stores nothing."
        ),
    )


class IdentifyOutSerializer(serializers.Serializer):
    contact_id = serializers.IntegerField()
    created = serializers.BooleanField()
    merged = serializers.ListField(
        child=serializers.IntegerField(),
        help_text=(
            "Contacts merged into this one during the call, because a strong identity "
            "(unionid, phone, external_id, email by default) linked them."
        ),
    )
    conflicts = serializers.ListField(
        child=serializers.IntegerField(),
        help_text=(
            "Other contacts the identities point to that were not merged: only weak identities "
            "(openids, anonymous_id) link them, or an operator marked them as not the same "
            "person (for example by undoing a merge). In the latter case the call's new "
            "identities and traits are not stored, since they may belong to either person."
        ),
    )
    previously_erased = serializers.BooleanField(
        help_text=(
            "True when the new contact's identities were those of a person erased at their "
            "request (POST /api/v1/erasures) who has now come back by themselves: they start "
            "as a new customer, with no history and no consent; ask for consent again."
        ),
    )


class IdentifyApi(BaseApiView):
    @extend_schema(
        operation_id="identify",
        summary="Create or update a contact from identities and traits",
        description=(
            "Finds the contact the identities point to (or creates one: 201), attaches the "
            "identities it did not have and applies the traits. Contacts that a strong identity "
            "(unionid, phone, external_id, email by default) links are merged into the oldest "
            "(`merged`); contacts only weak identities link are listed in `conflicts` for an "
            "operator. An identity whose kind takes an `app_id` needs it (openids, WeCom "
            "external ids), one whose kind takes none refuses it (`invalid_identity`). A refused "
            "call stores nothing; a repeated call gives the same contact."
        ),
        request=IdentifyInSerializer,
        responses={200: IdentifyOutSerializer, 201: IdentifyOutSerializer, **ERRORS},
        examples=[
            OpenApiExample(
                "Mini-program login",
                request_only=True,
                value={
                    "identities": [
                        {"kind": "miniprogram_openid", "app_id": "wx1234", "value": "oAbc123"},
                        {"kind": "wechat_unionid", "value": "uXyz789"},
                    ],
                    "traits": {"nickname": "小林", "city": "上海", "phone": "13800138000"},
                },
            ),
            OpenApiExample(
                "Answer",
                response_only=True,
                value={
                    "contact_id": 42,
                    "created": True,
                    "merged": [],
                    "conflicts": [],
                    "previously_erased": False,
                },
            ),
            OpenApiExample(
                "Answer after a merge",
                description="The unionid linked an anonymous visitor's contact 57 to contact 42.",
                response_only=True,
                value={
                    "contact_id": 42,
                    "created": False,
                    "merged": [57],
                    "conflicts": [],
                    "previously_erased": False,
                },
            ),
            OpenApiExample(
                "Unknown trait",
                description="A key that is neither a profile field nor an active custom field.",
                response_only=True,
                status_codes=["400"],
                value={
                    "error": {
                        "code": "unknown_trait",
                        "message": (
                            "Unknown trait 'shoe_size': send a profile field or the key of an "
                            "active custom field."
                        ),
                        "details": {"field": "shoe_size"},
                    }
                },
            ),
            OpenApiExample(
                "Answer for a never-merge pair",
                description=(
                    "The unionid points to contact 42 and the phone to contact 57, which an "
                    "operator marked as a different person: nothing is merged or stored."
                ),
                response_only=True,
                value={
                    "contact_id": 42,
                    "created": False,
                    "merged": [],
                    "conflicts": [57],
                    "previously_erased": False,
                },
            ),
        ],
    )
    def post(self, request: Request) -> Response:
        data = _validated(IdentifyInSerializer, request.data)
        result = services.identify(
            identities=data["identities"],
            traits=data["traits"],
            source="api",
            ip=request_ip(request),
        )
        body = IdentifyOutSerializer(
            {
                "contact_id": result.contact.pk,
                "created": result.created,
                "merged": result.merged,
                "conflicts": result.conflicts,
                "previously_erased": result.previously_erased,
            }
        ).data
        return Response(body, status=status.HTTP_201_CREATED if result.created else 200)


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "format": "decimal", "pattern": r"^-?\d{0,12}(?:\.\d{0,2})?$"},
            {"type": "number"},
        ]
    }
)
class AmountField(serializers.DecimalField):
    """A decimal amount, sent as text ("299.00") or as a JSON number (299)."""


class EventInSerializer(serializers.Serializer):
    event_id = TextField(max_length=64)
    name = TextField(max_length=64)
    occurred_at = OffsetDateTimeField()
    contact_id = WholeNumberField(
        required=False,
        min_value=1,
        max_value=MAX_ID,
        help_text="Whose event it is; or send `identities` instead (not both).",
    )
    # A ListField rather than many=True: the schema then carries maxItems.
    identities = serializers.ListField(
        child=IdentityInSerializer(),
        required=False,
        max_length=20,
        help_text=(
            "Whose event it is, found or created as `identify` does; or send `contact_id` "
            "instead (not both)."
        ),
    )
    properties = serializers.DictField(required=False, default=dict)
    value = AmountField(
        max_digits=14,
        decimal_places=2,
        required=False,
        allow_null=True,
        help_text="Amount in yuan; a `purchase`'s must not be negative (send a `refund`).",
    )


@extend_schema_field(EventInSerializer)
class EventItemField(serializers.JSONField):
    """One event of a batch, taken as sent: the view validates each on its own."""

    def validate_empty_values(self, data):
        # A null item is one bad event like any other, rejected alone rather than the batch.
        if data is None:
            return (True, None)
        return super().validate_empty_values(data)

    def to_internal_value(self, data):
        # Not DRF's check that the item dumps as JSON: an item that does not (a number too
        # large for a float, 1e400) would refuse the whole batch, when the view rejects it
        # alone with its reason (json_problem).
        return data


class EventsInSerializer(serializers.Serializer):
    events = serializers.ListField(
        child=EventItemField(),
        allow_empty=False,
        min_length=1,
        max_length=services.MAX_EVENTS_PER_BATCH,
    )


class EventResultSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    event_id = serializers.CharField()
    status = serializers.ChoiceField(choices=["accepted", "duplicate", "rejected"])
    reason = serializers.CharField(allow_blank=True)


class EventsOutSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    rejected = serializers.IntegerField()
    results = EventResultSerializer(many=True)


def _first_error(errors) -> str:
    if isinstance(errors, dict):
        field, value = next(iter(errors.items()))
        return f"{field}: {_first_error(value)}"
    if isinstance(errors, list) and errors:
        return _first_error(errors[0])
    return str(errors)


def _raw_event_id(raw: object) -> str:
    # Echoed in the answer even for a rejected item, whose id may be text that UTF-8 cannot hold.
    return (
        replace_lone_surrogates(str(raw.get("event_id", ""))[:64]) if isinstance(raw, dict) else ""
    )


class EventsJSONParser(ApiJSONParser):
    """Text that is not valid Unicode, or a number too large for a float, rejects only the event
    holding it, like any bad value."""

    check_unicode = False
    check_numbers = False


class EventsApi(BaseApiView):
    parser_classes = [EventsJSONParser]

    @extend_schema(
        operation_id="events_record",
        summary="Record a batch of up to 500 events",
        description=(
            "Each item is validated on its own: a bad item is reported as `rejected` with a "
            "reason and never blocks the good ones; that includes an item holding text that is "
            "not valid Unicode (a lone surrogate such as `\\ud83d`, left by cutting a string "
            "through an emoji) or a number too large for a float (`1e400`), and an item sending "
            "both `contact_id` and `identities`. `event_id` is the client's idempotency key: "
            "resending an event reports it as `duplicate` and stores nothing. The batch as a "
            "whole is refused when it holds more than 500 events (400 `too_many`), its JSON "
            "nests deeper than 64 levels (400 `too_deep`) or its body is larger than the server "
            "accepts (413 `too_large`, 2.5 MB by default): send it in smaller batches."
        ),
        request=EventsInSerializer,
        responses={200: EventsOutSerializer, **ERRORS},
        examples=[
            OpenApiExample(
                "A purchase",
                request_only=True,
                value={
                    "events": [
                        {
                            "event_id": "order-20261126-0001",
                            "name": "purchase",
                            "occurred_at": "2026-11-26T10:15:00+08:00",
                            "identities": [{"kind": "wechat_unionid", "value": "uXyz789"}],
                            "properties": {"order_id": "20261126-0001", "sku": "A-30ML"},
                            "value": "299.00",
                        }
                    ]
                },
            ),
            OpenApiExample(
                "Answer",
                description=(
                    "Item 0 was stored, item 1 had been sent before, item 2 was refused with "
                    "its reason. Only a refused item needs fixing before it is sent again."
                ),
                response_only=True,
                status_codes=["200"],
                value={
                    "accepted": 1,
                    "duplicates": 1,
                    "rejected": 1,
                    "results": [
                        {
                            "index": 0,
                            "event_id": "order-20261126-0001",
                            "status": "accepted",
                            "reason": "",
                        },
                        {
                            "index": 1,
                            "event_id": "page-view-7f3c",
                            "status": "duplicate",
                            "reason": "",
                        },
                        {
                            "index": 2,
                            "event_id": "sign-in-20991126",
                            "status": "rejected",
                            "reason": "occurred_at is in the future.",
                        },
                    ],
                },
            ),
        ],
    )
    def post(self, request: Request) -> Response:
        sent = request.data.get("events") if isinstance(request.data, dict) else None
        if isinstance(sent, list):
            # Before the serializer, whose own length check would answer `invalid`, not the
            # documented `too_many`.
            events_batch_check(count=len(sent))
        events = _validated(EventsInSerializer, request.data)["events"]
        items: list[services.EventInput | None] = []
        parse_errors: dict[int, str] = {}
        # One serializer validates every item: building a serializer per item (DRF copies its
        # fields each time) cost most of the request time in bench/events_ingest.py.
        item_serializer = EventInSerializer()
        for index, raw in enumerate(events):
            if problem := json_problem(raw):
                parse_errors[index] = problem.message
                items.append(None)
                continue
            try:
                v = item_serializer.run_validation(raw)
            except serializers.ValidationError as exc:
                parse_errors[index] = _first_error(exc.detail)
                items.append(None)
                continue
            items.append(
                services.EventInput(
                    event_id=v["event_id"],
                    name=v["name"],
                    occurred_at=v["occurred_at"],
                    contact_id=v.get("contact_id"),
                    identities=v.get("identities") or [],
                    properties=v["properties"],
                    value=v.get("value"),
                    source="api",
                )
            )
        valid = [(i, item) for i, item in enumerate(items) if item is not None]
        outcomes = services.events_record(items=[item for _, item in valid], ip=request_ip(request))
        results = [
            {
                "index": i,
                "event_id": _raw_event_id(events[i]),
                "status": "rejected",
                "reason": reason,
            }
            for i, reason in parse_errors.items()
        ]
        for outcome in outcomes:
            results.append(
                {
                    "index": valid[outcome.index][0],
                    "event_id": outcome.event_id,
                    "status": outcome.status,
                    "reason": outcome.reason,
                }
            )
        results.sort(key=lambda r: r["index"])
        body = {
            "accepted": sum(r["status"] == "accepted" for r in results),
            "duplicates": sum(r["status"] == "duplicate" for r in results),
            "rejected": sum(r["status"] == "rejected" for r in results),
            "results": results,
        }
        return Response(EventsOutSerializer(body).data)


class IdentityOutSerializer(serializers.Serializer):
    kind = serializers.CharField()
    app_id = serializers.CharField()
    value = serializers.CharField()


class ContactOutSerializer(serializers.ModelSerializer):
    identities = IdentityOutSerializer(many=True)
    lifecycle_stage = serializers.CharField(source="lifecycle_stage_id")
    owner = serializers.IntegerField(source="owner_id", allow_null=True, help_text="User id.")
    store = serializers.SlugRelatedField(
        slug_field="code", read_only=True, allow_null=True, help_text="Code."
    )
    tags = serializers.SerializerMethodField()

    class Meta:
        model = Contact
        fields = [
            "id",
            *PROFILE_COLUMNS,
            "utm_source",
            "utm_medium",
            "utm_campaign",
            "utm_content",
            "utm_term",
            "lifecycle_stage",
            "owner",
            "store",
            "attributes",
            "identities",
            "tags",
            "created_at",
            "last_seen_at",
        ]

    def get_tags(self, contact: Contact) -> list[str]:
        return [str(ct.tag) for ct in contact.contact_tags.all()]


CONTACT_EXAMPLE = {
    "id": 42,
    "name": "林小雨",
    "nickname": "小林",
    "gender": "female",
    "birthday": "1992-03-04",
    "phone": "+8613800138000",
    "email": "lin@example.cn",
    "province": "上海",
    "city": "上海",
    "source": "api",
    "channel_code": "",
    "utm_source": "",
    "utm_medium": "",
    "utm_campaign": "double11",
    "utm_content": "",
    "utm_term": "",
    "lifecycle_stage": "first_purchase",
    "owner": 3,
    "store": "sh-jingan",
    "attributes": {"skin_type": "干性"},
    "identities": [
        {"kind": "miniprogram_openid", "app_id": "wx1234", "value": "oAbc123"},
        {"kind": "phone", "app_id": "", "value": "+8613800138000"},
    ],
    "tags": ["兴趣/护肤"],
    "created_at": "2026-11-26T10:15:00+08:00",
    "last_seen_at": "2026-11-26T10:16:30+08:00",
}
NOT_FOUND = {404: ErrorSerializer, 401: ErrorSerializer, 429: ErrorSerializer}
# What an operation on one contact may answer besides success.
CONTACT_ERRORS = {400: ErrorSerializer, **NOT_FOUND}
# … and one that reads a body, which may be too large.
CONTACT_BODY_ERRORS = {**CONTACT_ERRORS, 413: ErrorSerializer}
CONTACT_ANSWER = OpenApiExample("A contact", response_only=True, value=CONTACT_EXAMPLE)


def _contact(contact_id: int) -> Contact:
    """The contact with this id; a merged-away id answers with the contact that absorbed it."""
    contact = get_object_or_404(Contact, pk=contact_id)
    return selectors.contact_follow_merges(contact=contact)


def _contact_out(contact: Contact) -> dict:
    contact = (
        Contact.objects.select_related("store")
        .prefetch_related("identities", "contact_tags__tag__group")
        .get(pk=contact.pk)
    )
    return ContactOutSerializer(contact).data


def _clearable_text(max_length: int) -> serializers.CharField:
    return serializers.CharField(
        max_length=max_length, required=False, allow_blank=True, allow_null=True
    )


# What a PATCH takes to clear a field besides null: "" (drf-spectacular gives an EmailField that
# allows blank the same alternative).
_EMPTY_TEXT = {"type": "string", "maxLength": 0}


@extend_schema_field({"oneOf": [{"type": "string", "format": "date"}, _EMPTY_TEXT]})
class ClearableDateField(serializers.DateField):
    """A date in a PATCH, which `null` or "" clears."""


@extend_schema_field(
    {
        "oneOf": [
            {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_ID},
            _EMPTY_TEXT,
        ]
    }
)
class ClearableIdField(serializers.IntegerField):
    """An id in a PATCH, which `null` or "" clears."""


@extend_schema_field({"oneOf": [{"type": "integer", "minimum": 1}, {"type": "string"}]})
class StoreRefField(serializers.JSONField):
    """A store's id or code (checked by the profile service)."""


class ContactPatchSerializer(serializers.Serializer):
    """The fields a PATCH may change; custom fields are sent by their key next to them.

    Values are passed to the service unchanged so that each gets its own precise error (a
    number where text belongs is refused, not silently turned into text).
    """

    # What the schema shows; `null` or "" clears every field but `gender` and
    # `lifecycle_stage`.
    name = _clearable_text(100)
    nickname = _clearable_text(100)
    gender = serializers.ChoiceField(choices=Gender.choices, required=False)
    birthday = ClearableDateField(
        required=False, allow_null=True, help_text='`YYYY-MM-DD`; null or "" clears it.'
    )
    phone = serializers.CharField(
        required=False, allow_blank=True, allow_null=True, help_text="Stored as E.164."
    )
    email = serializers.EmailField(required=False, allow_blank=True, allow_null=True)
    province = _clearable_text(30)
    city = _clearable_text(30)
    lifecycle_stage = serializers.CharField(required=False, help_text="A stage key.")
    owner = ClearableIdField(
        required=False, allow_null=True, help_text='A user id; null or "" clears it.'
    )
    store = StoreRefField(
        required=False, allow_null=True, help_text='Store id or code; null or "" clears it.'
    )
    utm_source = _clearable_text(100)
    utm_medium = _clearable_text(100)
    utm_campaign = _clearable_text(100)
    utm_content = _clearable_text(100)
    utm_term = _clearable_text(100)

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                {"non_field_errors": [gettext("Send an object of field names and values.")]}
            )
        if not data:
            raise serializers.ValidationError(
                {"non_field_errors": [gettext("Send at least one field to change.")]}
            )
        return dict(data)


class ContactPatchSchema(OpenApiSerializerExtension):
    """The PATCH body as the view checks it: at least one field (an empty object is refused)."""

    target_class = ContactPatchSerializer

    def map_serializer(self, auto_schema, direction):
        schema = super().map_serializer(auto_schema, direction)
        return {**schema, "minProperties": 1}


class ContactDetailApi(BaseApiView):
    @extend_schema(
        operation_id="contact_get",
        summary="One contact with identities and tags",
        description="A contact that was merged into another answers with the survivor.",
        responses={200: ContactOutSerializer, **NOT_FOUND},
        examples=[CONTACT_ANSWER],
    )
    def get(self, request: Request, contact_id: int) -> Response:
        return Response(_contact_out(_contact(contact_id)))

    @extend_schema(
        operation_id="contact_update",
        summary="Change listed profile fields and custom fields",
        description=(
            "Only the listed fields and active custom fields (by key) may be sent; anything else "
            "is refused with `unknown_field`. Every value is checked before anything is stored: "
            "one bad value stores nothing. `null` or an empty string clears a field."
        ),
        request=ContactPatchSerializer,
        responses={200: ContactOutSerializer, **CONTACT_BODY_ERRORS},
        examples=[
            OpenApiExample(
                "Profile and a custom field",
                request_only=True,
                value={
                    "name": "林小雨",
                    "birthday": "1992-03-04",
                    "lifecycle_stage": "first_purchase",
                    "store": "sh-jingan",
                    "skin_type": "干性",
                },
            ),
            OpenApiExample(
                "Answer",
                description="The whole contact after the change.",
                response_only=True,
                status_codes=["200"],
                value=CONTACT_EXAMPLE,
            ),
            OpenApiExample(
                "Unknown field",
                response_only=True,
                status_codes=["400"],
                value={
                    "error": {
                        "code": "unknown_field",
                        "message": "Unknown field 'shoe_size'.",
                        "details": {"field": "shoe_size"},
                    }
                },
            ),
        ],
    )
    def patch(self, request: Request, contact_id: int) -> Response:
        contact = _contact(contact_id)
        data = _validated(ContactPatchSerializer, request.data)
        contact = services.contact_update(contact=contact, data=data, source="api")
        return Response(_contact_out(contact))


class LookupQuerySerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=IdentityKind.choices)
    value = serializers.CharField(max_length=191)
    app_id = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")


class ContactLookupApi(BaseApiView):
    @extend_schema(
        operation_id="contact_lookup",
        summary="Find a contact by one identity",
        description=(
            "Phones and emails are normalised first, so `13800138000` finds `+8613800138000`. "
            "No contact with that identity answers 404."
        ),
        parameters=[LookupQuerySerializer],
        responses={200: ContactOutSerializer, **CONTACT_ERRORS},
        examples=[CONTACT_ANSWER],
    )
    def get(self, request: Request) -> Response:
        query = _validated(LookupQuerySerializer, request.query_params)
        identity = services.normalize_identity(services.IdentityInput(**query))
        contact = selectors.contact_get_by_identity(
            kind=identity.kind, value=identity.value, app_id=identity.app_id
        )
        if contact is None:
            raise NotFound(gettext("No contact has this identity."))
        return Response(_contact_out(contact))


@extend_schema_field({"oneOf": [{"type": "integer"}, {"type": "string"}]})
class TagRefField(serializers.JSONField):
    """A tag id or "group/name", resolved (and checked) by services.tags_resolve."""


class TagsInSerializer(serializers.Serializer):
    tags = serializers.ListField(
        child=TagRefField(),
        allow_empty=False,
        min_length=1,
        max_length=50,
        help_text='Tag ids or "group/name" of existing tags.',
    )
    expires_at = OffsetDateTimeField(
        required=False,
        allow_null=True,
        default=None,
        help_text=(
            "Optional: when the tags are removed again. Must be in the future "
            "(`invalid_expiry` otherwise). Sent for a tag the contact already has, it replaces "
            "that tag's expiry; left out, an existing tag's expiry is kept."
        ),
    )


class TagsOutSerializer(serializers.Serializer):
    added = serializers.ListField(child=serializers.CharField(), help_text="Newly added tags.")
    tags = serializers.ListField(child=serializers.CharField(), help_text="All the contact's tags.")


def _tag_names(contact: Contact) -> list[str]:
    return [str(ct.tag) for ct in selectors.contact_tags(contact=contact)]


class ContactTagsApi(BaseApiView):
    @extend_schema(
        operation_id="contact_tags_add",
        summary="Tag a contact",
        description=(
            "Tags are given by id or as `group/name`; they must exist. A tag the contact already "
            "has is not added again, but an `expires_at` sent with it replaces its expiry, so "
            "repeating a call changes nothing. One unknown tag, or an expiry that is not in the "
            "future, adds none."
        ),
        request=TagsInSerializer,
        responses={200: TagsOutSerializer, **CONTACT_BODY_ERRORS},
        examples=[
            OpenApiExample(
                "By id and by name", request_only=True, value={"tags": [7, "兴趣/护肤"]}
            ),
            OpenApiExample(
                "Until the end of a campaign",
                description="The tag is removed again at the given time.",
                request_only=True,
                value={"tags": ["兴趣/双11意向"], "expires_at": "2026-11-12T00:00:00+08:00"},
            ),
            OpenApiExample(
                "Expiry in the past",
                response_only=True,
                status_codes=["400"],
                value={
                    "error": {
                        "code": "invalid_expiry",
                        "message": "The tag's expiry must be in the future.",
                        "details": {"field": "expires_at"},
                    }
                },
            ),
            OpenApiExample(
                "Answer",
                response_only=True,
                value={"added": ["兴趣/护肤"], "tags": ["价值/高价值", "兴趣/护肤"]},
            ),
        ],
    )
    def post(self, request: Request, contact_id: int) -> Response:
        contact = _contact(contact_id)
        data = _validated(TagsInSerializer, request.data)
        tags = services.tags_resolve(refs=data["tags"])
        added = services.contact_tags_add(
            contact=contact, tags=tags, source=TagSource.API, expires_at=data["expires_at"]
        )
        body = {"added": [str(t) for t in added], "tags": _tag_names(contact)}
        return Response(TagsOutSerializer(body).data)


class ContactTagDeleteApi(BaseApiView):
    @extend_schema(
        operation_id="contact_tag_remove",
        summary="Remove a tag from a contact",
        description=(
            "`tag_id` is a tag id or `group/name` (URL-encoded). Removing a tag the contact "
            "does not have also answers 204."
        ),
        parameters=[
            OpenApiParameter(
                "tag_id",
                OpenApiTypes.STR,
                OpenApiParameter.PATH,
                description='Tag id, or "group/name".',
                examples=[
                    OpenApiExample("By id", value="7"),
                    OpenApiExample(
                        "By group and name",
                        description="兴趣/护肤, URL-encoded in the path.",
                        value="兴趣/护肤",
                    ),
                ],
            )
        ],
        responses={204: None, **CONTACT_ERRORS},
        examples=[
            OpenApiExample(
                "Unknown tag",
                description="No tag has this id or group/name; nothing is changed.",
                response_only=True,
                status_codes=["400"],
                value={
                    "error": {
                        "code": "unknown_tag",
                        "message": (
                            "Unknown tag '兴趣/香水': give a tag id or \"group/name\" of an "
                            "existing tag."
                        ),
                        "details": {"tag": "兴趣/香水"},
                    }
                },
            ),
            OpenApiExample(
                "Unknown contact",
                response_only=True,
                status_codes=["404"],
                value={
                    "error": {
                        "code": "not_found",
                        "message": "No Contact matches the given query.",
                        "details": None,
                    }
                },
            ),
        ],
    )
    def delete(self, request: Request, contact_id: int, tag_id: str) -> Response:
        contact = _contact(contact_id)
        (tag,) = services.tags_resolve(refs=[tag_id])
        services.contact_tag_remove(contact=contact, tag=tag)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ConsentInSerializer(serializers.Serializer):
    channel = serializers.ChoiceField(choices=ConsentChannel.choices)
    purpose = serializers.ChoiceField(choices=ConsentPurpose.choices)
    granted = serializers.BooleanField()
    source = TextField(max_length=50, help_text="Where it was given: form, reply …")
    notice_version = TextField(max_length=30, required=False, allow_blank=True, default="")
    evidence = serializers.DictField(required=False, default=dict)
    request_id = TextField(
        max_length=MAX_REQUEST_ID,
        required=False,
        allow_blank=True,
        default="",
        help_text=(
            "Optional key of this call, unique per consent (e.g. a UUID): a retry with the same "
            "key answers the first call's record and stores nothing, even after later changes. "
            "Reused for a different consent: `request_id_reused`."
        ),
    )

    def to_internal_value(self, data):
        # "granted": "yes" or 1 is a client bug in a legal record: accept only true or false.
        if isinstance(data, dict) and "granted" in data and not isinstance(data["granted"], bool):
            raise serializers.ValidationError({"granted": [gettext("Must be true or false.")]})
        return super().to_internal_value(data)


class ConsentOutSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    channel = serializers.CharField()
    purpose = serializers.CharField()
    granted = serializers.BooleanField()
    source = serializers.CharField()
    notice_version = serializers.CharField()
    evidence = serializers.DictField()
    request_id = serializers.SerializerMethodField(
        help_text='The `request_id` of the call that recorded it; "" when it had none.'
    )
    recorded_at = serializers.DateTimeField()

    def get_request_id(self, record) -> str:
        return self.context["request_id"]


CONSENT_EXAMPLE = {
    "channel": "sms",
    "purpose": "marketing",
    "granted": True,
    "source": "miniprogram_register",
    "notice_version": "2026-01",
    "evidence": {"page": "/pages/register", "checkbox": "agree_sms"},
}


class ContactConsentsApi(BaseApiView):
    @extend_schema(
        operation_id="contact_consent_record",
        summary="Record a consent given or withdrawn",
        description=(
            "Appends a record (kept for evidence) and makes it the contact's current state for "
            "the channel and purpose. Safe to retry: a call with the `request_id` of an earlier "
            "call, or without one a call identical to the current record (same state, source, "
            "notice version and evidence), answers that record and stores nothing."
        ),
        request=ConsentInSerializer,
        responses={201: ConsentOutSerializer, **CONTACT_BODY_ERRORS},
        examples=[
            OpenApiExample(
                "Marketing SMS opt-in",
                request_only=True,
                value={**CONSENT_EXAMPLE, "request_id": "register-8812-20261126101500"},
            ),
            OpenApiExample(
                "Answer",
                response_only=True,
                status_codes=["201"],
                value={
                    "id": 310,
                    **CONSENT_EXAMPLE,
                    "request_id": "register-8812-20261126101500",
                    "recorded_at": "2026-11-26T10:15:00+08:00",
                },
            ),
        ],
    )
    def post(self, request: Request, contact_id: int) -> Response:
        contact = _contact(contact_id)
        data = _validated(ConsentInSerializer, request.data)
        record = services.consent_record(contact=contact, **data)
        # The answer names the record's own key: a call without one may answer a record that
        # an earlier call made with one.
        request_id = data["request_id"] or consent_request_id(record=record)
        body = ConsentOutSerializer(record, context={"request_id": request_id}).data
        return Response(body, status=status.HTTP_201_CREATED)


class TimelineQuerySerializer(serializers.Serializer):
    before = QueryIntegerField(
        required=False,
        min_value=1,
        max_value=MAX_ID,
        help_text="`next_before` of the previous page; an empty one is refused.",
    )
    limit = QueryIntegerField(
        required=False,
        min_value=1,
        max_value=100,
        default=50,
        help_text="Events per page; an empty one is refused.",
    )


class TimelineEventSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    event_id = serializers.CharField()
    name = serializers.CharField()
    # Events may be sent with any past time, including before 1901 (see Rfc3339DateTimeField).
    occurred_at = Rfc3339DateTimeField()
    properties = serializers.DictField()
    value = serializers.DecimalField(max_digits=14, decimal_places=2, allow_null=True)
    source = serializers.CharField()


class TimelineOutSerializer(serializers.Serializer):
    events = TimelineEventSerializer(many=True)
    next_before = serializers.IntegerField(
        allow_null=True, help_text="Pass as `before` for the next page; null on the last page."
    )


class ContactTimelineApi(BaseApiView):
    @extend_schema(
        operation_id="contact_timeline",
        summary="A contact's events, newest first",
        description=(
            "Keyset paging: pass the answer's `next_before` as `before`. A `before` or `limit` "
            "that is empty, not a whole number or out of range answers 400 (`invalid`, the "
            "parameter named in `details`) rather than being ignored."
        ),
        parameters=[TimelineQuerySerializer],
        responses={200: TimelineOutSerializer, **CONTACT_ERRORS},
        examples=[
            OpenApiExample(
                "A page",
                response_only=True,
                value={
                    "events": [
                        {
                            "id": 9001,
                            "event_id": "order-20261126-0001",
                            "name": "purchase",
                            "occurred_at": "2026-11-26T10:15:00+08:00",
                            "properties": {"order_id": "20261126-0001"},
                            "value": "299.00",
                            "source": "api",
                        }
                    ],
                    "next_before": 9001,
                },
            )
        ],
    )
    def get(self, request: Request, contact_id: int) -> Response:
        contact = _contact(contact_id)
        query = _validated(TimelineQuerySerializer, request.query_params)
        limit = query["limit"]
        events = selectors.contact_timeline(
            contact=contact, before=query.get("before"), limit=limit + 1
        )
        page = events[:limit]
        body = {
            "events": page,
            "next_before": page[-1].pk if len(events) > limit else None,
        }
        return Response(TimelineOutSerializer(body).data)


# The ApiKey flag the two endpoints below ask for: erasing a person cannot be undone, and their
# copy is unmasked, so a key that only identifies and records events must not reach either.
PERSONAL_DATA_PERMISSION = "personal_data_requests"


class PersonalDataForbidden(exceptions.PermissionDenied):
    """The key was not granted `personal_data_requests`."""

    default_code = "forbidden"

    def __init__(self):
        super().__init__(
            gettext(
                "This API key may not make personal data requests (erase a person, or read a "
                "full copy of their data). An administrator can allow it in the admin "
                "(管理后台), under API keys (API 密钥): open this key and tick “personal data "
                "requests”."
            ),
            code=self.default_code,
        )
        self.details = {"permission": PERSONAL_DATA_PERMISSION}


FORBIDDEN_EXAMPLE = OpenApiExample(
    "Key without the permission",
    response_only=True,
    status_codes=["403"],
    value={
        "error": {
            "code": "forbidden",
            "message": (
                "This API key may not make personal data requests (erase a person, or read a "
                "full copy of their data). An administrator can allow it in the admin "
                "(管理后台), under API keys (API 密钥): open this key and tick “personal data "
                "requests”."
            ),
            "details": {"permission": PERSONAL_DATA_PERMISSION},
        }
    },
)


class PersonalDataRequestApi(BaseApiView):
    """Base of the endpoints that erase a person or hand out their data unmasked: only a key
    granted `personal_data_requests` may call them; any other answers 403 `forbidden`."""

    def check_permissions(self, request: Request) -> None:
        super().check_permissions(request)
        if not request.auth.personal_data_requests:
            raise PersonalDataForbidden()


class ErasureInSerializer(serializers.Serializer):
    contact_id = WholeNumberField(
        required=False,
        min_value=1,
        max_value=MAX_ID,
        help_text="The person to erase, by contact id; or send `identities` instead (not both).",
    )
    # A ListField rather than many=True: the schema then carries minItems and maxItems.
    identities = serializers.ListField(
        child=IdentityInSerializer(),
        required=False,
        allow_empty=False,
        min_length=1,
        max_length=20,
        help_text=(
            "The person to erase, by the identities the mini-program knows them by (normalised "
            "as `identify` does); or send `contact_id` instead (not both). All of them must "
            "point to the same person; one unknown here is ignored."
        ),
    )
    reference = TextField(
        max_length=100,
        required=False,
        allow_blank=True,
        default="",
        help_text=(
            "Your own reference for the request (a ticket number), kept with the erasure; "
            "unique to each request. A call with the reference of an earlier erasure through "
            "the API answers that erasure (200) and erases nothing."
        ),
    )

    def validate(self, data):
        if "contact_id" in data and "identities" in data:
            raise serializers.ValidationError(
                gettext("Send either contact_id or identities, not both."), code="ambiguous"
            )
        if "contact_id" not in data and "identities" not in data:
            raise serializers.ValidationError(
                gettext("Send contact_id or identities to name the person to erase."),
                code="required",
            )
        return data


class ErasureOutSerializer(serializers.Serializer):
    erasure_id = serializers.IntegerField()
    contact_ids = serializers.ListField(
        child=serializers.IntegerField(),
        help_text="The contacts deleted: the person's and every contact merged into it.",
    )
    erased_at = Rfc3339DateTimeField()
    reference = serializers.CharField(help_text="As sent with the request that erased them.")


def _erasure_out(erasure: Erasure) -> dict:
    return ErasureOutSerializer(
        {
            "erasure_id": erasure.pk,
            "contact_ids": sorted(erasure.contacts.values_list("contact_id", flat=True)),
            "erased_at": erasure.created_at,
            "reference": erasure.reference,
        }
    ).data


ERASURE_EXAMPLE = {
    "erasure_id": 17,
    "contact_ids": [42, 57],
    "erased_at": "2026-11-26T10:15:00+08:00",
    "reference": "mp-cancel-8812",
}


class ErasuresApi(PersonalDataRequestApi):
    @extend_schema(
        operation_id="erasure_create",
        summary="Erase a person at their request (account deletion, 注销账号)",
        description=(
            "Deletes the person named by `contact_id` or by `identities` (exactly one of the "
            "two): their contact, every contact merged into it, and every row about them "
            "(identities, events, tags, notes, consents, segment memberships, points …). What "
            "is kept holds no personal data: the erasure (ids, time, `reference`) and keyed "
            "digests of the identities, so that imports and replayed events cannot add the "
            "person back; a later `identify` of the same person (they came back by themselves) "
            "makes a new contact. This cannot be undone.\n\n"
            "Only a key granted *personal data requests* (in the admin, under API keys) may "
            "call it; any other answers 403 `forbidden`.\n\n"
            "Safe to retry: send a `reference` unique to each request, and a call with the "
            "`reference` of an earlier erasure answers 200 with that erasure and deletes "
            "nothing, even if the person has come back since (signed in again: a new contact "
            "with the same identities). Without a reference, a `contact_id` already erased, or "
            "identities that only an erased person had, answer 200 with that erasure and "
            "delete nothing. Identities that point to two different people (duplicates not "
            "merged included) answer 400 `different_people` and erase nothing; a `contact_id` "
            "or identities never known here answer 404."
        ),
        request=ErasureInSerializer,
        responses={
            200: ErasureOutSerializer,
            201: ErasureOutSerializer,
            **ERRORS,
            403: ErrorSerializer,
            404: ErrorSerializer,
        },
        examples=[
            OpenApiExample(
                "Account deletion in the mini-program",
                request_only=True,
                value={
                    "identities": [
                        {"kind": "miniprogram_openid", "app_id": "wx1234", "value": "oAbc123"}
                    ],
                    "reference": "mp-cancel-8812",
                },
            ),
            OpenApiExample(
                "By contact id",
                request_only=True,
                value={"contact_id": 42, "reference": "ticket-2031"},
            ),
            OpenApiExample(
                "Erased",
                description="Contact 57 had been merged into contact 42: both went.",
                response_only=True,
                status_codes=["201"],
                value=ERASURE_EXAMPLE,
            ),
            OpenApiExample(
                "Answer to a retry",
                description=(
                    "An earlier call had this `reference`, or erased this person: nothing more "
                    "is deleted."
                ),
                response_only=True,
                status_codes=["200"],
                value=ERASURE_EXAMPLE,
            ),
            OpenApiExample(
                "Two different people",
                description="The openid and the phone belong to different contacts.",
                response_only=True,
                status_codes=["400"],
                value={
                    "error": {
                        "code": "different_people",
                        "message": (
                            "The identities belong to different people (contacts 42, 90): "
                            "send the identities of one person; nothing was erased."
                        ),
                        "details": {"contact_ids": [42, 90]},
                    }
                },
            ),
            OpenApiExample(
                "Never known",
                response_only=True,
                status_codes=["404"],
                value={
                    "error": {
                        "code": "not_found",
                        "message": (
                            "No contact has these identities, and no erased person had them."
                        ),
                        "details": None,
                    }
                },
            ),
            FORBIDDEN_EXAMPLE,
        ],
    )
    def post(self, request: Request) -> Response:
        data = _validated(ErasureInSerializer, request.data)
        # A retry by reference answers the erasure it made, whatever the identities now point
        # to: the person may have signed in again since (identify lifts their tombstones), and
        # that new customer must not be erased by a repeat of the old request.
        if data["reference"] and (
            done := Erasure.objects.filter(source=ErasureSource.API, reference=data["reference"])
            .order_by("-pk")
            .first()
        ):
            return Response(_erasure_out(done))
        if "contact_id" in data:
            contact_id = data["contact_id"]
            if (done := services.erasure_of_contact(contact_id=contact_id)) is not None:
                return Response(_erasure_out(done))
            contact = Contact.objects.filter(pk=contact_id).first()
            if contact is None:
                raise NotFound(gettext("No contact has this id, and no erased contact had it."))
        else:
            identities = [services.normalize_identity(i) for i in data["identities"]]
            keys = [(i.kind, i.app_id, i.value) for i in identities]
            people = selectors.contacts_of_identities(identities=keys)
            if len(people) > 1:
                ids = sorted(people)
                raise DomainError(
                    gettext(
                        "The identities belong to different people (contacts %(ids)s): send "
                        "the identities of one person; nothing was erased."
                    )
                    % {"ids": ", ".join(map(str, ids))},
                    code="different_people",
                    details={"contact_ids": ids},
                )
            if not people:
                if (done := services.erasure_of_identities(keys)) is not None:
                    return Response(_erasure_out(done))
                raise NotFound(
                    gettext("No contact has these identities, and no erased person had them.")
                )
            contact = Contact.objects.filter(pk=people.pop()).first()
            if contact is None:
                raise NotFound(gettext("Contact not found."))
        try:
            erasure = services.contact_erase(
                contact=contact,
                source=ErasureSource.API,
                reference=data["reference"],
                ip=request_ip(request),
                # The backend that asked, so that an erasure can be traced to it.
                audit={"api_key": request.auth.pk},
            )
        except NotFound:
            # Erased by a concurrent call (the client retried before the first answered).
            if (done := services.erasure_of_contact(contact_id=contact.pk)) is None:
                raise
            return Response(_erasure_out(done))
        return Response(_erasure_out(erasure), status=status.HTTP_201_CREATED)


class PersonalDataOutSerializer(serializers.Serializer):
    """What contacts.personal_data.contact_personal_data returns (described for the schema)."""

    format = serializers.CharField(help_text='Always "scrm.personal_data".')
    version = serializers.IntegerField()
    generated_at = Rfc3339DateTimeField()
    contact_id = serializers.IntegerField(help_text="The person's contact (after merges).")
    contact_ids = serializers.ListField(
        child=serializers.IntegerField(),
        help_text="That contact and every contact merged into it.",
    )
    sections = serializers.DictField(
        child=serializers.ListField(child=serializers.DictField()),
        help_text=(
            'Rows per kind of data, keyed "<app>.<what>" (`contacts.profile`, '
            "`contacts.events`, `membership.points_entries` …), values as stored and unmasked."
        ),
    )


class ContactPersonalDataApi(PersonalDataRequestApi):
    @extend_schema(
        operation_id="contact_personal_data",
        summary="A copy of everything stored about a person (data-access request)",
        description=(
            "For a person asking, in the mini-program, for a copy of their data: the profile, "
            "identities, tags, events, notes, consents and merges of the contact and of every "
            "contact merged into it, and what the other modules hold (memberships, points, "
            "messages …). Nothing is masked: the copy is for the person themselves, and only a "
            "key granted *personal data requests* (in the admin, under API keys) may ask for "
            "it; any other answers 403 `forbidden`. A contact "
            "merged into another answers with the survivor's copy. Each call is written to the "
            "audit log. A contact that was erased answers 410 `erased`, with the erasure's id "
            "and time."
        ),
        responses={
            200: PersonalDataOutSerializer,
            **NOT_FOUND,
            403: ErrorSerializer,
            410: ErrorSerializer,
        },
        examples=[
            OpenApiExample(
                "A copy",
                response_only=True,
                status_codes=["200"],
                value={
                    "format": "scrm.personal_data",
                    "version": 1,
                    "generated_at": "2026-11-26T10:15:00+08:00",
                    "contact_id": 42,
                    "contact_ids": [42, 57],
                    "sections": {
                        "contacts.identities": [
                            {
                                "contact_id": 42,
                                "kind": "phone",
                                "app_id": "",
                                "value": "+8613800138000",
                                "created_at": "2026-03-01T09:00:00+08:00",
                            }
                        ],
                        "contacts.profile": [
                            {
                                "id": 42,
                                "name": "林小雨",
                                "phone": "+8613800138000",
                                "city": "上海",
                                "merged_into": None,
                            }
                        ],
                    },
                },
            ),
            OpenApiExample(
                "Erased",
                response_only=True,
                status_codes=["410"],
                value={
                    "error": {
                        "code": "erased",
                        "message": (
                            "This person's data was erased at their request on 2026-11-26 "
                            "(erasure 17): nothing about them is kept."
                        ),
                        "details": {"erasure_id": 17, "erased_at": "2026-11-26T10:15:00+08:00"},
                    }
                },
            ),
            FORBIDDEN_EXAMPLE,
        ],
    )
    def get(self, request: Request, contact_id: int) -> Response:
        if (erasure := services.erasure_of_contact(contact_id=contact_id)) is not None:
            erased_at = Rfc3339DateTimeField().to_representation(erasure.created_at)
            return error_response(
                "erased",
                gettext(
                    "This person's data was erased at their request on %(date)s (erasure "
                    "%(erasure)s): nothing about them is kept."
                )
                % {"date": erased_at[:10], "erasure": erasure.pk},
                {"erasure_id": erasure.pk, "erased_at": erased_at},
                status_code=status.HTTP_410_GONE,
            )
        contact = _contact(contact_id)
        data = contact_personal_data(contact=contact)
        # Every copy handed out is logged, like an unmasking or an export; ids only.
        audit_log(
            actor=None,
            action="contact.data_copy",
            obj=contact,
            details={"contacts": data["contact_ids"], "source": "api", "api_key": request.auth.pk},
            request=request,
        )
        return Response(data)
