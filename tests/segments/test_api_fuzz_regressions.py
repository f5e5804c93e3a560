"""Static-list member calls that fuzzing turned into 500s or that the schema described wrongly."""

import json

import pytest
import yaml

from segments.models import SegmentKind, SegmentMembership
from segments.services import segment_create
from tests.factories import ContactFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def static():
    return segment_create(name="名单", kind=SegmentKind.STATIC)


def test_more_query_parameters_than_django_reads_answer_400_in_the_error_shape(api, static):
    query = "&".join(f"contact_ids={i}" for i in range(1, 1101))

    response = api.delete(f"/api/v1/segments/{static.pk}/members?{query}")

    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "too_many_fields"
    assert error["details"] == {"max_fields": 1000}


def test_a_body_with_a_lone_surrogate_is_refused_by_name(api, static):
    contact = ContactFactory()
    body = json.dumps({"contact_ids": [contact.pk], "note": "\ud800"})

    response = api.post(
        f"/api/v1/segments/{static.pk}/members", body, content_type="application/json"
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_unicode"
    assert not SegmentMembership.objects.exists()


def test_deeply_nested_json_is_refused_by_name(api, static):
    response = api.post(
        f"/api/v1/segments/{static.pk}/members",
        "[" * 50_000 + "]" * 50_000,
        content_type="application/json",
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_deep"


def test_the_schema_describes_the_member_ids_the_api_accepts(client):
    schema = yaml.safe_load(client.get("/api/schema/").content)
    members = schema["paths"]["/api/v1/segments/{segment_id}/members"]
    body = schema["components"]["schemas"]["MembersInRequest"]["properties"]["contact_ids"]
    (query,) = [p for p in members["delete"]["parameters"] if p["name"] == "contact_ids"]

    assert (body["minItems"], body["maxItems"]) == (1, 1000)
    # Without a body the ids are required in the query, and bounded like the body's.
    assert query["required"] is True
    assert (query["schema"]["minItems"], query["schema"]["maxItems"]) == (1, 1000)
    assert query["schema"]["items"]["minimum"] == 1
    assert query["schema"]["items"]["maximum"] == 2**63 - 1
