import datetime as dt
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from contacts.models import ContactTag, IdentityKind
from contacts.roles import ANALYST, roles_sync
from segments.models import AutoTagRule, Segment, SegmentKind, SegmentMembership, SegmentSize
from segments.services import segment_create, segment_static_add
from tests.factories import (
    ContactFactory,
    IdentityFactory,
    SegmentFactory,
    TagFactory,
    user_with_role,
)
from tests.segments.posts import builder_post
from tests.segments.test_builder import form_data

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
CITY_RULE = {
    "op": "and",
    "conditions": [{"type": "attribute", "field": "city", "operator": "eq", "value": "上海"}],
}


def _node_html(html: str, path: str) -> str:
    """The markup of one builder row (up to the next row)."""
    start = html.rindex("<", 0, html.index(f'data-path="{path}"'))
    following = re.search(r'<[^<>]*data-path="r[-\d]*"', html[start + 1 :])
    return html[start : start + 1 + following.start()] if following else html[start:]


@pytest.fixture
def analyst_client(client):
    roles_sync()
    client.force_login(user_with_role(ANALYST))
    return client


# Access -----------------------------------------------------------------------------------------


def test_anonymous_users_are_sent_to_login(client):
    segment = SegmentFactory()
    for url in (
        reverse("segments:list"),
        reverse("segments:create"),
        reverse("segments:detail", args=[segment.pk]),
        reverse("segments:edit", args=[segment.pk]),
        reverse("segments:explain", args=[segment.pk]),
        reverse("segments:static_import", args=[segment.pk]),
    ):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))


def test_analysts_read_but_cannot_change(analyst_client):
    segment = segment_create(name="上海", rule=CITY_RULE)
    static = segment_create(name="名单", kind=SegmentKind.STATIC)
    for url in (
        reverse("segments:list"),
        reverse("segments:detail", args=[segment.pk]),
        reverse("segments:explain", args=[segment.pk]),
    ):
        assert analyst_client.get(url).status_code == 200
    page = analyst_client.get(reverse("segments:detail", args=[segment.pk])).content.decode()
    assert reverse("segments:edit", args=[segment.pk]) not in page
    assert "Refresh now" not in page and "立即刷新" not in page

    forbidden_gets = [
        reverse("segments:create"),
        reverse("segments:edit", args=[segment.pk]),
        reverse("segments:static_import", args=[static.pk]),
    ]
    for url in forbidden_gets:
        assert analyst_client.get(url).status_code == 403, url
    forbidden_posts = [
        (reverse("segments:create"), builder_post()),
        (reverse("segments:preview"), builder_post()),
        (reverse("segments:refresh", args=[segment.pk]), {}),
        (reverse("segments:duplicate", args=[segment.pk]), {}),
        (reverse("segments:archive", args=[segment.pk]), {"archived": "1"}),
        (reverse("segments:auto_tag_add", args=[segment.pk]), {"tag": TagFactory().pk}),
        (reverse("segments:static_members"), {"segment": static.pk, "contact_ids[]": ["1"]}),
    ]
    for url, data in forbidden_posts:
        assert analyst_client.post(url, data).status_code == 403, url
    segment.refresh_from_db()
    assert not segment.is_archived and Segment.objects.count() == 2


# List and detail --------------------------------------------------------------------------------


def test_list_page_and_fragment_with_kind_policy_and_sparkline(operator_client):
    segment = segment_create(name="沉睡客户", rule=CITY_RULE)
    today = timezone.localdate()
    SegmentSize.objects.update_or_create(
        segment=segment, day=today - dt.timedelta(days=1), defaults={"member_count": 3}
    )
    SegmentSize.objects.update_or_create(segment=segment, day=today, defaults={"member_count": 5})
    segment_create(name="门店名单", kind=SegmentKind.STATIC)

    page = operator_client.get(reverse("segments:list")).content.decode()
    fragment = operator_client.get(reverse("segments:list"), **HX).content.decode()

    assert "<html" in page and "沉睡客户" in page and "门店名单" in page
    assert "<polyline" in page
    assert fragment.lstrip().startswith('<section id="segment-table"')
    assert "沉睡客户" in fragment and "<html" not in fragment


def test_list_separates_archived_segments(operator_client):
    SegmentFactory(name="在用")
    SegmentFactory(name="归档了", is_archived=True)

    active = operator_client.get(reverse("segments:list")).content.decode()
    archived = operator_client.get(reverse("segments:list") + "?archived=1").content.decode()

    assert "在用" in active and "归档了" not in active
    assert "归档了" in archived and "在用" not in archived


def test_detail_shows_rule_in_words_and_members(operator_client):
    tag = TagFactory(name="VIP")
    inside = ContactFactory(name="上海会员", city="上海")
    ContactFactory(name="北京会员", city="北京")
    other = segment_create(name="老客", rule=CITY_RULE)
    segment = segment_create(
        name="上海",
        rule={
            "op": "and",
            "conditions": [
                {"type": "attribute", "field": "city", "operator": "eq", "value": "上海"},
                {"type": "tag", "match": "none", "tags": [tag.pk]},
                {
                    "op": "or",
                    "conditions": [
                        {"type": "segment", "match": "in", "segment": other.pk},
                        {
                            "type": "event",
                            "name": "purchase",
                            "measure": "count",
                            "operator": "gte",
                            "value": 2,
                            "window": {"last_days": 30},
                        },
                    ],
                },
            ],
        },
    )

    response = operator_client.get(reverse("segments:detail", args=[segment.pk]))
    page = response.content.decode()

    assert response.status_code == 200
    assert "兴趣/VIP" in page  # tag ids are shown by name
    assert "老客" in page  # and segment ids too
    assert "购买：" in page and "购买: " not in page and "30" in page  # as on the timeline
    assert "上海会员" in page and "北京会员" not in page
    fragment = operator_client.get(
        reverse("segments:detail", args=[segment.pk]), **HX
    ).content.decode()
    assert fragment.lstrip().startswith('<section id="segment-members"')
    assert reverse("contacts:detail", args=[inside.pk]) in fragment


# Builder ----------------------------------------------------------------------------------------


def test_create_builds_the_rule_from_the_rows(operator_client):
    tag = TagFactory(name="VIP")
    ContactFactory(city="上海")
    data = builder_post(
        **{
            "r-0.kind": "attribute",
            "r-0.was": "attribute",
            "r-0.field": "city",
            "r-0.field_was": "city",
            "r-0.operator": "in",
            "r-0.value": "上海，杭州",
            "r-1.kind": "group",
            "r-1.op": "not",
            "r-1-0.kind": "tag",
            "r-1-0.was": "tag",
            "r-1-0.match": "any",
            "r-1-0.tags": str(tag.pk),
        }
    )

    response = operator_client.post(reverse("segments:create"), data)

    segment = Segment.objects.get(name="上海高价值")
    assert response.status_code == 302
    assert response["Location"] == reverse("segments:detail", args=[segment.pk])
    assert segment.rule == {
        "op": "and",
        "conditions": [
            {"type": "attribute", "field": "city", "operator": "in", "value": ["上海", "杭州"]},
            {"op": "not", "conditions": [{"type": "tag", "match": "any", "tags": [tag.pk]}]},
        ],
    }
    assert segment.member_count == 1


def test_a_validation_error_is_shown_at_the_offending_condition(operator_client):
    """The error sits in the row of the nested event condition, not in a banner."""
    data = builder_post(
        **{
            "r-0.kind": "attribute",
            "r-0.was": "attribute",
            "r-0.field": "city",
            "r-0.field_was": "city",
            "r-0.operator": "eq",
            "r-0.value": "上海",
            "r-1.kind": "group",
            "r-1.op": "or",
            "r-1-0.kind": "event",
            "r-1-0.was": "event",
            "r-1-0.name": "purchase",
            "r-1-0.measure": "count",
            "r-1-0.operator": "gte",
            "r-1-0.value": "two",
        }
    )

    response = operator_client.post(reverse("segments:create"), data)

    html = response.content.decode()
    assert response.status_code == 422
    assert not Segment.objects.filter(name="上海高价值").exists()
    row = _node_html(html, "r-1-0")
    assert "has-error" in row.split(">", 1)[0]
    assert "须为数字" in row  # the operator's language (zh-Hans by default)
    assert "须为数字" not in _node_html(html, "r-0")
    # What the operator typed is kept
    assert 'value="two"' in row


def test_create_with_a_taken_name_shows_it_on_the_name(operator_client):
    SegmentFactory(name="上海高价值")
    response = operator_client.post(reverse("segments:create"), builder_post())
    assert response.status_code == 422
    assert "already exists" in response.content.decode() or "已存在" in response.content.decode()
    assert Segment.objects.filter(name="上海高价值").count() == 1


def test_create_a_static_list(operator_client):
    page = operator_client.get(reverse("segments:create") + "?kind=static").content.decode()
    assert 'id="rule-builder"' not in page
    data = {
        "name": "门店名单",
        "description": "",
        "kind": "static",
        "refresh_policy": "manual",
        "refresh_interval_minutes": "60",
        "refresh_hour": "3",
    }
    response = operator_client.post(reverse("segments:create"), data)
    segment = Segment.objects.get(name="门店名单")
    assert response.status_code == 302
    assert segment.kind == SegmentKind.STATIC and segment.rule == {}


def test_edit_saves_policy_and_rule(operator_client):
    segment = segment_create(name="上海", rule=CITY_RULE)
    data = form_data(
        operator_client.get(reverse("segments:edit", args=[segment.pk])).content.decode()
    )
    data["refresh_policy"] = ["interval"]
    data["refresh_interval_minutes"] = ["30"]
    data["r-0.value"] = ["杭州"]

    response = operator_client.post(reverse("segments:edit", args=[segment.pk]), data)

    segment.refresh_from_db()
    assert response.status_code == 302
    assert segment.refresh_policy == "interval" and segment.refresh_interval_minutes == 30
    assert segment.rule["conditions"][0]["value"] == "杭州"


def test_a_cycle_is_refused_at_the_segment_condition(operator_client):
    a = segment_create(name="A", rule=CITY_RULE)
    b = segment_create(
        name="B", rule={"op": "and", "conditions": [{"type": "segment", "segment": a.pk}]}
    )
    data = form_data(operator_client.get(reverse("segments:edit", args=[a.pk])).content.decode())
    data.update(
        {
            "r-0.kind": ["segment"],
            "r-0.was": ["segment"],
            "r-0.match": ["in"],
            "r-0.segment": [str(b.pk)],
        }
    )
    response = operator_client.post(reverse("segments:edit", args=[a.pk]), data)
    assert response.status_code == 422
    assert "循环" in _node_html(response.content.decode(), "r-0")
    a.refresh_from_db()
    assert a.rule == CITY_RULE


def test_preview_counts_and_samples(operator_client):
    ContactFactory(name="上海甲", city="上海")
    ContactFactory(name="北京乙", city="北京")
    data = builder_post(
        **{
            "r-0.kind": "attribute",
            "r-0.was": "attribute",
            "r-0.field": "city",
            "r-0.field_was": "city",
            "r-0.operator": "eq",
            "r-0.value": "上海",
        }
    )

    html = operator_client.post(reverse("segments:preview"), data, **HX).content.decode()

    assert 'data-count="1"' in html
    assert "上海甲" in html and "北京乙" not in html


def test_preview_of_an_invalid_rule_shows_the_error_instead_of_a_count(operator_client):
    data = builder_post(
        **{
            "r-0.kind": "attribute",
            "r-0.was": "attribute",
            "r-0.field": "lead_score",
            "r-0.field_was": "lead_score",
            "r-0.operator": "gt",
            "r-0.value": "many",
        }
    )
    html = operator_client.post(reverse("segments:preview"), data, **HX).content.decode()
    assert "data-count" not in html
    assert 'data-error-path="r-0"' in html and "须为数字" in html


def test_preview_rejects_a_cycle_for_the_segment_being_edited(operator_client):
    a = segment_create(name="A", rule=CITY_RULE)
    b = segment_create(
        name="B", rule={"op": "and", "conditions": [{"type": "segment", "segment": a.pk}]}
    )
    data = builder_post(
        segment=str(a.pk),
        **{"r-0.kind": "segment", "r-0.was": "segment", "r-0.segment": str(b.pk)},
    )
    html = operator_client.post(reverse("segments:preview"), data, **HX).content.decode()
    assert "循环" in html


# Segment actions --------------------------------------------------------------------------------


def test_refresh_now_runs_in_the_worker_and_the_page_polls(
    operator_client, django_capture_on_commit_callbacks
):
    segment = segment_create(name="上海", rule=CITY_RULE)
    ContactFactory(city="上海")
    before = segment.last_refreshed_at

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = operator_client.post(reverse("segments:refresh", args=[segment.pk]), **HX)

    assert len(callbacks) == 1
    html = response.content.decode()
    assert 'id="refresh-status"' in html and 'hx-trigger="every 1s"' in html
    status_url = re.search(r'hx-get="([^"]+)"', html).group(1).replace("&amp;", "&")
    segment.refresh_from_db()
    assert segment.member_count == 1 and segment.last_refreshed_at > before
    done = operator_client.get(status_url, **HX)
    assert "every 1s" not in done.content.decode()
    assert done["HX-Trigger"] == "segment-refreshed"


def test_refresh_status_keeps_polling_until_the_refresh_lands(operator_client):
    segment = segment_create(name="上海", rule=CITY_RULE)
    url = reverse("segments:refresh_status", args=[segment.pk])
    html = operator_client.get(
        url, {"since": segment.last_refreshed_at.isoformat()}, **HX
    ).content.decode()
    assert "every 1s" in html


def test_duplicate(operator_client):
    segment = segment_create(name="上海", rule=CITY_RULE)
    response = operator_client.post(reverse("segments:duplicate", args=[segment.pk]))
    copy = Segment.objects.exclude(pk=segment.pk).get()
    assert response["Location"] == reverse("segments:detail", args=[copy.pk])
    assert copy.rule == CITY_RULE and copy.name.startswith("上海")


def test_archive_is_refused_while_another_segment_reads_it(operator_client):
    base = segment_create(name="A", rule=CITY_RULE)
    segment_create(
        name="读者", rule={"op": "and", "conditions": [{"type": "segment", "segment": base.pk}]}
    )

    response = operator_client.post(
        reverse("segments:archive", args=[base.pk]), {"archived": "1"}, follow=True
    )

    base.refresh_from_db()
    assert not base.is_archived
    assert "读者" in response.content.decode()


def test_archive_and_restore(operator_client):
    segment = segment_create(name="A", rule=CITY_RULE)
    operator_client.post(reverse("segments:archive", args=[segment.pk]), {"archived": "1"})
    segment.refresh_from_db()
    assert segment.is_archived
    operator_client.post(reverse("segments:archive", args=[segment.pk]), {"archived": "0"})
    segment.refresh_from_db()
    assert not segment.is_archived


def test_auto_tag_rules_add_and_remove(operator_client):
    contact = ContactFactory(city="上海")
    segment = segment_create(name="上海", rule=CITY_RULE)
    tag = TagFactory(name="上海客")

    operator_client.post(
        reverse("segments:auto_tag_add", args=[segment.pk]),
        {"tag": tag.pk, "remove_on_exit": "on"},
    )

    rule = AutoTagRule.objects.get(segment=segment)
    assert rule.tag == tag and rule.remove_on_exit
    assert ContactTag.objects.filter(contact=contact, tag=tag).exists()
    page = operator_client.get(reverse("segments:detail", args=[segment.pk])).content.decode()
    assert "上海客" in page
    operator_client.post(reverse("segments:auto_tag_remove", args=[segment.pk, rule.pk]))
    assert not AutoTagRule.objects.exists()


# Static lists -----------------------------------------------------------------------------------


def test_static_import_adds_matches_and_reports_unmatched_rows(
    operator_client, django_capture_on_commit_callbacks
):
    segment = segment_create(name="名单", kind=SegmentKind.STATIC)
    known = ContactFactory()
    IdentityFactory(contact=known, kind=IdentityKind.PHONE, value="+8613800138000")
    upload = SimpleUploadedFile(
        "list.csv", "手机号\n13800138000\n13900000000\nnot-a-phone\n".encode(), "text/csv"
    )

    with django_capture_on_commit_callbacks(execute=True):
        started = operator_client.post(
            reverse("segments:static_import", args=[segment.pk]),
            {"file": upload, "match_by": "phone"},
            **HX,
        )
    assert started.status_code == 200
    assert started.content.decode().lstrip().startswith('<div id="static-import"')
    # The import ran in the worker (inline here); the page it pushed shows the result.
    response = operator_client.get(started["HX-Push-Url"])

    html = response.content.decode()
    assert response.status_code == 200
    assert SegmentMembership.objects.filter(segment=segment, contact=known).exists()
    assert "13900000000" in html and "not-a-phone" in html
    assert ">3<" in html and ">4<" in html  # row numbers as in the file (title row is 1)


def test_static_import_into_a_rule_based_segment_is_refused(operator_client):
    segment = segment_create(name="上海", rule=CITY_RULE)
    upload = SimpleUploadedFile("list.csv", b"13800138000\n", "text/csv")
    response = operator_client.post(
        reverse("segments:static_import", args=[segment.pk]),
        {"file": upload, "match_by": "phone"},
    )
    assert response.status_code == 422
    # The service's message, in the operator's language (zh-Hans by default).
    assert "只有静态名单可以手动添加或移除成员。" in response.content.decode()


def test_static_members_from_the_contact_list_selection(operator_client):
    segment = segment_create(name="名单", kind=SegmentKind.STATIC)
    a, b = ContactFactory(), ContactFactory()

    response = operator_client.post(
        reverse("segments:static_members"),
        {"segment": segment.pk, "contact_ids[]": [a.pk, b.pk], "next": "/contacts/"},
    )

    assert response.status_code == 302 and response["Location"] == "/contacts/"
    assert set(segment.memberships.values_list("contact_id", flat=True)) == {a.pk, b.pk}
    operator_client.post(
        reverse("segments:static_members"),
        {"segment": segment.pk, "contact_ids[]": [a.pk], "operation": "remove"},
    )
    assert set(segment.memberships.values_list("contact_id", flat=True)) == {b.pk}


def test_static_members_from_the_contact_list_filter(operator_client):
    segment = segment_create(name="名单", kind=SegmentKind.STATIC)
    shanghai = ContactFactory(name="上海甲")
    ContactFactory(name="北京乙")

    operator_client.post(
        reverse("segments:static_members"),
        {"segment": segment.pk, "all_matching": "1", "q": "上海甲"},
    )

    assert list(segment.memberships.values_list("contact_id", flat=True)) == [shanghai.pk]


def test_static_members_refuse_a_rule_based_segment_and_bad_ids(operator_client):
    segment = segment_create(name="上海", rule=CITY_RULE)
    static = segment_create(name="名单", kind=SegmentKind.STATIC)
    contact = ContactFactory(city="北京")

    first = operator_client.post(
        reverse("segments:static_members"),
        {"segment": segment.pk, "contact_ids[]": [contact.pk]},
        follow=True,
    )
    second = operator_client.post(
        reverse("segments:static_members"),
        {"segment": static.pk, "contact_ids[]": ["abc"]},
        follow=True,
    )

    assert "static list" in first.content.decode() or "静态" in first.content.decode()
    assert "abc" in second.content.decode()
    assert not SegmentMembership.objects.filter(contact=contact).exists()
    assert not static.memberships.exists()


# Explain ----------------------------------------------------------------------------------------


def test_explain_marks_each_condition_for_a_contact(operator_client):
    tag = TagFactory(name="VIP")
    contact = ContactFactory(name="林小雨", city="上海")
    segment = segment_create(
        name="上海 VIP",
        rule={
            "op": "and",
            "conditions": [
                {"type": "attribute", "field": "city", "operator": "eq", "value": "上海"},
                {"type": "tag", "match": "any", "tags": [tag.pk]},
            ],
        },
    )

    response = operator_client.get(
        reverse("segments:explain", args=[segment.pk]), {"q": "林小雨"}, **HX
    )

    html = response.content.decode()
    assert html.lstrip().startswith('<section id="explain"')
    lines = re.findall(r'class="rule-depth-(\d) explain-(true|false)"', html)
    assert lines == [("0", "false"), ("1", "true"), ("1", "false")]
    ContactTag.objects.create(contact=contact, tag=tag)
    html = operator_client.get(
        reverse("segments:explain", args=[segment.pk]), {"contact": contact.pk}
    ).content.decode()
    assert re.findall(r"explain-(true|false)", html) == ["true", "true", "true"]


def test_explain_for_a_static_list_and_unknown_contacts(operator_client):
    segment = segment_create(name="名单", kind=SegmentKind.STATIC)
    contact = ContactFactory(name="林小雨")
    segment_static_add(segment=segment, contact_ids=[contact.pk])
    url = reverse("segments:explain", args=[segment.pk])

    member = operator_client.get(url, {"contact": contact.pk}).content.decode()
    nobody = operator_client.get(url, {"q": "没有这个人"}).content.decode()

    assert "explain-true" not in member and "林小雨" in member
    assert "explain-" not in nobody.split('id="explain"', 1)[1]


def test_contact_segments_panel(operator_client):
    contact = ContactFactory(city="上海")
    segment = segment_create(name="上海", rule=CITY_RULE)

    page = operator_client.get(reverse("segments:contact_segments", args=[contact.pk]))
    fragment = operator_client.get(
        reverse("segments:contact_segments", args=[contact.pk]), **HX
    ).content.decode()

    assert page.status_code == 200 and "上海" in page.content.decode()
    assert fragment.lstrip().startswith('<section id="contact-segments"')
    assert reverse("segments:detail", args=[segment.pk]) in fragment


def test_store_staff_get_an_empty_segments_panel(client):
    from contacts.roles import STORE_STAFF

    roles_sync()
    user = user_with_role(STORE_STAFF)
    contact = ContactFactory(city="上海", owner=user)
    segment_create(name="上海", rule=CITY_RULE)
    client.force_login(user)

    response = client.get(reverse("segments:contact_segments", args=[contact.pk]), **HX)

    assert response.status_code == 200
    assert "上海</a>" not in response.content.decode()
    assert client.get(reverse("segments:list")).status_code == 403


def test_export_members_starts_a_contact_export_limited_to_the_segment(operator_client):
    ContactFactory(city="上海")
    ContactFactory(city="北京")
    segment = segment_create(name="上海", rule=CITY_RULE)
    detail = operator_client.get(reverse("segments:detail", args=[segment.pk])).content.decode()
    export_url = f"{reverse('contacts_io:export')}?segment={segment.pk}"
    assert export_url in detail

    page = operator_client.get(export_url)

    assert page.status_code == 200
    assert page.context["count"] == 1


def test_list_page_query_budget_does_not_grow_with_segments(
    operator_client, django_assert_max_num_queries
):
    for i in range(5):
        segment_create(name=f"分群{i}", rule=CITY_RULE)
    operator_client.get(reverse("segments:list"))  # warm the session and permission caches
    with django_assert_max_num_queries(6) as five:
        operator_client.get(reverse("segments:list"), **HX)
    for i in range(5, 15):
        segment_create(name=f"分群{i}", rule=CITY_RULE)
    with django_assert_max_num_queries(len(five.captured_queries)):
        operator_client.get(reverse("segments:list"), **HX)


def test_refresh_now_without_htmx_redirects_to_a_polling_page(operator_client):
    segment = segment_create(name="上海", rule=CITY_RULE)

    response = operator_client.post(reverse("segments:refresh", args=[segment.pk]))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("segments:detail", args=[segment.pk]))
    page = operator_client.get(response["Location"]).content.decode()
    assert 'hx-trigger="every 1s"' in page
    assert reverse("segments:refresh_status", args=[segment.pk]) in page


def test_enter_in_a_text_box_saves_rather_than_removing_a_row(operator_client):
    segment = segment_create(name="上海", rule=CITY_RULE)
    html = operator_client.get(reverse("segments:edit", args=[segment.pk])).content.decode()
    form = html[html.index('<form id="segment-form"') :]
    first_submit = re.search(r"<button[^>]*type=\"submit\"[^>]*>", form).group(0)
    assert 'name="action"' not in first_submit


def test_the_contact_list_bulk_form_adds_to_a_static_list(operator_client):
    """The contact list loads the picker into its bulk form, whose fields are `ids`/`scope`."""
    static = segment_create(name="活动名单", kind=SegmentKind.STATIC)
    segment_create(name="规则分群", rule=CITY_RULE)
    a, b, other = ContactFactory(name="甲"), ContactFactory(name="乙"), ContactFactory(name="丙")

    page = operator_client.get(reverse("contacts:list")).content.decode()
    assert reverse("segments:static_picker") in page
    picker = operator_client.get(reverse("segments:static_picker"), {"next": "/contacts/"})
    html = picker.content.decode()
    assert "活动名单" in html and "规则分群" not in html  # only static lists are offered
    assert 'form="bulk-form"' in html

    operator_client.post(
        reverse("segments:static_members"),
        {"segment": static.pk, "ids": [a.pk, b.pk], "scope": "selected", "operation": "add"},
    )
    assert set(static.memberships.values_list("contact_id", flat=True)) == {a.pk, b.pk}
    operator_client.post(
        reverse("segments:static_members"),
        {"segment": static.pk, "scope": "all", "q": "丙", "operation": "add"},
    )
    assert other.pk in set(static.memberships.values_list("contact_id", flat=True))


def test_the_static_picker_needs_the_change_permission(client):
    from tests.factories import user_with_role

    roles_sync()
    client.force_login(user_with_role(ANALYST))
    assert client.get(reverse("segments:static_picker")).status_code == 403
