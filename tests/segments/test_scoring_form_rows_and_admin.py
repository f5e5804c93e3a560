"""The scoring rule form keeps every property filter a rule has (and offers rows for more), and
the Django admin edits scoring rules and awards as the scoring services do: rules are checked
and their awards follow, and the stored scores follow the awards."""

import datetime as dt
import html
import re

import pytest
from django.urls import reverse
from django.utils import timezone, translation

from contacts.models import Contact
from contacts.services import event_record
from core.errors import ValidationFailed
from segments import scoring
from segments.models import LeadScoreAward, LeadScoreRule
from segments.scoring import MAX_PROPERTY_FILTERS
from segments.scoring_forms import ADD_FILTER_ACTION, FILTER_ROWS
from tests.factories import ContactFactory
from tests.segments.scoring_data import event_at, half_life, stored_score
from tests.segments.test_admin import admin_post, form_data

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}
RULE_ADD = reverse("admin:segments_leadscorerule_add")
AWARDS = reverse("admin:segments_leadscoreaward_changelist")


def amount_filters(n: int) -> list[dict]:
    """`n` distinct filters: amount ≥ 1 … amount ≥ n."""
    return [{"property": "amount", "operator": "gte", "value": i + 1} for i in range(n)]


def filtered_rule(n: int) -> LeadScoreRule:
    return scoring.score_rule_create(
        data={
            "name": "大额订单",
            "kind": "event",
            "event_name": "purchase",
            "points": 10,
            "property_filters": amount_filters(n),
        }
    )


def page_text(response) -> str:
    return html.unescape(response.content.decode())


def filter_inputs(page: str) -> list[int]:
    """The indexes of the filter rows the page shows (one property input a row)."""
    return [int(i) for i in re.findall(r'name="f(\d+)_property"', page)]


def shown_form(client, url: str, **changes) -> dict[str, str]:
    """What the rule form page posts back as shown, with `changes` applied."""
    data = form_data(client.get(url).context["form"])
    data.update(changes)
    return data


# --- The rule form's filter rows ----------------------------------------------------------------


def test_a_rule_with_six_filters_shows_them_all_and_an_empty_row(operator_client):
    rule = filtered_rule(6)

    page = page_text(operator_client.get(reverse("segments:scoring_rule_edit", args=[rule.pk])))

    assert filter_inputs(page) == list(range(7))
    for i in range(6):
        assert re.search(rf'name="f{i}_value"[^>]*value="{i + 1}"', page)
    assert not re.search(r'name="f6_value"[^>]*value=', page)


def test_editing_a_rule_with_six_filters_keeps_all_six_and_can_add_a_seventh(operator_client):
    rule = filtered_rule(6)
    url = reverse("segments:scoring_rule_edit", args=[rule.pk])

    response = operator_client.post(url, shown_form(operator_client, url, points="15"))

    assert response.status_code == 302
    rule.refresh_from_db()
    assert rule.points == 15 and rule.property_filters == amount_filters(6)

    seventh = {"f6_property": "channel", "f6_operator": "eq", "f6_value": "小程序"}
    response = operator_client.post(url, shown_form(operator_client, url, **seventh))

    assert response.status_code == 302
    rule.refresh_from_db()
    assert rule.property_filters == [
        *amount_filters(6),
        {"property": "channel", "operator": "eq", "value": "小程序"},
    ]
    # And the page now offers an eighth row.
    assert filter_inputs(page_text(operator_client.get(url))) == list(range(8))


def test_a_new_rule_starts_with_the_default_rows(operator_client):
    page = page_text(operator_client.get(reverse("segments:scoring_rule_create")))

    assert filter_inputs(page) == list(range(FILTER_ROWS))


def test_the_add_button_gives_a_new_rule_one_more_row_and_keeps_what_was_typed(operator_client):
    url = reverse("segments:scoring_rule_create")
    data = shown_form(operator_client, url, name="大额订单", event_name="purchase", points="10")
    for i in range(FILTER_ROWS):
        data |= {f"f{i}_property": "amount", f"f{i}_operator": "gte", f"f{i}_value": str(i + 1)}
    assert f'value="{ADD_FILTER_ACTION}"' in page_text(operator_client.get(url))

    fragment = page_text(
        operator_client.post(
            url, {**data, "action": ADD_FILTER_ACTION}, HTTP_HX_TARGET="rule-kind", **HX
        )
    )

    assert fragment.lstrip().startswith('<div id="rule-kind"')
    assert filter_inputs(fragment) == list(range(FILTER_ROWS + 1))
    assert re.search(rf'name="f{FILTER_ROWS - 1}_value"[^>]*value="{FILTER_ROWS}"', fragment)
    assert not LeadScoreRule.objects.exists()

    data |= {f"f{FILTER_ROWS}_property": "amount", f"f{FILTER_ROWS}_operator": "lt"}
    data[f"f{FILTER_ROWS}_value"] = "1000"
    response = operator_client.post(url, data)

    assert response.status_code == 302
    rule = LeadScoreRule.objects.get()
    assert rule.property_filters == [
        *amount_filters(FILTER_ROWS),
        {"property": "amount", "operator": "lt", "value": 1000},
    ]


def test_a_rule_at_the_limit_offers_no_further_row(operator_client):
    rule = filtered_rule(MAX_PROPERTY_FILTERS)

    page = page_text(operator_client.get(reverse("segments:scoring_rule_edit", args=[rule.pk])))

    assert filter_inputs(page) == list(range(MAX_PROPERTY_FILTERS))
    assert f'value="{ADD_FILTER_ACTION}"' not in page


def test_a_filter_posted_past_the_limit_is_refused_not_dropped(operator_client):
    rule = filtered_rule(MAX_PROPERTY_FILTERS)
    url = reverse("segments:scoring_rule_edit", args=[rule.pk])
    extra = {
        f"f{MAX_PROPERTY_FILTERS}_property": "channel",
        f"f{MAX_PROPERTY_FILTERS}_operator": "eq",
        f"f{MAX_PROPERTY_FILTERS}_value": "小程序",
    }

    with translation.override("en"):
        response = operator_client.post(
            url, shown_form(operator_client, url, points="15", **extra), HTTP_ACCEPT_LANGUAGE="en"
        )

    assert response.status_code == 422
    assert response.context["form"].non_field_errors() == [
        f"A rule takes at most {MAX_PROPERTY_FILTERS} property filters."
    ]
    rule.refresh_from_db()
    assert rule.points == 10 and rule.property_filters == amount_filters(MAX_PROPERTY_FILTERS)


def test_a_service_error_in_a_late_filter_shows_at_its_row(operator_client):
    url = reverse("segments:scoring_rule_create")
    data = shown_form(operator_client, url, name="大额订单", event_name="purchase", points="10")
    # Rows 0–5 filled but row 1 left empty: the bad filter is the service's sixth, the form's
    # seventh row.
    for i in (0, 2, 3, 4, 5):
        data |= {f"f{i}_property": "amount", f"f{i}_operator": "gte", f"f{i}_value": str(i)}
    data |= {"f6_property": "amount", "f6_operator": "gt", "f6_value": "很多"}

    response = operator_client.post(url, data)

    assert response.status_code == 422
    form = response.context["form"]
    assert list(form.errors) == ["f6_value"]
    with pytest.raises(ValidationFailed) as refused:
        scoring.property_filters_validate(
            filters=[{"property": "amount", "operator": "gt", "value": "很多"}]
        )
    assert form.errors["f6_value"] == [refused.value.message.split(": ", 1)[1]]
    assert not LeadScoreRule.objects.exists()


def test_a_stored_rule_past_the_limit_shows_every_filter_and_is_not_cut_on_save(operator_client):
    # Written around the service (as the admin once could): more filters than it allows.
    rule = LeadScoreRule.objects.create(
        name="旧规则",
        kind="event",
        event_name="purchase",
        points=10,
        property_filters=amount_filters(MAX_PROPERTY_FILTERS + 1),
    )
    url = reverse("segments:scoring_rule_edit", args=[rule.pk])

    assert filter_inputs(page_text(operator_client.get(url))) == list(
        range(MAX_PROPERTY_FILTERS + 1)
    )
    response = operator_client.post(url, shown_form(operator_client, url, points="15"))

    assert response.status_code == 422
    rule.refresh_from_db()
    assert rule.points == 10 and len(rule.property_filters) == MAX_PROPERTY_FILTERS + 1


# --- Scoring rules in the admin -----------------------------------------------------------------


def admin_errors(response) -> dict[str, list[str]]:
    assert response.status_code == 200, response.status_code
    return {k: list(v) for k, v in response.context["adminform"].form.errors.items()}


EVENT = {"name": "下单", "kind": "event", "event_name": "purchase", "points": 10}
FIT = {"name": "上海", "kind": "attribute", "points": 10}
BAD_FILTER = [{"property": "amount", "operator": "gt", "value": "很多"}]
CITY_GT = {"type": "attribute", "field": "city", "operator": "gt", "value": 1}
NO_SUCH_TAG = {"type": "tag", "match": "any", "tags": [10**20]}


def service_message(data: dict, *, whole: bool) -> str:
    """What the service says when refusing `data` (in the admin's language): whole, or only
    the part after the field name."""
    with translation.override("zh-hans"), pytest.raises(ValidationFailed) as refused:
        scoring.score_rule_create(data=data)
    message = refused.value.message
    return message if whole else message.split(": ", 1)[1]


@pytest.mark.parametrize(
    ("data", "field", "whole"),
    [
        ({**EVENT, "points": 0}, "points", False),
        ({**EVENT, "event_name": ""}, "event_name", False),
        ({**EVENT, "cap_period": "day"}, "cap_points", False),
        ({**EVENT, "property_filters": {"amount": 100}}, "property_filters", False),
        # A path inside the JSON stays in the message: it says which filter or condition.
        ({**EVENT, "property_filters": BAD_FILTER}, "property_filters", True),
        ({**FIT, "condition": {}}, "condition", False),
        ({**FIT, "condition": ["上海"]}, "condition", False),
        ({**FIT, "condition": CITY_GT}, "condition", True),
        ({**FIT, "condition": NO_SUCH_TAG}, "condition", True),
    ],
)
def test_the_admin_refuses_an_invalid_rule_with_the_services_message(
    operator_client, data, field, whole
):
    response = admin_post(operator_client, RULE_ADD, **data)

    assert admin_errors(response) == {field: [service_message(data, whole=whole)]}
    assert not LeadScoreRule.objects.exists()


def test_the_admin_refuses_a_bad_change_and_keeps_the_rule(operator_client):
    rule = filtered_rule(2)
    url = reverse("admin:segments_leadscorerule_change", args=[rule.pk])

    response = admin_post(
        operator_client, url, property_filters=amount_filters(MAX_PROPERTY_FILTERS + 1)
    )

    assert list(admin_errors(response)) == ["property_filters"]
    rule.refresh_from_db()
    assert rule.property_filters == amount_filters(2)


def test_invalid_json_in_the_admin_is_a_form_error(operator_client):
    response = admin_post(operator_client, RULE_ADD, **EVENT, property_filters="[{")

    assert list(admin_errors(response)) == ["property_filters"]
    assert not LeadScoreRule.objects.exists()


def test_an_event_rule_created_in_the_admin_scores_past_events(
    operator_client, django_capture_on_commit_callbacks
):
    half_life(0)
    buyer, browser = ContactFactory(), ContactFactory()
    big = event_at(buyer, timezone.now() - dt.timedelta(days=3), amount=500)
    event_at(buyer, timezone.now() - dt.timedelta(days=2), amount=20)
    event_at(browser, timezone.now() - dt.timedelta(days=2), name="page_view", amount=500)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_post(
            operator_client,
            RULE_ADD,
            **EVENT,
            property_filters=[{"property": "amount", "operator": "gte", "value": "100"}],
        )

    assert response.status_code == 302
    rule = LeadScoreRule.objects.get()
    # Cleaned by the service: the bound typed as text is stored as the number.
    assert rule.property_filters == [{"property": "amount", "operator": "gte", "value": 100}]
    assert list(rule.awards.values_list("contact_id", "event_id")) == [(buyer.pk, big.pk)]
    assert (stored_score(buyer), stored_score(browser)) == (10, 0)


def test_changing_a_rules_points_in_the_admin_rescores_past_events(
    operator_client, django_capture_on_commit_callbacks
):
    half_life(0)
    buyer = ContactFactory()
    with django_capture_on_commit_callbacks(execute=True):
        rule = scoring.score_rule_create(data=EVENT)
        event_record(contact=buyer, name="purchase")
    assert stored_score(buyer) == 10
    url = reverse("admin:segments_leadscorerule_change", args=[rule.pk])

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_post(operator_client, url, points=25)

    assert response.status_code == 302
    assert list(rule.awards.values_list("points", flat=True)) == [25]
    assert stored_score(buyer) == 25


def test_a_profile_fit_rule_created_in_the_admin_scores_who_matches(
    operator_client, django_capture_on_commit_callbacks
):
    shanghai, beijing = ContactFactory(city="上海"), ContactFactory(city="北京")
    condition = {"type": "attribute", "field": "city", "operator": "eq", "value": "上海"}

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_post(
            operator_client, RULE_ADD, name="上海", kind="attribute", points=20, condition=condition
        )

    assert response.status_code == 302
    assert (stored_score(shanghai), stored_score(beijing)) == (20, 0)


def test_deleting_a_rule_in_the_admin_takes_its_points_back(
    operator_client, django_capture_on_commit_callbacks
):
    half_life(0)
    buyer = ContactFactory()
    with django_capture_on_commit_callbacks(execute=True):
        rule = scoring.score_rule_create(data=EVENT)
        event_record(contact=buyer, name="purchase")
    assert stored_score(buyer) == 10

    response = operator_client.post(
        reverse("admin:segments_leadscorerule_delete", args=[rule.pk]), {"post": "yes"}
    )

    assert response.status_code == 302
    assert not LeadScoreRule.objects.exists()
    assert stored_score(buyer) == 0


# --- Awards in the admin ------------------------------------------------------------------------


@pytest.fixture
def awarded(django_capture_on_commit_callbacks):
    """Two buyers with one +10 purchase award each (no decay)."""
    half_life(0)
    first, second = ContactFactory(), ContactFactory()
    with django_capture_on_commit_callbacks(execute=True):
        scoring.score_rule_create(data=EVENT)
        event_record(contact=first, name="purchase")
        event_record(contact=second, name="purchase")
    assert (stored_score(first), stored_score(second)) == (10, 10)
    return first, second


def award_post(client, award: LeadScoreAward, **changes):
    at = timezone.localtime(award.awarded_at)
    data = {
        "contact": award.contact_id,
        "rule": award.rule_id,
        "event": award.event_id or "",
        "points": award.points,
        "awarded_at_0": at.strftime("%Y-%m-%d"),
        "awarded_at_1": at.strftime("%H:%M:%S"),
        **changes,
    }
    return client.post(reverse("admin:segments_leadscoreaward_change", args=[award.pk]), data)


def test_an_award_edited_in_the_admin_updates_the_score(operator_client, awarded):
    first, second = awarded
    award = LeadScoreAward.objects.get(contact=first)

    response = award_post(operator_client, award, points=25)

    assert response.status_code == 302
    assert (stored_score(first), stored_score(second)) == (25, 10)


def test_an_award_moved_to_another_contact_updates_both_scores(operator_client, awarded):
    first, second = awarded
    award = LeadScoreAward.objects.get(contact=first)

    response = award_post(operator_client, award, contact=second.pk)

    assert response.status_code == 302
    assert (stored_score(first), stored_score(second)) == (0, 20)


def test_an_award_added_in_the_admin_updates_the_score(operator_client, awarded):
    first, _second = awarded
    rule = LeadScoreRule.objects.get()
    now = timezone.localtime()

    response = operator_client.post(
        reverse("admin:segments_leadscoreaward_add"),
        {
            "contact": first.pk,
            "rule": rule.pk,
            "event": "",
            "points": 5,
            "awarded_at_0": now.strftime("%Y-%m-%d"),
            "awarded_at_1": now.strftime("%H:%M:%S"),
        },
    )

    assert response.status_code == 302
    assert stored_score(first) == 15


def test_an_award_deleted_in_the_admin_updates_the_score(operator_client, awarded):
    first, second = awarded
    award = LeadScoreAward.objects.get(contact=first)

    response = operator_client.post(
        reverse("admin:segments_leadscoreaward_delete", args=[award.pk]), {"post": "yes"}
    )

    assert response.status_code == 302
    assert (stored_score(first), stored_score(second)) == (0, 10)


def test_awards_deleted_in_bulk_in_the_admin_update_the_scores(operator_client, awarded):
    first, second = awarded

    response = operator_client.post(
        AWARDS,
        {
            "action": "delete_selected",
            "_selected_action": list(LeadScoreAward.objects.values_list("pk", flat=True)),
            "post": "yes",
        },
    )

    assert response.status_code == 302
    assert not LeadScoreAward.objects.exists()
    assert Contact.objects.filter(pk__in=[first.pk, second.pk], lead_score=0).count() == 2
