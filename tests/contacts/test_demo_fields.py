"""The demo defines the custom fields its contacts carry (so the contact page labels them, the
segment builder offers them and the API examples work against it), and its segments come with
a month of size history counted from the demo data, so the growth sparkline has a line."""

import datetime as dt
import json
import re
from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from contacts.models import Contact, ContactTag, CustomField, CustomFieldKind
from journeys.demo import catalog
from journeys.demo import services as demo
from segments.history import day_end, segment_size_backfill
from segments.models import Segment, SegmentSize
from segments.services import segment_create

pytestmark = pytest.mark.django_db

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
DEMO_SEGMENTS = {"上海护肤兴趣客户", "高价值客户", "新客（近7天）", "VIP 关怀"}


def seed(contacts: int = 40) -> str:
    out = StringIO()
    call_command("seed_demo", contacts=contacts, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.fixture
def seeded():
    return seed()


def _doc_example(heading: str) -> dict:
    """The first JSON example under a heading of docs/api.md."""
    text = API_DOC.read_text()
    section = text[text.index(heading) :]
    return json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))


def test_the_fields_the_demo_contacts_carry_are_defined(seeded):
    fields = {f.key: f for f in CustomField.objects.all()}
    assert set(fields) == {"skin_type", "preferred_store"}
    skin, store = fields["skin_type"], fields["preferred_store"]
    assert (skin.label, skin.kind, skin.choices) == (
        "肤质",
        CustomFieldKind.SINGLE_CHOICE,
        ["干性", "油性", "混合性", "敏感性", "中性"],
    )
    assert (store.label, store.kind, store.choices) == ("常去门店", CustomFieldKind.TEXT, [])
    assert skin.is_active and store.is_active

    carried = [c.attributes for c in Contact.objects.all()]
    assert {key for attributes in carried for key in attributes} == set(fields)
    assert {a["skin_type"] for a in carried if "skin_type" in a} <= set(skin.choices)


def test_the_contact_page_labels_them_and_the_segment_builder_offers_them(seeded, admin_client):
    contact = Contact.objects.filter(attributes__has_key="skin_type").first()

    page = admin_client.get(reverse("contacts:detail", args=[contact.pk])).content.decode()
    assert "肤质" in page and contact.attributes["skin_type"] in page
    assert "skin_type" not in page

    # The field picker of an attribute condition (this segment's city condition).
    segment = Segment.objects.get(name="上海护肤兴趣客户")
    builder = admin_client.get(reverse("segments:edit", args=[segment.pk])).content.decode()
    assert 'value="attributes.skin_type"' in builder and ">肤质<" in builder
    assert 'value="attributes.preferred_store"' in builder and ">常去门店<" in builder


def test_the_api_examples_with_skin_type_work_against_the_demo(seeded, api, client):
    contact = Contact.objects.order_by("pk").first()

    patch = _doc_example("## `PATCH /api/v1/contacts/{id}`")
    response = api.patch(f"/api/v1/contacts/{contact.pk}", patch, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["attributes"]["skin_type"] == "干性"
    assert response.json()["store"] == patch["store"]

    identify = _doc_example("## `POST /api/v1/identify`")
    response = api.post("/api/v1/identify", identify, format="json")
    assert response.status_code in (200, 201), response.json()
    identified = Contact.objects.get(pk=response.json()["contact_id"])
    assert identified.attributes["skin_type"] == "干性"

    # The reference's own PATCH example too.
    schema = yaml.safe_load(client.get("/api/schema/").content)
    operation = schema["paths"]["/api/v1/contacts/{contact_id}"]["patch"]
    examples = operation["requestBody"]["content"]["application/json"]["examples"]
    for example in examples.values():
        response = api.patch(f"/api/v1/contacts/{contact.pk}", example["value"], format="json")
        assert response.status_code == 200, response.json()


def test_a_second_seed_keeps_an_operators_changes_and_puts_back_a_deleted_field(seeded):
    skin = CustomField.objects.get(key="skin_type")
    skin.label, skin.choices = "皮肤类型", [*skin.choices, "未知"]
    skin.save()
    CustomField.objects.filter(key="preferred_store").delete()

    seed()

    skin.refresh_from_db()
    assert (skin.label, skin.choices[-1]) == ("皮肤类型", "未知")
    assert CustomField.objects.get(key="preferred_store").label == "常去门店"
    assert CustomField.objects.count() == 2


def _points(segment: Segment) -> dict[dt.date, int]:
    return dict(SegmentSize.objects.filter(segment=segment).values_list("day", "member_count"))


def test_demo_segments_have_a_month_of_size_history_counted_from_the_data(seeded, admin_client):
    today = timezone.localdate()
    month = {today - dt.timedelta(days=back) for back in range(30)}
    segments = {s.name: s for s in Segment.objects.filter(name__in=DEMO_SEGMENTS)}
    assert set(segments) == DEMO_SEGMENTS
    for segment in segments.values():
        assert set(_points(segment)) == month, segment.name
    assert "116 past points over 30 days, a point a day" in seeded

    # An independent count of who had the tag, among the contacts that existed then.
    def tagged(name: str, day: dt.date, **contact) -> int:
        return (
            ContactTag.objects.filter(
                tag__name=name,
                contact__merged_into__isnull=True,
                contact__created_at__lte=day_end(day),
                **{f"contact__{k}": v for k, v in contact.items()},
            )
            .values("contact")
            .distinct()
            .count()
        )

    high_value = _points(segments["高价值客户"])
    shanghai_skin_care = _points(segments["上海护肤兴趣客户"])
    for day in month:
        assert high_value[day] == tagged("高价值", day), day
        assert shanghai_skin_care[day] == tagged("护肤", day, city="上海"), day
    # The data grows over the 90 days it covers, and so do the counts.
    assert high_value[today - dt.timedelta(days=29)] < high_value[today]
    assert _points(segments["VIP 关怀"]) == high_value

    page = admin_client.get(reverse("segments:list")).content.decode()
    for name in DEMO_SEGMENTS:
        row = next(r for r in page.split("<tr") if f">{name}<" in r)
        assert "<polyline points=" in row, name


def test_a_second_seed_never_replaces_a_recorded_point(seeded):
    segment = Segment.objects.get(name="高价值客户")
    yesterday = timezone.localdate() - dt.timedelta(days=1)
    SegmentSize.objects.filter(segment=segment, day=yesterday).update(member_count=12345)
    SegmentSize.objects.filter(segment=segment, day=yesterday - dt.timedelta(days=1)).delete()

    output = seed()

    points = _points(segment)
    assert points[yesterday] == 12345
    assert yesterday - dt.timedelta(days=1) in points  # the gap is filled again
    assert "1 past points" in output
    assert SegmentSize.objects.count() == 4 * 30


def test_a_big_demo_gets_a_point_a_week(monkeypatch):
    monkeypatch.setattr(demo, "DAILY_HISTORY_UP_TO", 10)

    output = seed(contacts=20)

    today = timezone.localdate()
    weekly = {today - dt.timedelta(days=back) for back in (0, 7, 14, 21, 28)}
    for segment in Segment.objects.filter(name__in=DEMO_SEGMENTS):
        assert set(_points(segment)) == weekly
    assert "16 past points over 30 days, a point every 7 days" in output


def test_static_lists_get_no_made_up_history(db):
    static = segment_create(name="名单", kind="static")
    assert segment_size_backfill(segment=static) == 0
    # Only today's point, which creating the list recorded.
    assert list(SegmentSize.objects.filter(segment=static).values_list("day", flat=True)) == [
        timezone.localdate()
    ]


def test_the_catalog_is_what_the_generator_draws_from():
    skin = next(f for f in catalog.CUSTOM_FIELDS if f[0] == "skin_type")
    assert skin[3] == list(catalog.SKIN_TYPES)
