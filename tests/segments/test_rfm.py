import datetime as dt
import random
import uuid
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest
from django.conf import settings
from django.urls import reverse
from hypothesis import given
from hypothesis import strategies as st

from contacts import roles
from contacts.models import Contact, Event
from core.errors import ValidationFailed
from core.models import Job, JobStatus
from segments import rfm, tasks
from segments.models import RFMLayer, RFMRun, RFMScore
from tests.factories import ContactFactory, EventFactory, user_with_role

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
HX = {"HTTP_HX_REQUEST": "true"}


def _event(contact, name, *, days_ago: float, value=None, **properties) -> Event:
    return Event(
        event_id=uuid.uuid4().hex,
        contact=contact,
        name=name,
        occurred_at=NOW - dt.timedelta(days=days_ago),
        value=None if value is None else Decimal(value),
        properties=properties,
    )


def _buy(contact, *, days_ago: float, value="100.00") -> Event:
    return EventFactory(
        contact=contact,
        name="purchase",
        occurred_at=NOW - dt.timedelta(days=days_ago),
        value=None if value is None else Decimal(value),
        properties={"order_id": uuid.uuid4().hex[:8]},
    )


def _refund(contact, *, days_ago: float, value: str) -> Event:
    return EventFactory(
        contact=contact,
        name="refund",
        occurred_at=NOW - dt.timedelta(days=days_ago),
        value=Decimal(value),
    )


def _scores() -> dict[int, RFMScore]:
    return {row.contact_id: row for row in RFMScore.objects.all()}


# ---------- the independent oracle ----------

# Written out by hand rather than taken from the service: (R high, F high, M high) -> layer.
ORACLE_LAYERS = {
    (True, True, True): "important_value",
    (True, False, True): "important_develop",
    (False, True, True): "important_keep",
    (False, False, True): "important_retain",
    (True, True, False): "general_value",
    (True, False, False): "general_develop",
    (False, True, False): "general_keep",
    (False, False, False): "general_retain",
}


def _oracle_score(series: pd.Series, *, ascending: bool) -> pd.Series:
    """Quintile of each tie group's average rank (rank 1 = the worst figure); the best figure
    scores 5 and the worst 1 whatever the size of its tie, the best winning when all are equal."""
    n = len(series)
    rank = series.rank(method="average", ascending=ascending)
    # The group's places run from its first to its last rank; (rank − ½) / n is the fraction of
    # the sorted buyers below the middle of them.
    score = (1 + np.floor(5 * (rank - 0.5) / n)).astype(int)
    score[rank == rank.min()] = 1
    score[rank == rank.max()] = 5
    return score


def oracle(*, window_days: int, now: dt.datetime) -> pd.DataFrame:
    """RFM computed with pandas from the raw event rows, without any of the service's code."""
    events = pd.DataFrame.from_records(
        Event.objects.values_list(
            "contact_id", "name", "occurred_at", "value", "contact__merged_into_id"
        ),
        columns=["contact_id", "name", "occurred_at", "value", "merged_into"],
    )
    empty = pd.DataFrame(
        columns=["recency_days", "frequency", "monetary", "r_score", "f_score", "m_score", "layer"]
    )
    if events.empty:
        return empty
    events["occurred_at"] = pd.to_datetime(events["occurred_at"], utc=True)
    start = pd.Timestamp(now - dt.timedelta(days=window_days))
    in_scope = (
        events["merged_into"].isna()
        & (events["occurred_at"] > start)
        & (events["occurred_at"] <= pd.Timestamp(now))
    )
    events = events[in_scope].copy()
    events["value"] = events["value"].map(lambda v: Decimal(0) if v is None else v)
    purchases = events[events["name"] == "purchase"]
    if purchases.empty:
        return empty
    refunds = events[events["name"] == "refund"]

    df = purchases.groupby("contact_id").agg(
        frequency=("value", "size"), last=("occurred_at", "max"), bought=("value", "sum")
    )
    refunded = refunds.assign(value=refunds["value"].map(abs)).groupby("contact_id")["value"].sum()
    df["refunded"] = refunded.reindex(df.index).map(lambda v: Decimal(0) if pd.isna(v) else v)
    df["monetary"] = [
        max(Decimal(0), b - r) for b, r in zip(df["bought"], df["refunded"], strict=True)
    ]
    df["recency_days"] = (pd.Timestamp(now) - df["last"]) // pd.Timedelta(days=1)

    df["r_score"] = _oracle_score(df["recency_days"], ascending=False)
    df["f_score"] = _oracle_score(df["frequency"], ascending=True)
    df["m_score"] = _oracle_score(df["monetary"].astype(float), ascending=True)
    df["layer"] = [
        ORACLE_LAYERS[(r >= 3, f >= 3, m >= 3)]
        for r, f, m in zip(df["r_score"], df["f_score"], df["m_score"], strict=True)
    ]
    return df


def _generate(seed: int, *, buyers: int = 240) -> None:
    """Buyers with many ties (shared days and amounts), refunds, merges and out-of-window noise."""
    rng = random.Random(seed)
    contacts = ContactFactory.create_batch(buyers + 20)
    survivor = contacts[0]
    for merged in contacts[-10:]:
        merged.merged_into = survivor
        merged.save(update_fields=["merged_into"])
    amounts = ["9.90", "99.00", "99.00", "199.00", "250.50", "1288.00", None]
    days = [0, 0.2, 1, 1, 3, 7, 7, 30, 30, 90, 180, 364.9, 365, 400, -1]
    rows = []
    for contact in contacts:
        for _ in range(rng.choice([0, 1, 1, 1, 2, 3, 5, 8])):
            rows.append(
                _event(
                    contact,
                    "purchase",
                    days_ago=rng.choice(days),
                    value=rng.choice(amounts),
                    order_id=uuid.uuid4().hex[:8],
                )
            )
        if rng.random() < 0.25:
            rows.append(
                _event(contact, "refund", days_ago=rng.choice(days), value=rng.choice(amounts[:-1]))
            )
        if rng.random() < 0.3:
            rows.append(_event(contact, "page_view", days_ago=rng.choice(days), value="5.00"))
    Event.objects.bulk_create(rows)


def _assert_matches_oracle(run: RFMRun, *, window_days: int) -> None:
    expected = oracle(window_days=window_days, now=NOW)
    actual = _scores()
    assert set(actual) == set(expected.index)
    for contact_id, row in expected.iterrows():
        got = actual[contact_id]
        assert (
            got.recency_days,
            got.frequency,
            got.monetary,
            got.r_score,
            got.f_score,
            got.m_score,
            got.layer,
        ) == (
            row["recency_days"],
            row["frequency"],
            row["monetary"],
            row["r_score"],
            row["f_score"],
            row["m_score"],
            row["layer"],
        ), contact_id
    assert run.contacts == len(expected)
    counts = expected["layer"].value_counts().to_dict()
    assert run.layer_counts == {layer.value: counts.get(layer.value, 0) for layer in RFMLayer}


# ---------- the computation ----------


@pytest.mark.django_db
@pytest.mark.parametrize("seed,window_days", [(1, 365), (2, 365), (3, 90), (4, 30)])
def test_every_buyer_matches_an_independent_pandas_computation(seed, window_days):
    _generate(seed)

    run = rfm.rfm_compute(window_days=window_days, now=NOW)

    assert run.contacts > 20
    _assert_matches_oracle(run, window_days=window_days)


@pytest.mark.django_db
def test_a_second_run_replaces_the_first_and_drops_buyers_who_no_longer_qualify():
    _generate(5)
    rfm.rfm_compute(now=NOW)
    lapsed = ContactFactory()
    _buy(lapsed, days_ago=10)
    rfm.rfm_compute(now=NOW)
    assert lapsed.pk in _scores()

    later = NOW + dt.timedelta(days=360)
    run = rfm.rfm_compute(now=later)

    assert lapsed.pk not in _scores()
    assert RFMScore.objects.filter(computed_at=NOW).count() == 0
    assert RFMRun.objects.count() == 3
    assert run.contacts == RFMScore.objects.count()


@pytest.mark.django_db
def test_refunds_lower_monetary_but_not_frequency_and_never_below_zero():
    partly, fully, overdone, refund_only = ContactFactory.create_batch(4)
    _buy(partly, days_ago=5, value="300.00")
    _buy(partly, days_ago=2, value="200.00")
    _refund(partly, days_ago=1, value="120.50")
    _buy(fully, days_ago=5, value="80.00")
    _refund(fully, days_ago=4, value="80.00")
    _buy(overdone, days_ago=5, value="50.00")
    # A refund of an order bought before the window still counts: it is dated in the window.
    _refund(overdone, days_ago=3, value="-70.00")
    _refund(refund_only, days_ago=3, value="10.00")

    rfm.rfm_compute(now=NOW)
    scores = _scores()

    assert (scores[partly.pk].frequency, scores[partly.pk].monetary) == (2, Decimal("379.50"))
    assert (scores[fully.pk].frequency, scores[fully.pk].monetary) == (1, Decimal("0.00"))
    assert scores[overdone.pk].monetary == Decimal("0.00")
    assert refund_only.pk not in scores
    assert scores[partly.pk].recency_days == 2


@pytest.mark.django_db
def test_merged_away_contacts_are_not_scored():
    survivor, duplicate = ContactFactory.create_batch(2)
    _buy(survivor, days_ago=3)
    _buy(duplicate, days_ago=1)
    duplicate.merged_into = survivor
    duplicate.save(update_fields=["merged_into"])

    run = rfm.rfm_compute(now=NOW)

    assert set(_scores()) == {survivor.pk}
    assert run.contacts == 1


@pytest.mark.django_db
def test_the_window_is_open_at_its_start_and_closed_at_now():
    at_start, at_now, future, old = ContactFactory.create_batch(4)
    _buy(at_start, days_ago=30)
    _buy(at_now, days_ago=0)
    _buy(future, days_ago=-0.01)
    _buy(old, days_ago=45)
    _buy(at_now, days_ago=31)

    rfm.rfm_compute(window_days=30, now=NOW)
    scores = _scores()

    assert set(scores) == {at_now.pk}
    assert (scores[at_now.pk].frequency, scores[at_now.pk].recency_days) == (1, 0)


@pytest.mark.django_db
def test_recency_counts_whole_days_rounded_down():
    contact = ContactFactory()
    _buy(contact, days_ago=2.99)
    _buy(contact, days_ago=20)

    rfm.rfm_compute(now=NOW)

    assert _scores()[contact.pk].recency_days == 2


@pytest.mark.django_db
def test_no_purchases_clears_the_table_and_records_an_empty_run():
    contact = ContactFactory()
    _buy(contact, days_ago=3)
    rfm.rfm_compute(now=NOW)
    EventFactory(contact=contact, name="page_view", occurred_at=NOW)
    Event.objects.filter(name="purchase").delete()

    run = rfm.rfm_compute(now=NOW)

    assert RFMScore.objects.count() == 0
    assert run.contacts == 0 and run.finished_at is not None
    assert run.layer_counts == {layer.value: 0 for layer in RFMLayer}
    assert run.edges["frequency"] == [None] * 5
    assert rfm.rfm_edge_rows(run=run) == []


@pytest.mark.django_db
def test_equal_figures_get_equal_scores_and_the_edges_are_recorded():
    contacts = ContactFactory.create_batch(10)
    for i, contact in enumerate(contacts):
        # Amounts 10, 10, 20, 20, … 50, 50; everyone bought once, on the same day.
        _buy(contact, days_ago=4, value=f"{10 * (i // 2 + 1)}.00")

    run = rfm.rfm_compute(now=NOW)
    scores = _scores()

    assert [scores[c.pk].m_score for c in contacts] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert run.edges["monetary"] == [
        ["10.00", "10.00"],
        ["20.00", "20.00"],
        ["30.00", "30.00"],
        ["40.00", "40.00"],
        ["50.00", "50.00"],
    ]
    # One figure shared by everyone is the best there is: it scores 5, not the 1 of its lowest
    # rank.
    assert {row.f_score for row in scores.values()} == {5}
    assert {row.r_score for row in scores.values()} == {5}
    assert run.edges["frequency"] == [None, None, None, None, [1, 1]]
    assert scores[contacts[-1].pk].layer == RFMLayer.IMPORTANT_VALUE
    assert scores[contacts[0].pk].layer == RFMLayer.GENERAL_VALUE


@pytest.mark.django_db
def test_buyers_tied_on_the_best_recency_get_r_5_and_fill_its_heatmap_column():
    contacts = ContactFactory.create_batch(10)
    # Three in ten bought today: more than the top fifth share the best recency.
    for i, contact in enumerate(contacts):
        _buy(contact, days_ago=0.5 if i < 3 else 10 + i, value="100.00")

    run = rfm.rfm_compute(now=NOW)
    scores = _scores()

    assert [scores[c.pk].r_score for c in contacts[:3]] == [5, 5, 5]
    assert run.edges["recency_days"][4] == [0, 0]
    rows = {row["score"]: row for row in rfm.rfm_edge_rows(run=run)}
    assert rows[5]["recency_days"] == [0, 0]
    heatmap = rfm.rfm_heatmap(run=run)
    assert sum(cell[2] for cell in heatmap["cells"] if cell[0] == 4) == 3


@pytest.mark.django_db
def test_the_worst_figure_scores_1_however_many_share_it():
    contacts = ContactFactory.create_batch(10)
    # Seven one-time buyers: their F is the worst there is, not the middle of their places.
    for i, contact in enumerate(contacts):
        for _ in range(1 if i < 7 else i - 5):
            _buy(contact, days_ago=3)

    rfm.rfm_compute(now=NOW)
    scores = _scores()

    assert [scores[c.pk].f_score for c in contacts] == [1, 1, 1, 1, 1, 1, 1, 4, 5, 5]


@pytest.mark.django_db
def test_a_tie_across_a_quintile_boundary_gets_one_score_alike_in_r_f_and_m():
    contacts = ContactFactory.create_batch(10)
    # Goodness 1, 2, 2, 2, 3 … : the tie on 2 fills places 2–4 of 10, across the boundary
    # between the first and second fifth; its middle (place 3) is in the second, so all three
    # score 2 (ranked by their lowest place they scored 1).
    goodness = [1, 2, 2, 2, 3, 4, 4, 5, 6, 7]
    for contact, good in zip(contacts, goodness, strict=True):
        for k in range(good):
            # Better is more recent, more often and more money, each by the same ranking.
            _buy(contact, days_ago=10 - good + k / 10, value=f"{good}.00" if k == 0 else "0.00")

    rfm.rfm_compute(now=NOW)
    scores = _scores()

    expected = [1, 2, 2, 2, 3, 4, 4, 4, 5, 5]
    assert [scores[c.pk].r_score for c in contacts] == expected
    assert [scores[c.pk].f_score for c in contacts] == expected
    assert [scores[c.pk].m_score for c in contacts] == expected


@pytest.mark.django_db
@pytest.mark.parametrize("window_days", [0, -5, 2.5, "365", True])
def test_a_bad_window_is_refused_and_nothing_is_written(window_days):
    _buy(ContactFactory(), days_ago=3)

    with pytest.raises(ValidationFailed, match="window_days"):
        rfm.rfm_compute(window_days=window_days, now=NOW)

    assert RFMRun.objects.count() == 0 and RFMScore.objects.count() == 0


@given(st.lists(st.integers(min_value=-50, max_value=50), max_size=60))
def test_scores_equal_the_pandas_average_rank_quintiles(values):
    got = rfm.rfm_scores(np.array(values, dtype=np.int64))

    if values:
        expected = _oracle_score(pd.Series(values), ascending=True).tolist()
        assert got.tolist() == expected
        assert set(got.tolist()) <= {1, 2, 3, 4, 5}
        assert got[values.index(max(values))] == 5
        assert len(set(values)) == 1 or got[values.index(min(values))] == 1
        by_value = [score for _, score in sorted(zip(values, got.tolist(), strict=True))]
        assert by_value == sorted(by_value)
    else:
        assert got.tolist() == []


def test_every_flag_combination_maps_to_its_classic_layer():
    for (r_high, f_high, m_high), layer in ORACLE_LAYERS.items():
        r, f, m = (np.array([5 if high else 2]) for high in (r_high, f_high, m_high))
        assert rfm.rfm_layers(r, f, m).tolist() == [layer]


# ---------- the task and the schedule ----------


@pytest.mark.django_db
def test_the_task_recomputes_and_reports_on_its_job():
    _buy(ContactFactory(), days_ago=1)
    job = Job.objects.create(kind=rfm.JOB_KIND)

    run_id = tasks.rfm_recompute.delay(job_id=job.pk).get()

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert job.result == {"run": run_id, "contacts": 1}
    assert RFMScore.objects.count() == 1


@pytest.mark.django_db
def test_beat_runs_the_task_daily_without_arguments():
    from config.celery import app
    from core.periodic import periodic_tasks_sync

    spec = settings.SCRM_PERIODIC_TASKS["segments: RFM recompute"]
    assert spec["task"] == "segments.rfm_recompute" and spec["task"] in app.tasks
    assert spec["daily_at"] == "02:30"
    assert "scrm: segments: RFM recompute" in periodic_tasks_sync()
    from django_celery_beat.models import PeriodicTask

    task = PeriodicTask.objects.get(name="scrm: segments: RFM recompute")
    assert (task.crontab.hour, task.crontab.minute, task.interval) == ("2", "30", None)
    assert str(task.crontab.timezone) == settings.TIME_ZONE
    _buy(ContactFactory(), days_ago=1)
    assert isinstance(app.tasks[spec["task"]].delay().get(), int)


# ---------- the page ----------


@pytest.fixture
def computed(db):
    contacts = ContactFactory.create_batch(6)
    for i, contact in enumerate(contacts):
        for _ in range(i + 1):
            _buy(contact, days_ago=i * 20 + 1, value=f"{(i + 1) * 100}.00")
    rfm.rfm_compute(now=NOW)
    return contacts


@pytest.fixture
def _roles(db):
    roles.roles_sync()


def test_the_page_shows_the_heatmap_layers_and_last_run(operator_client, computed):
    response = operator_client.get(reverse("segments:rfm"))
    page = response.content.decode()

    assert response.status_code == 200
    assert 'id="rfm-heatmap-data"' in page and 'data-chart="rfm-heatmap"' in page
    assert "vendor/echarts/echarts.min.js" in page and "//cdn" not in page
    assert reverse("segments:rfm_layer", args=["important_value"]) in page
    assert "重要价值" in page and "一般挽留" in page
    assert 'id="rfm-status"' in page and "hx-trigger" not in page
    assert response["Vary"] == "HX-Request" or "HX-Request" in response["Vary"]


def test_the_status_region_is_served_as_a_fragment(operator_client, computed):
    fragment = operator_client.get(reverse("segments:rfm"), **HX).content.decode()

    assert fragment.lstrip().startswith('<section id="rfm-status"')
    assert "<html" not in fragment


def test_the_heatmap_counts_every_buyer_once(computed):
    data = rfm.rfm_heatmap(run=rfm.rfm_last_run())

    assert sum(cell[2] for cell in data["cells"]) == len(computed)
    assert data["max"] == max(cell[2] for cell in data["cells"])
    assert {(cell[0], cell[1]) for cell in data["cells"]} <= {
        (r, f) for r in range(5) for f in range(5)
    }


def test_the_page_before_any_run_invites_a_recompute(operator_client):
    page = operator_client.get(reverse("segments:rfm")).content.decode()

    assert "rfm-heatmap-data" not in page
    assert reverse("segments:rfm_recompute") in page


def test_recompute_now_queues_a_job_that_the_status_region_watches(
    operator_client, computed, django_capture_on_commit_callbacks
):
    ContactFactory()
    before = RFMRun.objects.count()

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        fragment = operator_client.post(reverse("segments:rfm_recompute"), **HX).content.decode()
    job = Job.objects.get(kind=rfm.JOB_KIND)
    assert job.status == JobStatus.QUEUED and len(callbacks) == 1
    assert f"?watch={job.pk}" in fragment and 'hx-trigger="every 2s"' in fragment

    # A second click while it waits queues nothing more.
    with django_capture_on_commit_callbacks(execute=False) as more:
        operator_client.post(reverse("segments:rfm_recompute"), **HX)
    assert Job.objects.filter(kind=rfm.JOB_KIND).count() == 1 and not more

    callbacks[0]()
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and RFMRun.objects.count() == before + 1
    poll = operator_client.get(reverse("segments:rfm") + f"?watch={job.pk}", **HX)
    assert poll.status_code == 204 and poll["HX-Refresh"] == "true"


def test_recompute_without_htmx_redirects_back(operator_client, django_capture_on_commit_callbacks):
    _buy(ContactFactory(), days_ago=2)

    with django_capture_on_commit_callbacks(execute=True):
        response = operator_client.post(reverse("segments:rfm_recompute"))

    assert response.status_code == 302 and response["Location"] == reverse("segments:rfm")
    assert RFMScore.objects.count() == 1


def test_recompute_is_post_only(operator_client):
    assert operator_client.get(reverse("segments:rfm_recompute")).status_code == 405


def test_analysts_read_but_cannot_recompute(client, computed, _roles):
    client.force_login(user_with_role("analyst"))

    page = client.get(reverse("segments:rfm"))
    assert page.status_code == 200
    assert reverse("segments:rfm_recompute") not in page.content.decode()
    assert client.post(reverse("segments:rfm_recompute")).status_code == 403
    assert not Job.objects.filter(kind=rfm.JOB_KIND).exists()
    assert client.get(reverse("segments:rfm_layer", args=["general_retain"])).status_code == 200


def test_operators_can_recompute(client, computed, _roles):
    client.force_login(user_with_role("operator"))

    page = client.get(reverse("segments:rfm")).content.decode()

    assert reverse("segments:rfm_recompute") in page


def test_users_without_the_segment_view_permission_are_refused(client, computed, _roles):
    client.force_login(user_with_role("store_staff"))

    assert client.get(reverse("segments:rfm")).status_code == 403
    assert client.get(reverse("segments:rfm_layer", args=["general_retain"])).status_code == 403


def test_anonymous_users_are_sent_to_login(client, db):
    for url in (
        reverse("segments:rfm"),
        reverse("segments:rfm_layer", args=["important_value"]),
    ):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_a_layer_page_lists_its_buyers_with_their_figures(operator_client, computed):
    scores = _scores()
    layer = scores[computed[-1].pk].layer
    inside = {pk for pk, row in scores.items() if row.layer == layer}

    page = operator_client.get(reverse("segments:rfm_layer", args=[layer])).content.decode()
    fragment = operator_client.get(
        reverse("segments:rfm_layer", args=[layer]), **HX
    ).content.decode()

    for contact in Contact.objects.filter(pk__in=inside):
        assert reverse("contacts:detail", args=[contact.pk]) in page
    for contact in Contact.objects.exclude(pk__in=inside):
        assert reverse("contacts:detail", args=[contact.pk]) not in page
    assert fragment.lstrip().startswith('<section id="rfm-members"')


def test_an_unknown_layer_is_not_found(operator_client):
    assert operator_client.get(reverse("segments:rfm_layer", args=["vip"])).status_code == 404


def test_a_failed_recompute_is_reported_when_the_poll_sees_it(operator_client):
    job = Job.objects.create(kind=rfm.JOB_KIND, status=JobStatus.FAILED, error="disk full")

    poll = operator_client.get(reverse("segments:rfm") + f"?watch={job.pk}", **HX)

    assert poll["HX-Refresh"] == "true"
    page = operator_client.get(reverse("segments:rfm")).content.decode()
    assert "disk full" in page


def test_english_pages_show_the_english_and_the_classic_layer_names(operator_client, computed):
    operator_client.cookies[settings.LANGUAGE_COOKIE_NAME] = "en"

    page = operator_client.get(reverse("segments:rfm")).content.decode()
    layer = operator_client.get(reverse("segments:rfm_layer", args=["important_keep"])).content

    assert "Important value" in page and "重要价值" in page
    assert "Important to keep" in layer.decode() and "重要保持" in layer.decode()
