"""Concurrent saves that would together make segments read each other, with real threads and
real PostgreSQL transactions.

Each save's cycle check reads the rules stored when it runs. Two operators saving "C reads D"
and "D reads C" at once both passed it; each then held its own segment's row, and the deferred
foreign-key check of its new dependency waited for the other's row at commit: PostgreSQL
aborted one as a deadlock (an HTTP 500). Edges that do not touch (A→B and C→D stored; B→C and
D→A saved at once) did not even deadlock: both committed, and a cycle was stored. Every change
of the graph now takes one advisory lock first and checks again under it.
"""

import threading
import time
from collections.abc import Callable

import pytest
from django.db import connection, connections  # noqa: F401 (connection: the skipif)
from django.db.models.signals import post_save
from django.urls import reverse
from django.utils.translation import trans_real

from contacts.models import Contact
from core.errors import ValidationFailed
from segments.models import Segment
from segments.services import segment_archive, segment_create, segment_refresh, segment_update
from segments.signals import segment_entered
from tests.factories import ContactFactory
from tests.segments.posts import builder_post
from tests.segments.test_builder import form_data
from tests.segments.test_views import HX, _node_html

# The concurrent saves: real transactions in threads, on PostgreSQL.
concurrent = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        "connection.vendor != 'postgresql'",
        reason="SQLite runs one writing transaction at a time: two saves cannot interleave",
    ),
]

ROUNDS = 5
# How long each save holds its transaction open after writing its segment's row (a real save
# re-evaluates the segment meanwhile, 2.6 s in the audit): wide enough for the other save to
# reach its cycle check, its writes and its commit in that time if nothing made it wait.
HOLD_SECONDS = 0.4


def city(name: str) -> dict:
    return {
        "op": "and",
        "conditions": [{"type": "attribute", "field": "city", "operator": "eq", "value": name}],
    }


def reading(segment: Segment, name: str) -> dict:
    rule = city(name)
    rule["conditions"].append({"type": "segment", "match": "not_in", "segment": segment.pk})
    return rule


def stored_edges() -> set[tuple[int, int]]:
    through = Segment.depends_on.through
    return set(through.objects.values_list("from_segment_id", "to_segment_id"))


def has_cycle(edges: set[tuple[int, int]]) -> bool:
    reads: dict[int, set[int]] = {}
    for src, dst in edges:
        reads.setdefault(src, set()).add(dst)

    def reaches(start: int, goal: int, seen: set[int]) -> bool:
        for nxt in reads.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    return any(reaches(node, node, set()) for node in reads)


def apply(marks: list) -> Callable:
    def decorate(test: Callable) -> Callable:
        for mark in marks:
            test = mark(test)
        return test

    return decorate


@pytest.fixture
def held_saves():
    """Keep each worker thread's segment write open for a moment, inside its transaction."""
    main = threading.main_thread()

    def hold(sender, instance, **kwargs):
        if threading.current_thread() is not main:
            time.sleep(HOLD_SECONDS)

    post_save.connect(hold, sender=Segment, dispatch_uid="test_cycle_lock.hold")
    yield
    post_save.disconnect(sender=Segment, dispatch_uid="test_cycle_lock.hold")


def at_once(*jobs: Callable[[], object]) -> list[object]:
    """Run the jobs in threads released together; each one's result or exception."""
    barrier = threading.Barrier(len(jobs))
    results: list[object] = [None] * len(jobs)

    def run(index: int, job: Callable[[], object]) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = job()
        except Exception as exc:  # the test looks at it
            results[index] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a save hung"
    return results


def update(segment: Segment, rule: dict) -> Callable[[], object]:
    return lambda: segment_update(segment=Segment.objects.get(pk=segment.pk), rule=rule)


def assert_one_refused_as_a_cycle(results: list[object]) -> None:
    refused = [r for r in results if isinstance(r, Exception)]
    saved = [r for r in results if isinstance(r, Segment)]
    assert len(saved) == 1 and len(refused) == 1, results
    [error] = refused
    # Not a deadlock (OperationalError) nor any other failure: the cycle error of the form.
    assert isinstance(error, ValidationFailed), repr(error)
    assert error.code == "invalid_rule"
    assert error.details["reason"] == "cycle"


@apply(concurrent)
def test_two_saves_reading_each_other_at_once_one_gets_the_cycle_error(held_saves):
    ContactFactory(city="上海")
    ContactFactory(city="北京")
    c = segment_create(name="审计C", rule=city("上海"))
    d = segment_create(name="审计D", rule=city("北京"))

    original = {c.pk: city("上海"), d.pk: city("北京")}

    for _round in range(ROUNDS):
        results = at_once(update(c, reading(d, "上海")), update(d, reading(c, "北京")))

        assert_one_refused_as_a_cycle(results)
        edges = stored_edges()
        assert len(edges) == 1 and not has_cycle(edges)
        # The refused save stored nothing: its rule is the one it had.
        [winner] = [r for r in results if isinstance(r, Segment)]
        [loser] = Segment.objects.filter(pk__in=original).exclude(pk=winner.pk)
        assert loser.rule == original[loser.pk] and not loser.depends_on.exists()
        # Back to two independent segments for the next round.
        segment_update(segment=winner, rule=original[winner.pk])
        assert stored_edges() == set()


@apply(concurrent)
def test_edges_that_do_not_touch_cannot_close_a_longer_cycle(held_saves):
    # A reads B and C reads D; B→C and D→A, each harmless alone, would close A→B→C→D→A.
    a = segment_create(name="A", rule=city("上海"))
    b = segment_create(name="B", rule=city("北京"))
    c = segment_create(name="C", rule=city("杭州"))
    d = segment_create(name="D", rule=city("广州"))
    segment_update(segment=a, rule=reading(b, "上海"))
    segment_update(segment=c, rule=reading(d, "杭州"))
    base = {(a.pk, b.pk), (c.pk, d.pk)}

    for _round in range(3):
        results = at_once(update(b, reading(c, "北京")), update(d, reading(a, "广州")))

        assert_one_refused_as_a_cycle(results)
        edges = stored_edges()
        assert not has_cycle(edges) and len(edges) == 3 and base < edges
        for segment, name in ((b, "北京"), (d, "广州")):
            segment_update(segment=Segment.objects.get(pk=segment.pk), rule=city(name))
        assert stored_edges() == base


@apply(concurrent)
def test_archiving_a_segment_while_a_rule_starts_reading_it(held_saves):
    # Either the archive commits first and the rule is refused (the segment is archived), or
    # the rule commits first and the archive is refused (a segment reads it): never both.
    for _round in range(3):
        target = segment_create(name=f"名单{_round}", rule=city("上海"))
        reader = segment_create(name=f"读者{_round}", rule=city("北京"))

        results = at_once(
            lambda target=target: segment_archive(segment=Segment.objects.get(pk=target.pk)),
            update(reader, reading(target, "北京")),
        )

        refused = [r for r in results if isinstance(r, Exception)]
        assert len(refused) == 1, results
        assert isinstance(refused[0], ValidationFailed), repr(refused[0])
        target.refresh_from_db()
        reads_it = Segment.objects.filter(pk=reader.pk, depends_on=target).exists()
        assert target.is_archived != reads_it


@pytest.fixture
def held_entries():
    """Keep each worker thread's refresh open for a moment after it queued the dependants."""
    main = threading.main_thread()

    def hold(sender, segment, contact_ids, **kwargs):
        if threading.current_thread() is not main:
            time.sleep(HOLD_SECONDS)

    segment_entered.connect(hold, dispatch_uid="test_cycle_lock.hold_entries")
    yield
    segment_entered.disconnect(dispatch_uid="test_cycle_lock.hold_entries")


@apply(concurrent)
def test_a_save_and_a_refresh_of_the_segment_it_starts_reading_both_finish(held_entries):
    # C starts reading D while D is refreshed. Both queue the same contacts for E, which reads
    # both: before, the save held those queue rows and waited at commit for D's row (the
    # foreign-key check of "C reads D") while the refresh held D's row and waited for the
    # queue rows. Now the save waits for D before it writes anything.
    for n in range(3):
        town = f"城{n}"
        contacts = [ContactFactory(city="杭州") for _ in range(3)]
        c = segment_create(name=f"C{n}", rule=city("无"))
        d = segment_create(name=f"D{n}", rule=city(town))
        segment_create(
            name=f"E{n}",
            rule={
                "op": "or",
                "conditions": [
                    {"type": "segment", "match": "in", "segment": c.pk},
                    {"type": "segment", "match": "in", "segment": d.pk},
                ],
            },
        )
        ids = [contact.pk for contact in contacts]
        Contact.objects.filter(pk__in=ids).update(city=town)
        reads_d = city(town)
        reads_d["op"] = "or"
        reads_d["conditions"].append({"type": "segment", "match": "in", "segment": d.pk})

        def refresh_d(d=d) -> object:
            # Starts a moment later: the save queues E's contacts first (the order that
            # deadlocked; the other one only waited).
            time.sleep(HOLD_SECONDS / 2)
            return segment_refresh(segment=Segment.objects.get(pk=d.pk))

        results = at_once(refresh_d, update(c, reads_d))

        assert not [r for r in results if isinstance(r, Exception)], results
        assert set(c.memberships.values_list("contact_id", flat=True)) == set(ids)
        assert set(d.memberships.values_list("contact_id", flat=True)) == set(ids)
        assert Segment.objects.filter(pk=c.pk, depends_on=d).exists()


# What the builder says about a cycle ------------------------------------------------------------


@pytest.fixture
def a_read_by_b():
    a = segment_create(name="审计A", rule=city("上海"))
    b = segment_create(name="审计B", rule=reading(a, "北京"))
    return a, b


def segment_row(b: Segment) -> dict[str, str]:
    return {
        "r-0.kind": "segment",
        "r-0.was": "segment",
        "r-0.match": "in",
        "r-0.segment": str(b.pk),
    }


@pytest.mark.django_db
def test_the_cycle_error_names_the_segment_once(operator_client, a_read_by_b):
    a, b = a_read_by_b
    data = form_data(operator_client.get(reverse("segments:edit", args=[a.pk])).content.decode())
    data.update({key: [value] for key, value in segment_row(b).items()})

    response = operator_client.post(
        reverse("segments:edit", args=[a.pk]), data, HTTP_ACCEPT_LANGUAGE="zh-hans"
    )

    assert response.status_code == 422
    row = _node_html(response.content.decode(), "r-0")
    assert "分群“审计B”已依赖当前分群，再引用它会形成循环" in row
    assert "分群 分群" not in row


@pytest.mark.django_db
def test_the_preview_of_a_complete_rule_making_a_cycle_says_so(
    operator_client, a_read_by_b, monkeypatch
):
    # Until /tmp/po/arc.po is merged into locale/ (the same text afterwards).
    catalog = trans_real.translation("zh-hans")._catalog._catalogs[0]
    if catalog.get("The rule would make a cycle") is None:
        monkeypatch.setitem(catalog, "The rule would make a cycle", "规则会形成循环引用")
    a, b = a_read_by_b
    data = builder_post(segment_row(b), segment=str(a.pk))

    html = operator_client.post(
        reverse("segments:preview"), data, HTTP_ACCEPT_LANGUAGE="zh-hans", **HX
    ).content.decode()

    assert "规则会形成循环引用" in html and "规则尚未填写完整" not in html
    assert "分群“审计B”已依赖当前分群，再引用它会形成循环" in html
    assert "分群 分群" not in html
    assert "data-count" not in html


@pytest.mark.django_db
def test_the_preview_of_an_unfinished_rule_still_says_it_is_not_complete(operator_client):
    data = builder_post(
        {
            "r-0.kind": "attribute",
            "r-0.was": "attribute",
            "r-0.field": "lead_score",
            "r-0.field_was": "lead_score",
            "r-0.operator": "gt",
            "r-0.value": "",
        }
    )

    html = operator_client.post(
        reverse("segments:preview"), data, HTTP_ACCEPT_LANGUAGE="zh-hans", **HX
    ).content.decode()

    assert "规则尚未填写完整" in html and "循环" not in html


@pytest.mark.django_db
def test_the_api_tells_a_cycle_by_its_reason(a_read_by_b):
    a, b = a_read_by_b
    with pytest.raises(ValidationFailed) as refused:
        segment_update(segment=a, rule=reading(b, "上海"))

    assert refused.value.details == {"path": "rule.conditions[1].segment", "reason": "cycle"}
