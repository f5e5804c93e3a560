"""The segment list's growth sparkline is drawn by day: a day nobody counted keeps the last
count, and a segment counted only lately starts its line part-way along."""

import datetime as dt
import re

import pytest
from django.urls import reverse
from django.utils import timezone

from segments.models import SegmentSize
from segments.selectors import segment_size_series
from segments.services import segment_create
from segments.views import SPARK_DAYS, _sparkline

pytestmark = pytest.mark.django_db

CITY_RULE = {
    "op": "and",
    "conditions": [{"type": "attribute", "field": "city", "operator": "eq", "value": "上海"}],
}


def _sizes(segment, counts: dict[int, int]) -> None:
    """Record `counts` by days ago, and only those days."""
    SegmentSize.objects.filter(segment=segment).delete()
    today = timezone.localdate()
    for days_ago, count in counts.items():
        SegmentSize.objects.create(
            segment=segment, day=today - dt.timedelta(days=days_ago), member_count=count
        )


def _xs(points: str) -> list[float]:
    return [float(point.split(",")[0]) for point in points.split()]


def test_a_day_without_a_count_keeps_the_last_one_and_the_series_ends_today():
    segment = segment_create(name="上海", rule=CITY_RULE)
    _sizes(segment, {6: 10, 3: 40, 2: 41})

    series = segment_size_series(segment_ids=[segment.pk], days=7)

    # Six days ago … today; nothing was counted five, four, one days ago and today.
    assert series == {segment.pk: [10, 10, 10, 40, 41, 41, 41]}


def test_the_last_count_before_the_window_carries_into_it():
    segment = segment_create(name="上海", rule=CITY_RULE)
    _sizes(segment, {40: 7, 35: 8, 2: 9})

    series = segment_size_series(segment_ids=[segment.pk], days=5)

    # Four days ago … today: 35 days ago's count until two days ago's.
    assert series == {segment.pk: [8, 8, 9, 9, 9]}


def test_days_before_the_first_count_are_left_out_not_made_up():
    segment = segment_create(name="上海", rule=CITY_RULE)
    empty = segment_create(name="北京", rule=CITY_RULE)
    _sizes(segment, {2: 5, 0: 6})
    _sizes(empty, {})

    series = segment_size_series(segment_ids=[segment.pk, empty.pk], days=30)

    assert series == {segment.pk: [5, 5, 6], empty.pk: []}


def test_the_series_takes_one_query_whatever_the_number_of_segments(django_assert_num_queries):
    segments = [segment_create(name=f"分群{i}", rule=CITY_RULE) for i in range(4)]
    for segment in segments:
        _sizes(segment, {45: 1, 9: 2, 1: 3})

    with django_assert_num_queries(1):
        series = segment_size_series(segment_ids=[s.pk for s in segments], days=30)

    assert all(len(values) == 30 for values in series.values())


def test_the_line_places_each_day_at_its_own_x():
    full = _sparkline(list(range(SPARK_DAYS)))
    late = _sparkline([5, 5, 6])

    assert _xs(full)[0] == 0.0 and _xs(full)[-1] == 80.0
    step = 80 / (SPARK_DAYS - 1)
    # Three days ending today: the last three places of the width, not all of it.
    assert _xs(late) == [round((SPARK_DAYS - 3 + i) * step, 1) for i in range(3)]
    assert _sparkline([5]) == ""


def test_the_list_draws_a_gap_in_the_counts_as_a_flat_stretch(operator_client):
    segment = segment_create(name="沉睡客户", rule=CITY_RULE)
    _sizes(segment, {29: 2, 28: 4, 0: 9})

    page = operator_client.get(reverse("segments:list")).content.decode()

    points = re.search(r'<polyline points="([^"]+)"', page).group(1)
    xs = _xs(points)
    ys = [float(point.split(",")[1]) for point in points.split()]
    assert len(xs) == SPARK_DAYS and xs[0] == 0.0 and xs[-1] == 80.0
    # From 28 days ago to yesterday nobody counted: the line stays at 4 until today's 9.
    assert len(set(ys[1:-1])) == 1 and ys[-1] < ys[1] < ys[0]
