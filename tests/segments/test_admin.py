"""Segments edited in the Django admin go through the segment services, as in the builder."""

import json

import pytest
from django.urls import reverse
from django.utils import translation

from contacts.models import Event
from segments.models import RefreshPolicy, Segment, SegmentKind, SegmentMembership
from segments.services import segment_create
from tests.factories import ContactFactory

pytestmark = pytest.mark.django_db

ADD_URL = reverse("admin:segments_segment_add")


def city_rule(city: str) -> dict:
    return {
        "op": "and",
        "conditions": [{"type": "attribute", "field": "city", "operator": "eq", "value": city}],
    }


def reads(segment: Segment) -> dict:
    return {"op": "and", "conditions": [{"type": "segment", "segment": segment.pk}]}


def change_url(segment: Segment) -> str:
    return reverse("admin:segments_segment_change", args=[segment.pk])


def form_data(form) -> dict[str, str]:
    """What a browser posts back for a form page as shown (checked boxes as "on")."""
    data: dict[str, str] = {}
    for field in form:
        value = field.value()
        if isinstance(value, bool):
            if value:
                data[field.html_name] = "on"
        elif value is not None:
            data[field.html_name] = str(value)
    return data


def admin_post(client, url: str, **changes):
    """Post the admin form as a browser would: what the page shows, with `changes` applied
    (JSON fields given as Python values)."""
    data = form_data(client.get(url).context["adminform"].form)
    for name, value in changes.items():
        if value is False:
            data.pop(name, None)
        elif value is True:
            data[name] = "on"
        else:
            # JSON fields (a rule, property filters) given as Python values; text as typed.
            data[name] = (
                json.dumps(value, ensure_ascii=False)
                if isinstance(value, dict | list)
                else str(value)
            )
    return client.post(url, data)


def errors(response, field: str) -> list:
    """The form's errors on `field` (None: the errors of the whole form) as ValidationErrors."""
    assert response.status_code == 200, response.status_code
    return response.context["adminform"].form.errors.as_data().get(field or "__all__", [])


def members(segment: Segment) -> set[int]:
    return set(
        SegmentMembership.objects.filter(segment=segment).values_list("contact_id", flat=True)
    )


def test_creating_a_segment_builds_it_and_records_the_segments_it_reads(operator_client, operator):
    shanghai, beijing = ContactFactory(city="上海"), ContactFactory(city="北京")
    base = segment_create(name="上海", rule=city_rule("上海"))

    response = admin_post(
        operator_client, ADD_URL, name="上海老客", kind=SegmentKind.DYNAMIC, rule=reads(base)
    )

    assert response.status_code == 302
    segment = Segment.objects.get(name="上海老客")
    assert list(segment.depends_on.all()) == [base]
    assert members(segment) == {shanghai.pk} and beijing.pk not in members(segment)
    assert segment.member_count == 1 and segment.last_refreshed_at is not None
    assert segment.created_by == operator


def test_a_new_static_list_has_no_rule_and_is_refreshed_only_when_asked(operator_client):
    response = admin_post(
        operator_client,
        ADD_URL,
        name="VIP 名单",
        kind=SegmentKind.STATIC,
        rule={"op": "and", "conditions": [{"type": "segment", "segment": 999999}]},
    )

    assert response.status_code == 302
    segment = Segment.objects.get(name="VIP 名单")
    assert segment.kind == SegmentKind.STATIC and segment.rule == {}
    assert segment.refresh_policy == RefreshPolicy.MANUAL
    assert not segment.depends_on.exists()


def test_editing_the_rule_re_evaluates_members_with_entry_and_exit_events(operator_client):
    shanghai, beijing = ContactFactory(city="上海"), ContactFactory(city="北京")
    segment = segment_create(name="城市", rule=city_rule("上海"))
    other = segment_create(name="北京", rule=city_rule("北京"))

    response = admin_post(
        operator_client,
        change_url(segment),
        rule=reads(other),
        refresh_policy=RefreshPolicy.DAILY,
        refresh_hour=4,
    )

    assert response.status_code == 302
    segment.refresh_from_db()
    assert segment.rule == reads(other)
    assert members(segment) == {beijing.pk} and segment.member_count == 1
    assert list(segment.depends_on.all()) == [other]
    entered = Event.objects.get(name="segment_entered", properties__segment_id=segment.pk)
    exited = Event.objects.get(name="segment_exited", properties__segment_id=segment.pk)
    assert (entered.contact_id, exited.contact_id) == (beijing.pk, shanghai.pk)
    # The next scheduled refresh follows the new policy.
    assert segment.refresh_policy == RefreshPolicy.DAILY
    assert segment.next_refresh_at is not None and segment.next_refresh_at.minute == 0


def test_the_kind_of_an_existing_segment_cannot_be_changed(operator_client):
    segment = segment_create(name="城市", rule=city_rule("上海"))
    url = change_url(segment)

    assert "kind" not in operator_client.get(url).context["adminform"].form.fields
    response = operator_client.post(
        url,
        {
            "name": "城市",
            "kind": SegmentKind.STATIC,
            "rule": json.dumps(city_rule("上海")),
            "refresh_policy": RefreshPolicy.ON_CHANGE,
            "refresh_interval_minutes": 60,
            "refresh_hour": 3,
        },
    )

    assert response.status_code == 302
    segment.refresh_from_db()
    assert segment.kind == SegmentKind.DYNAMIC and segment.rule == city_rule("上海")


def test_a_rule_reading_the_segment_itself_is_refused(operator_client):
    ContactFactory(city="上海")
    segment = segment_create(name="城市", rule=city_rule("上海"))

    response = admin_post(operator_client, change_url(segment), rule=reads(segment))

    [error] = errors(response, "rule")
    assert error.code == "invalid_rule"
    segment.refresh_from_db()
    assert segment.rule == city_rule("上海") and not segment.depends_on.exists()
    assert segment.member_count == 1


def test_a_rule_making_a_cycle_through_another_segment_is_refused(operator_client):
    a = segment_create(name="甲", rule=city_rule("上海"))
    b = segment_create(name="乙", rule=reads(a))

    response = admin_post(operator_client, change_url(a), rule=reads(b))

    [error] = errors(response, "rule")
    assert error.code == "invalid_rule" and "乙" in error.message
    a.refresh_from_db()
    assert a.rule == city_rule("上海") and not a.depends_on.exists()


def test_a_taken_name_is_refused_when_creating_and_when_renaming(operator_client):
    segment_create(name="上海", rule=city_rule("上海"))
    other = segment_create(name="北京", rule=city_rule("北京"))

    created = admin_post(operator_client, ADD_URL, name="上海", rule=city_rule("杭州"))
    renamed = admin_post(operator_client, change_url(other), name=" 上海 ")

    for response in (created, renamed):
        [error] = errors(response, "name")
        assert error.code == "duplicate_name"
        # In the operator's language (zh-Hans by default), as the services word it.
        with translation.override("zh-hans"):
            expected = translation.gettext("A segment named “%(name)s” already exists.")
        assert error.message == expected % {"name": "上海"}
        assert error.message != "A segment named “上海” already exists."
    assert Segment.objects.filter(name="上海").count() == 1
    assert Segment.objects.get(pk=other.pk).name == "北京"


def test_the_refresh_policy_is_checked_as_the_services_check_it(operator_client):
    segment = segment_create(name="城市", rule=city_rule("上海"))

    response = admin_post(
        operator_client,
        change_url(segment),
        refresh_policy=RefreshPolicy.INTERVAL,
        refresh_interval_minutes=2,
    )

    [error] = errors(response, None)
    assert error.code == "invalid_policy"
    segment.refresh_from_db()
    assert segment.refresh_policy == RefreshPolicy.ON_CHANGE


def test_archiving_a_segment_that_others_read_is_refused(operator_client):
    base = segment_create(name="上海", rule=city_rule("上海"))
    segment_create(name="上海老客", rule=reads(base))

    response = admin_post(operator_client, change_url(base), is_archived=True, description="旧")

    [error] = errors(response, "is_archived")
    assert error.code == "segment_in_use" and "上海老客" in error.message
    base.refresh_from_db()
    assert not base.is_archived and base.description == ""


def test_archiving_and_restoring_go_through_the_services(operator_client):
    contact = ContactFactory(city="上海")
    segment = segment_create(name="上海", rule=city_rule("上海"))

    archived = admin_post(operator_client, change_url(segment), is_archived=True)
    assert archived.status_code == 302
    segment.refresh_from_db()
    assert segment.is_archived

    SegmentMembership.objects.filter(segment=segment).delete()  # gone stale while archived
    restored = admin_post(operator_client, change_url(segment), is_archived=False)

    assert restored.status_code == 302
    segment.refresh_from_db()
    assert not segment.is_archived
    assert members(segment) == {contact.pk}  # restoring refreshed it


def test_an_auto_tag_rule_for_a_tag_another_segment_keeps_is_refused(admin_client):
    from segments.models import AutoTagRule
    from segments.services import auto_tag_rule_create
    from tests.factories import TagFactory

    tag = TagFactory(name="上海人")
    shanghai = segment_create(name="上海", rule=city_rule("上海"))
    beijing = segment_create(name="北京", rule=city_rule("北京"))
    auto_tag_rule_create(segment=shanghai, tag=tag)

    response = admin_client.post(
        reverse("admin:segments_autotagrule_add"),
        {"segment": beijing.pk, "tag": tag.pk, "remove_on_exit": "on", "is_active": "on"},
    )

    assert response.status_code == 200
    assert "上海" in str(response.context["adminform"].form.non_field_errors())
    assert not AutoTagRule.objects.filter(segment=beijing).exists()
