from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from contacts import services
from contacts.models import Contact, IdentityKind
from core.api import ErrorSerializer
from core.apiviews import BaseApiView

ERRORS = {400: ErrorSerializer, 401: ErrorSerializer, 429: ErrorSerializer}


class IdentityInSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=IdentityKind.choices)
    app_id = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    value = serializers.CharField(max_length=191)

    def to_internal_value(self, data):
        return services.IdentityInput(**super().to_internal_value(data))


class IdentifyInSerializer(serializers.Serializer):
    identities = IdentityInSerializer(many=True, allow_empty=False, max_length=20)
    traits = serializers.DictField(required=False, default=dict)


class IdentifyOutSerializer(serializers.Serializer):
    contact_id = serializers.IntegerField()
    created = serializers.BooleanField()
    merged = serializers.ListField(child=serializers.IntegerField())
    conflicts = serializers.ListField(
        child=serializers.IntegerField(),
        help_text="Other contacts the identities point to; they were not merged.",
    )


class IdentifyApi(BaseApiView):
    @extend_schema(
        operation_id="identify",
        summary="Create or update a contact from identities and traits",
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
                value={"contact_id": 42, "created": True, "merged": [], "conflicts": []},
            ),
        ],
    )
    def post(self, request: Request) -> Response:
        data = IdentifyInSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result = services.identify(
            identities=data.validated_data["identities"],
            traits=data.validated_data["traits"],
            source="api",
        )
        body = IdentifyOutSerializer(
            {
                "contact_id": result.contact.pk,
                "created": result.created,
                "merged": result.merged,
                "conflicts": result.conflicts,
            }
        ).data
        return Response(body, status=status.HTTP_201_CREATED if result.created else 200)


class EventInSerializer(serializers.Serializer):
    event_id = serializers.CharField(max_length=64)
    name = serializers.CharField(max_length=64)
    occurred_at = serializers.DateTimeField()
    contact_id = serializers.IntegerField(required=False, min_value=1)
    identities = IdentityInSerializer(many=True, required=False, max_length=20)
    properties = serializers.DictField(required=False, default=dict)
    value = serializers.DecimalField(
        max_digits=14, decimal_places=2, required=False, allow_null=True
    )


class EventsInSerializer(serializers.Serializer):
    events = serializers.ListField(
        child=serializers.JSONField(),
        allow_empty=False,
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
    return str(raw.get("event_id", ""))[:64] if isinstance(raw, dict) else ""


class EventsApi(BaseApiView):
    @extend_schema(
        operation_id="events_record",
        summary="Record a batch of up to 500 events",
        description=(
            "Each item is validated on its own: a bad item is reported as `rejected` with a "
            "reason and never blocks the good ones. `event_id` is the client's idempotency key: "
            "resending an event reports it as `duplicate` and stores nothing."
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
            )
        ],
    )
    def post(self, request: Request) -> Response:
        batch = EventsInSerializer(data=request.data)
        batch.is_valid(raise_exception=True)
        items: list[services.EventInput | None] = []
        parse_errors: dict[int, str] = {}
        for index, raw in enumerate(batch.validated_data["events"]):
            item = EventInSerializer(data=raw)
            if not item.is_valid():
                parse_errors[index] = _first_error(item.errors)
                items.append(None)
                continue
            v = item.validated_data
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
        outcomes = services.events_record(items=[item for _, item in valid])
        results = [
            {
                "index": i,
                "event_id": _raw_event_id(batch.validated_data["events"][i]),
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
    tags = serializers.SerializerMethodField()

    class Meta:
        model = Contact
        fields = [
            "id",
            "name",
            "nickname",
            "gender",
            "birthday",
            "phone",
            "email",
            "province",
            "city",
            "source",
            "channel_code",
            "lifecycle_stage",
            "attributes",
            "identities",
            "tags",
            "created_at",
            "last_seen_at",
        ]

    def get_tags(self, contact: Contact) -> list[str]:
        return [str(ct.tag) for ct in contact.contact_tags.all()]


class ContactDetailApi(BaseApiView):
    @extend_schema(
        operation_id="contact_get",
        summary="One contact with identities and tags",
        responses={200: ContactOutSerializer, 404: ErrorSerializer, 401: ErrorSerializer},
    )
    def get(self, request: Request, contact_id: int) -> Response:
        contact = get_object_or_404(
            Contact.objects.prefetch_related("identities", "contact_tags__tag__group"),
            pk=contact_id,
        )
        return Response(ContactOutSerializer(contact).data)
