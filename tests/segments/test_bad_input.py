"""Bad input gets a clear error, never a 500: ids that are not ids (“²”, numbers no row can
have), unreadable spreadsheets, malformed times."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from core.errors import ValidationFailed
from core.ids import MAX_ID, parse_id
from segments import scoring
from segments.models import SegmentKind, SegmentMembership
from segments.services import rule_queryset, segment_create
from segments.static_import import segment_static_import
from tests.factories import ContactFactory
from tests.segments.posts import builder_post

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
HUGE = "99999999999999999999999"
OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


@pytest.fixture
def static():
    return segment_create(name="名单", kind=SegmentKind.STATIC)


@pytest.fixture
def dynamic():
    return segment_create(name="全部", rule={"op": "and", "conditions": []})


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("42", 42),
        (42, 42),
        ("²", None),
        ("٣", None),  # an Arabic-Indic three: a digit to str.isdigit(), not an id
        ("", None),
        (None, None),
        ("-1", None),
        ("0", None),
        (str(MAX_ID), MAX_ID),
        (str(MAX_ID + 1), None),
        (True, None),
    ],
)
def test_parse_id_takes_only_ascii_digits_in_range(raw, expected):
    assert parse_id(raw) == expected


# --- views ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [{"contact": "²"}, {"q": "²"}, {"contact": HUGE}])
def test_explain_treats_a_non_id_as_no_contact(operator_client, dynamic, params):
    response = operator_client.get(reverse("segments:explain", args=[dynamic.pk]), params)
    assert response.status_code == 200


def test_preview_ignores_a_segment_that_is_not_an_id(operator_client):
    data = {"segment": "²", "r.kind": "group", "r.op": "and"}
    response = operator_client.post(reverse("segments:preview"), data, **HX)
    assert response.status_code == 200


@pytest.mark.parametrize(
    "row",
    [
        {"r-0.kind": "tag", "r-0.match": "any", "r-0.tags": HUGE},
        {"r-0.kind": "attribute", "r-0.field": "owner", "r-0.operator": "eq", "r-0.value": HUGE},
        {"r-0.kind": "attribute", "r-0.field": "store", "r-0.operator": "eq", "r-0.value": HUGE},
    ],
)
def test_preview_names_an_id_no_row_can_have_as_unknown(operator_client, row):
    data = {"r.kind": "group", "r.op": "and", **row}
    response = operator_client.post(reverse("segments:preview"), data, **HX)
    assert response.status_code == 200
    assert HUGE in response.content.decode()


def test_saving_a_rule_with_a_huge_tag_id_answers_422(operator_client):
    data = builder_post({"r-0.kind": "tag", "r-0.match": "any", "r-0.tags": HUGE})
    response = operator_client.post(reverse("segments:create"), data)
    assert response.status_code == 422
    assert HUGE in response.content.decode()


def test_rule_services_refuse_a_huge_id_by_its_path():
    rule = {
        "op": "or",
        "conditions": [
            {"type": "attribute", "field": "city", "operator": "eq", "value": "上海"},
            {"type": "tag", "match": "any", "tags": [int(HUGE)]},
        ],
    }
    with pytest.raises(ValidationFailed) as refused:
        rule_queryset(rule=rule)
    assert refused.value.details == {"path": "rule.conditions[1].tags"}
    with pytest.raises(ValidationFailed):
        segment_create(name="大数", rule=rule)
    with pytest.raises(ValidationFailed):
        scoring.score_rule_create(
            data={"name": "大数", "kind": "attribute", "condition": rule, "points": 1}
        )


@pytest.mark.parametrize("ids", [["²"], [HUGE], ["-3"]])
def test_static_members_refuse_ids_that_are_not_ids(operator_client, static, ids):
    response = operator_client.post(
        reverse("segments:static_members"), {"segment": static.pk, "ids": ids}
    )
    assert response.status_code == 302
    assert not SegmentMembership.objects.filter(segment=static).exists()


@pytest.mark.parametrize("segment", ["abc", "²", HUGE])
def test_static_members_answer_404_for_a_list_that_is_not_an_id(operator_client, segment):
    contact = ContactFactory()
    response = operator_client.post(
        reverse("segments:static_members"), {"segment": segment, "ids": [contact.pk]}
    )
    assert response.status_code == 404


@pytest.mark.parametrize("since", ["2026-99-99T00:00", "yesterday", "2026-13-01T00:00:00+08:00"])
def test_refresh_status_refuses_a_malformed_since(operator_client, dynamic, since):
    url = reverse("segments:refresh_status", args=[dynamic.pk])
    response = operator_client.get(url, {"since": since}, **HX)
    assert response.status_code == 400


def test_refresh_status_reads_a_since_without_time_zone_in_local_time(operator_client, dynamic):
    url = reverse("segments:refresh_status", args=[dynamic.pk])
    response = operator_client.get(url, {"since": "2000-01-01T00:00"}, **HX)
    assert response.status_code == 200
    assert "every 1s" not in response.content.decode()


# --- files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,content",
    [
        ("corrupt.xlsx", b"PK\x03\x04garbage"),
        ("not-a-zip.xlsx", b"plain text, not a workbook"),
        ("encrypted.xlsx", OLE2 + b"\x00" * 600),
    ],
)
def test_an_unreadable_workbook_is_an_invalid_file(tmp_path, static, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValidationFailed) as refused:
        segment_static_import(segment=static, file=path, match_by="phone")
    assert refused.value.code == "invalid_file"


def test_the_import_page_shows_an_unreadable_workbook_as_an_error(operator_client, static):
    upload = SimpleUploadedFile("x.xlsx", b"PK\x03\x04garbage")
    response = operator_client.post(
        reverse("segments:static_import", args=[static.pk]), {"file": upload, "match_by": "phone"}
    )
    assert response.status_code == 422


# --- API -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("contact_id", [MAX_ID + 1, int(HUGE)])
def test_members_api_refuses_ids_no_row_can_have(api, static, contact_id):
    response = api.post(
        f"/api/v1/segments/{static.pk}/members", {"contact_ids": [contact_id]}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
