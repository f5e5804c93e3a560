"""Operator audit, second round: rule errors in the builder's words, what "reachable" means,
title rows of static-list files, counts read after the job they follow, and a demo with lead
scores."""

import re
from contextlib import contextmanager
from io import StringIO

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.db import connection
from django.urls import reverse
from django.utils import translation
from django.utils.translation import trans_real
from openpyxl import Workbook

from contacts.models import ConsentChannel, Contact, IdentityKind
from contacts.services.consent import consent_record
from core import jobs
from core.errors import ValidationFailed
from core.models import Job, JobStatus
from journeys.demo import services as demo
from segments import services
from segments.forms import rule_error_message
from segments.models import LeadScoreAward, LeadScoreRule, LeadStageThreshold, SegmentKind
from segments.rules.schema import validate_rule
from segments.services import (
    rule_queryset,
    segment_create,
    segment_refresh_by_id,
    segment_refresh_request,
    segment_static_members_job_run,
)
from segments.static_import import (
    STATIC_IMPORT_JOB_KIND,
    segment_static_import,
    segment_static_import_job_run,
)
from tests.factories import ContactFactory, IdentityFactory
from tests.segments.posts import builder_post

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
EN = {"HTTP_ACCEPT_LANGUAGE": "en"}

# The zh-hans texts of the new messages (the .po files are merged later): set in the loaded
# catalogue, so that these tests also prove the builder shows them through it.
ZH = {
    "fill in both the start and the end date (like 2026-05-17), or the number of days": (
        "请填写开始和结束日期（如 2026-05-17），或填写天数"
    ),
}


@pytest.fixture
def zh_messages(monkeypatch):
    catalog = trans_real.translation("zh-hans")._catalog._catalogs[0]
    for msgid, text in ZH.items():
        monkeypatch.setitem(catalog, msgid, text)


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


# --- 3. rule errors in the builder's words ----------------------------------------------------

START_ONLY = {
    "r-0.kind": "event",
    "r-0.was": "event",
    "r-0.name": "purchase",
    "r-0.measure": "performed",
    "r-0.measure_was": "performed",
    "r-0.window": "between",
    "r-0.window_from": "2026-05-01",
    "r-0.window_to": "",
}


def _row_error(html: str) -> str:
    found = re.search(r'<div class="field-error rule-error" role="alert">(.*?)</div>', html, re.S)
    assert found, "no error at the row"
    return re.sub(r"<[^>]+>", "", found.group(1))


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("en", "fill in both the start and the end date (like 2026-05-17), or the number of days"),
        ("zh-hans", "请填写开始和结束日期（如 2026-05-17），或填写天数"),
    ],
)
def test_a_window_with_only_a_start_date_asks_for_both_dates_in_the_builders_words(
    operator_client, zh_messages, language, expected
):
    response = operator_client.post(
        reverse("segments:create"),
        builder_post(START_ONLY, name="五月买过"),
        HTTP_ACCEPT_LANGUAGE=language,
    )

    assert response.status_code == 422
    error = _row_error(response.content.decode())
    assert expected in error
    for key in ("last_days", "from", " to "):
        assert key not in error


def test_the_services_still_get_the_path_of_the_window():
    rule = {"type": "event", "name": "purchase", "window": {"from": "2026-05-01", "to": ""}}

    with pytest.raises(ValidationFailed) as caught, translation.override("en"):
        validate_rule({"op": "and", "conditions": [rule]})

    assert caught.value.code == "invalid_rule"
    assert caught.value.details == {"path": "rule.conditions[0].window"}
    assert caught.value.message.startswith("rule.conditions[0].window: ")


# Keys of the rule language no operator types or picks: none may show in a message.
RAW_KEYS = re.compile(
    r"last_days|\[from, to\]|'op'|\bis_true\b|\bis_false\b|\bnot_in\b|\bgte\b|\blte\b|\bneq\b"
    r"|not_performed|within_last_days|more_than_days_ago|wechat_oa|miniprogram|\bis_koc\b"
    r"|score_gte|\bnot_exists\b|\bcontains_any\b|\bstartswith\b|\bphone_call\b"
    r"|first_purchase|\['"
)
BAD_CONDITIONS = [
    {"type": "event", "name": "purchase", "window": {"from": "2026-05-01", "to": ""}},
    {"type": "event", "name": "purchase", "window": "last week"},
    {"type": "event", "name": "purchase", "measure": "often"},
    {"type": "event", "name": "purchase", "measure": "count", "operator": "on", "value": 1},
    {"type": "event", "name": "purchase", "measure": "count", "operator": "between", "value": [3]},
    {"type": "event", "name": "purchase", "measure": "last", "operator": "gt", "value": 1},
    {"type": "event", "name": "purchase", "filters": ["amount > 100"]},
    {"type": "event", "name": "p", "filters": [{"property": "a", "operator": "like", "value": 1}]},
    {"type": "attribute", "field": "city", "operator": "gte", "value": "上海"},
    {"type": "attribute", "field": "lead_score", "operator": "between", "value": [10, ""]},
    {"type": "attribute", "field": "birthday", "operator": "between", "value": ["2026-01-01", ""]},
    {"type": "attribute", "field": "city", "operator": "in", "value": []},
    {"type": "attribute", "field": "lifecycle_stage", "operator": "eq", "value": "vip"},
    {"type": "membership", "field": "is_member", "operator": "eq"},
    {"type": "membership", "field": "level"},
    {"type": "consent", "channel": "fax", "state": "granted"},
    {"type": "consent", "channel": "sms", "state": "maybe"},
    {"type": "reachable", "channel": "fax"},
    {"type": "reachable", "channel": "sms", "value": "yes"},
    {"type": "segment", "match": "inside", "segment": 1},
    {"type": "rfm", "match": "inside", "layers": ["champions"]},
    {"type": "koc", "operator": "is_influencer"},
    {"type": "tag", "match": "some", "tags": [1]},
    {"type": "spreadsheet"},
]


@pytest.mark.parametrize("language", ["en", "zh-hans"])
@pytest.mark.parametrize("condition", BAD_CONDITIONS, ids=lambda c: str(c)[:60])
def test_no_rule_error_shows_the_rule_languages_keys(condition, language):
    rule = {"op": "and", "conditions": [condition]}
    with translation.override(language):
        with pytest.raises(ValidationFailed) as caught:
            validate_rule(rule)
        message = rule_error_message(caught.value, rule=rule)

    assert message
    assert not RAW_KEYS.search(message), message


def test_a_wrong_comparison_lists_the_builders_names_for_the_allowed_ones():
    rule = {"type": "attribute", "field": "city", "operator": "gte", "value": "上海"}

    with pytest.raises(ValidationFailed) as caught, translation.override("en"):
        validate_rule(rule)

    assert caught.value.details == {"path": "rule.operator"}
    assert "“equals”" in caught.value.message and "“starts with”" in caught.value.message
    assert "eq," not in caught.value.message


# --- 4. what "reachable" means, said on its row -------------------------------------------------

REACHABLE_ROW = {
    "r-0.kind": "reachable",
    "r-0.was": "reachable",
    "r-0.channel": "sms",
    "r-0.value": "true",
}


def test_the_reachable_row_says_what_it_counts_and_points_to_consent_for_opt_in(operator_client):
    html = operator_client.post(
        reverse("segments:create"), builder_post(REACHABLE_ROW), **HX, **EN
    ).content.decode()

    help_text = re.search(r'<p id="id_r-0_reach_help"[^>]*>(.*?)</p>', html, re.S)
    assert help_text, "no help on the reachable row"
    text = help_text.group(1)
    assert "has not withdrawn marketing consent" in text
    assert "never gave consent count as reachable too" in text
    assert "Consent condition" in text
    assert 'aria-describedby="id_r-0_reach_help"' in html


def test_the_help_is_only_on_reachable_rows(operator_client):
    html = operator_client.post(
        reverse("segments:create"),
        builder_post({**REACHABLE_ROW, "r-0.kind": "consent", "r-0.was": "consent"}),
        **HX,
        **EN,
    ).content.decode()

    assert "reach_help" not in html


def test_reachable_still_counts_contacts_who_never_gave_consent():
    never_asked = ContactFactory(phone="+8613800000001")
    withdrew = ContactFactory(phone="+8613800000002")
    consent_record(
        contact=withdrew,
        channel=ConsentChannel.SMS,
        purpose="marketing",
        granted=False,
        source="h5",
    )
    ContactFactory(phone="")
    rule = {"type": "reachable", "channel": "sms", "value": True}

    assert set(rule_queryset(rule=rule)) == {never_asked}


# --- 5. title rows of static-list files ---------------------------------------------------------


@pytest.fixture
def static():
    return segment_create(name="活动名单", kind=SegmentKind.STATIC)


@pytest.fixture
def known():
    contact = ContactFactory()
    IdentityFactory(contact=contact, kind=IdentityKind.PHONE, value="+8613800138000")
    IdentityFactory(contact=contact, kind=IdentityKind.EMAIL, value="li@example.com")
    IdentityFactory(contact=contact, kind=IdentityKind.EXTERNAL_ID, value="M-1001")
    return contact


def _csv(tmp_path, text: str):
    path = tmp_path / "list.csv"
    path.write_text(text, encoding="utf-8-sig")
    return path


@pytest.mark.parametrize(
    ("title", "match_by", "value"),
    [
        ("手机号码", "phone", "13800138000"),
        ("电话号码", "phone", "13800138000"),
        ("联系电话", "phone", "13800138000"),
        ("手机号（必填）", "phone", "13800138000"),
        ("手机号 (required)", "phone", "13800138000"),
        ("Mobile", "phone", "13800138000"),
        ("Phone Number", "phone", "13800138000"),
        ("PHONE_NUMBER", "phone", "13800138000"),
        ("E-mail", "email", "li@example.com"),
        ("邮箱地址", "email", "li@example.com"),
        ("Email Address", "email", "li@example.com"),
        ("会员号", "external_id", "M-1001"),
        ("会员编号", "external_id", "M-1001"),
        ("客户编号", "external_id", "M-1001"),
        ("External ID", "external_id", "M-1001"),
        ("UnionID", "unionid", "oUnion-1"),
    ],
)
def test_a_usual_title_row_is_skipped_not_reported_as_unmatched(
    tmp_path, static, known, title, match_by, value
):
    if match_by == "unionid":
        IdentityFactory(contact=known, kind=IdentityKind.WECHAT_UNIONID, value=value)

    report = segment_static_import(
        segment=static, file=_csv(tmp_path, f"{title}\n{value}\n"), match_by=match_by
    )

    assert (report.rows, report.matched, report.unmatched) == (1, 1, 0)
    assert report.unmatched_first == []
    assert set(static.memberships.values_list("contact_id", flat=True)) == {known.pk}


def test_a_title_row_in_a_workbook_is_skipped_too(tmp_path, static, known):
    workbook = Workbook()
    for value in ("手机号码（必填）", "13800138000"):
        workbook.active.append([value])
    path = tmp_path / "list.xlsx"
    workbook.save(path)

    report = segment_static_import(segment=static, file=path, match_by="phone")

    assert (report.rows, report.matched, report.unmatched) == (1, 1, 0)


def test_a_first_row_that_is_a_value_is_still_a_row(tmp_path, static, known):
    report = segment_static_import(
        segment=static, file=_csv(tmp_path, "13900000000\n13800138000\n"), match_by="phone"
    )

    assert (report.rows, report.matched, report.unmatched) == (2, 1, 1)
    assert report.unmatched_first[0][:2] == (1, "13900000000")


def test_the_progress_does_not_count_a_title_row(operator_client, static, known):
    upload = SimpleUploadedFile("list.csv", b"Phone Number\n13800138000\n13900000000\n")

    operator_client.post(
        reverse("segments:static_import", args=[static.pk]), {"file": upload, "match_by": "phone"}
    )

    assert Job.objects.get(kind=STATIC_IMPORT_JOB_KIND).total == 2


# --- 6. counts read after the job they follow ---------------------------------------------------


@contextmanager
def job_ends_between_the_reads(finish):
    """Run `finish` (the worker ending the job) between the page's first reads of the job and
    of the segment, whichever it reads first: the moment a page that read the segment first
    showed the job done over the counts from before it."""
    state = {"seen": set(), "finished": False}

    def wrapper(execute, sql, params, many, context):
        head = sql.split(" WHERE ", 1)[0]
        if not state["finished"] and head.lstrip().upper().startswith("SELECT"):
            kind = (
                "job"
                if '"core_job"' in head
                else "segment"
                if '"segments_segment"' in head
                else None
            )
            if kind is not None and kind not in state["seen"]:
                if state["seen"]:
                    state["finished"] = True
                    finish()
                state["seen"].add(kind)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        yield state


def _queued_import(client, static, django_capture_on_commit_callbacks) -> Job:
    upload = SimpleUploadedFile("list.csv", "手机号\n13800138000\n".encode())
    with django_capture_on_commit_callbacks(execute=False):
        client.post(
            reverse("segments:static_import", args=[static.pk]),
            {"file": upload, "match_by": "phone"},
        )
    return Job.objects.get(kind=STATIC_IMPORT_JOB_KIND)


def test_an_import_ending_while_the_page_polls_never_shows_the_count_from_before_it(
    operator_client, static, known, django_capture_on_commit_callbacks
):
    job = _queued_import(operator_client, static, django_capture_on_commit_callbacks)
    url = f"{reverse('segments:static_import', args=[static.pk])}?job={job.pk}"

    with job_ends_between_the_reads(lambda: segment_static_import_job_run(job_id=job.pk)) as race:
        html = operator_client.get(url, **HX, **EN).content.decode()

    assert race["finished"]
    assert "The list now holds 0" not in html
    # Read before it ended, the job is still followed; the next poll shows its result.
    assert "every 1s" in html or "The list now holds 1 contact." in html
    html = operator_client.get(url, **HX, **EN).content.decode()
    assert "The list now holds 1 contact." in html and "every 1s" not in html


def test_the_list_page_watching_an_add_job_never_shows_the_count_from_before_it(
    operator, operator_client, static
):
    contacts = [ContactFactory(name=f"上海{i}") for i in range(3)]
    job = jobs.job_create(
        kind=services.STATIC_MEMBERS_JOB_KIND,
        created_by=operator,
        params={"segment_id": static.pk, "remove": False, "filter_params": {"q": ["上海"]}},
    )
    url = f"{reverse('segments:detail', args=[static.pk])}?job={job.pk}"

    with job_ends_between_the_reads(lambda: segment_static_members_job_run(job_id=job.pk)) as race:
        page = operator_client.get(url, **EN)

    assert race["finished"]
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.result["changed"] == len(contacts)
    shown = page.context["segment"].member_count
    if page.context["static_job"].status == JobStatus.SUCCEEDED:
        assert shown == len(contacts)
    assert {c.pk for c in page.context["page"].items} <= {c.pk for c in contacts}


def test_a_refresh_ending_while_its_status_is_polled_never_shows_the_count_from_before_it(
    operator, operator_client
):
    segment = segment_create(
        name="上海", rule={"type": "attribute", "field": "city", "operator": "eq", "value": "上海"}
    )
    ContactFactory.create_batch(2, city="上海")  # not members until the segment refreshes
    job = segment_refresh_request(segment=segment, actor=operator)
    url = f"{reverse('segments:refresh_status', args=[segment.pk])}?job={job.pk}"

    def finish():
        segment_refresh_by_id(segment_id=segment.pk, job_id=job.pk)

    with job_ends_between_the_reads(finish) as race:
        response = operator_client.get(url, **HX, **EN)

    assert race["finished"]
    html = response.content.decode()
    members = re.search(r'Members</span><span class="mini-value">([\d,]+)<', html).group(1)
    if "every 1s" not in html:  # shown as done: with the count it left
        assert members == "2"
    # The next poll shows it done, with that count.
    html = operator_client.get(url, **HX, **EN).content.decode()
    assert "every 1s" not in html
    assert re.search(r'Members</span><span class="mini-value">2<', html)


def test_the_detail_page_reads_the_refresh_job_before_the_segment(operator, operator_client):
    segment = segment_create(
        name="上海", rule={"type": "attribute", "field": "city", "operator": "eq", "value": "上海"}
    )
    ContactFactory.create_batch(2, city="上海")
    job = segment_refresh_request(segment=segment, actor=operator)

    def finish():
        segment_refresh_by_id(segment_id=segment.pk, job_id=job.pk)

    with job_ends_between_the_reads(finish) as race:
        page = operator_client.get(reverse("segments:detail", args=[segment.pk]), **EN)

    assert race["finished"]
    if not page.context["pending"]:
        assert page.context["segment"].member_count == 2


# --- 9. the demo has lead scores ----------------------------------------------------------------


def _seed(contacts: int = 50) -> str:
    out = StringIO()
    call_command("seed_demo", contacts=contacts, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_the_demo_has_lead_scoring_rules_a_threshold_and_scores(client):
    output = _seed()

    rules = {r.name: r for r in LeadScoreRule.objects.all()}
    assert set(rules) == {"购买商品", "加入购物车", "浏览商品", "一线城市护肤兴趣客户"}
    purchase = rules["购买商品"]
    assert (purchase.event_name, purchase.points, purchase.cap_period) == ("purchase", 20, "week")
    assert rules["浏览商品"].cap_period == "day"
    threshold = LeadStageThreshold.objects.select_related("stage").get()
    assert (threshold.stage.key, threshold.min_score) == ("interested", 60)
    # The scores are worked out: every purchase in the demo's 90 days gave points.
    buyers = set(
        Contact.objects.filter(events__name="purchase").values_list("pk", flat=True).distinct()
    )
    awarded = set(LeadScoreAward.objects.filter(rule=purchase).values_list("contact_id", flat=True))
    assert buyers and awarded == buyers
    scored = Contact.objects.filter(lead_score__gt=0)
    assert scored.exists()
    assert f"Lead scores: {scored.count():,} contacts scored" in output
    # The threshold moved every new contact that reached it.
    assert not Contact.objects.filter(lead_score__gte=60, lifecycle_stage__key="new").exists()

    from django.contrib.auth import get_user_model

    client.force_login(get_user_model().objects.get(username="demo"))
    page = client.get(reverse("segments:scoring"), **EN).content.decode()
    for name in rules:
        assert name in page


def test_seeding_again_keeps_the_rules_and_scores(client):
    _seed()
    rules = list(LeadScoreRule.objects.order_by("pk").values_list("pk", "name"))
    scores = dict(Contact.objects.values_list("pk", "lead_score"))
    awards = LeadScoreAward.objects.count()
    changed = LeadScoreRule.objects.get(name="购买商品")
    changed.points = 30  # an operator's change stays
    changed.save(update_fields=["points"])

    output = _seed()

    assert list(LeadScoreRule.objects.order_by("pk").values_list("pk", "name")) == rules
    assert LeadScoreRule.objects.get(name="购买商品").points == 30
    assert LeadStageThreshold.objects.count() == 1
    assert LeadScoreAward.objects.count() == awards
    assert dict(Contact.objects.values_list("pk", "lead_score")) == scores
    assert "Lead scores: already computed; kept." in output


def test_a_big_demo_leaves_the_scores_to_the_worker(monkeypatch):
    monkeypatch.setattr(demo, "LEAD_SCORES_INLINE_UP_TO", 10)

    output = _seed(contacts=20)

    assert LeadScoreRule.objects.count() == 4
    assert not LeadScoreAward.objects.exists()
    assert "the worker works the scores out in the background" in output
