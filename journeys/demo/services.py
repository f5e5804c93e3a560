import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone

from channels.models import Channel, ChannelKind
from channels.services import channel_create
from contacts import roles
from contacts.models import (
    Contact,
    ContactTag,
    CustomField,
    Event,
    Identity,
    IdentityKind,
    StaffProfile,
    Stage,
    Store,
    Tag,
    TagGroup,
)
from contacts.services import stages_ensure_defaults
from contacts.services.custom_fields import custom_field_save
from core.periodic import periodic_tasks_sync
from journeys.demo import catalog
from journeys.demo.bulk import BulkWriter
from journeys.demo.generator import (
    CONTACT_FIELDS,
    CONTACT_TAG_FIELDS,
    EVENT_FIELDS,
    IDENTITY_FIELDS,
    MEMBER_FIELDS,
    POINTS_FIELDS,
    Chunk,
    DemoGenerator,
)
from journeys.models import Journey, JourneyStatus, JourneyStep, StepKind
from journeys.services import journey_activate
from membership.models import Member, PointsEntry, Tier
from membership.services import points_for_amount
from segments.history import segment_size_backfill
from segments.influence import influence_compute, influence_last_computed_at
from segments.models import (
    LeadScoreRule,
    LeadStageThreshold,
    RFMRun,
    ScoreRuleKind,
    Segment,
)
from segments.rfm import rfm_last_run, rfm_recompute_run
from segments.scoring import (
    lead_scores_fit,
    score_rule_backfill,
    score_rule_create,
    threshold_apply,
    threshold_set,
)
from segments.services import segment_create, segments_materialise

DEFAULT_CONTACTS = 2000
DEFAULT_EVENTS_PER_CONTACT = 20
DEFAULT_SEED = 42
# Contacts generated and written per round (one COPY per table): ~145k rows at 20 events each.
# Up to three chunks are alive (writing, queued, generating); the run with 1M contacts and 10M
# events peaked at 264 MB resident.
CHUNK_CONTACTS = 5000
# From this many contacts on, PostgreSQL loads without secondary indexes and foreign keys and
# rebuilds them at the end: 100k contacts took 82 s instead of 174 s. Small demo loads keep the
# tables readable by a running app (dropping an index locks the table until commit).
DEFER_INDEXES_FROM = 50_000

DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo12345"
# Role demo users, so that what store staff and analysts see can be tried without setting up.
DEMO_STORE_STAFF_LOGIN = ("store", "store12345")
DEMO_ANALYST_LOGIN = ("analyst", "analyst12345")
# The store the store-staff user works in; its city's demo contacts belong to it.
DEMO_STORE = {"code": "sh-jingan", "name": "上海静安店", "province": "上海", "city": "上海"}
# Enough to make "my store's customers" a real list, few enough to tell apart from "everyone".
DEMO_STORE_CONTACTS = 300
# Of those, the ones the store-staff user owns personally (their own clienteling book).
DEMO_OWNED_CONTACTS = 30
CONSOLE_CHANNEL = "控制台（演示）"
VIP_SEGMENT = "VIP 关怀"
VIP_JOURNEY = "VIP 关怀旅程"
WELCOME_JOURNEY = "新客欢迎旅程"
NEW_CONTACTS_SEGMENT = "新客（近7天）"
# The segment list's growth sparkline covers 30 days; the demo segments get that history worked
# out from the generated data (segments.history), one count per segment and day.
HISTORY_DAYS = 30
# Above this many contacts a point a week instead of a day: each point is one count over every
# contact. On PostgreSQL 100k contacts took 5 s for the 116 daily points of the four demo
# segments; 1M would take about a minute daily, a few seconds weekly (16 points).
DAILY_HISTORY_UP_TO = 100_000
WEEKLY = 7
# Lead scores are worked out by this command up to this many contacts; above, the worker does it
# in the background (the back-fill and profile-fit tasks the new rules queue), so that a big load
# is not held up. The scoring services take about 1 ms per award: the 2,000 demo contacts (40k
# events, 14k awards) took 12 s on SQLite and on PostgreSQL, so 10,000 about a minute.
LEAD_SCORES_INLINE_UP_TO = 10_000
# The lead score that makes a new contact 意向 (interested): a purchase or two and some browsing
# in the last weeks.
LEAD_SCORE_STAGE = "interested"
LEAD_SCORE_THRESHOLD = 60

# (done contacts, total contacts, rows written so far)
ProgressCallback = Callable[[int, int, int], None]


@dataclass
class DemoSeedResult:
    bulk_skipped: bool
    contacts: int = 0
    events: int = 0
    members: int = 0
    rows: int = 0
    bulk_seconds: float = 0.0
    # (name, member count, created now)
    segments: list[tuple[str, int, bool]] = field(default_factory=list)
    # Past size points written for the growth sparkline, and the days between two of them.
    history_points: int = 0
    history_every: int = 1
    journey: Journey | None = None
    # Computed by this run (None: an earlier run's are kept, the data being unchanged).
    rfm_run: RFMRun | None = None
    influence: dict[str, int] | None = None
    lead_scoring: "LeadScoringResult | None" = None
    user_created: bool = False
    # The role demo users: (username, password, role name, created now).
    role_users: list[tuple[str, str, str, bool]] = field(default_factory=list)


def demo_data_exists() -> bool:
    """True when a previous run already loaded demo contacts (they carry the demo app id)."""
    return Identity.objects.filter(
        kind=IdentityKind.MINIPROGRAM_OPENID, app_id=catalog.DEMO_MINIPROGRAM_APP_ID
    ).exists()


def demo_seed(
    *,
    contacts: int = DEFAULT_CONTACTS,
    events_per_contact: int = DEFAULT_EVENTS_PER_CONTACT,
    seed: int = DEFAULT_SEED,
    progress: ProgressCallback | None = None,
    notify: Callable[[str], None] | None = None,
    chunk_contacts: int = CHUNK_CONTACTS,
    defer_indexes: bool | None = None,
) -> DemoSeedResult:
    """Load the demo dataset; whatever already exists (by name, or the demo contacts) is kept.

    Order matters: segments are materialised after the contacts exist and before the journey
    goes live, so only contacts that enter the VIP segment from now on are enrolled.
    `notify` hears about the slow phases; `defer_indexes` defaults to big loads only.
    """
    notify = notify or (lambda message: None)
    with transaction.atomic():
        stages_ensure_defaults()
        _custom_fields_ensure()
        tiers = _tiers_ensure()
        tags = _tags_ensure()
        channel = _console_channel_ensure()
        user_created = _demo_user_ensure()
    if defer_indexes is None:
        defer_indexes = contacts >= DEFER_INDEXES_FROM
    if demo_data_exists():
        result = DemoSeedResult(bulk_skipped=True)
    else:
        result = _bulk_load(
            contacts=contacts,
            events_per_contact=events_per_contact,
            seed=seed,
            tiers=tiers,
            tags=tags,
            progress=progress,
            notify=notify,
            chunk_contacts=chunk_contacts,
            defer_indexes=defer_indexes,
        )
    result.user_created = user_created
    with transaction.atomic():
        result.role_users = _role_users_ensure()
    result.rfm_run, result.influence = _scores_ensure(
        data_changed=not result.bulk_skipped, notify=notify
    )
    # Before the segments: a threshold may move contacts to 意向, which segments read.
    result.lead_scoring = _lead_scoring_ensure(
        tags=tags, data_changed=not result.bulk_skipped, notify=notify
    )
    result.segments = _segments_ensure(tags=tags, notify=notify)
    result.history_every = 1 if _live_contacts() <= DAILY_HISTORY_UP_TO else WEEKLY
    result.history_points = _history_ensure(
        names=[name for name, _members, _created in result.segments],
        every=result.history_every,
        notify=notify,
    )
    result.journey = _vip_journey_ensure(
        segment=Segment.objects.get(name=VIP_SEGMENT), channel=channel
    )
    _welcome_journey_ensure(segment=Segment.objects.get(name=NEW_CONTACTS_SEGMENT), channel=channel)
    periodic_tasks_sync()
    return result


def _custom_fields_ensure() -> None:
    """Define the custom fields the demo contacts carry, so that the contact page labels them,
    the segment builder offers them and the API accepts them; a field with the key already
    there (an operator's own, or changed since) is kept as it is."""
    for position, (key, label, kind, choices) in enumerate(catalog.CUSTOM_FIELDS, start=1):
        if not CustomField.objects.filter(key=key).exists():
            custom_field_save(
                field=CustomField(
                    key=key, label=label, kind=kind, choices=list(choices), position=position * 10
                )
            )


def _live_contacts() -> int:
    return Contact.objects.filter(merged_into__isnull=True).count()


def _history_ensure(*, names: list[str], every: int, notify: Callable[[str], None]) -> int:
    """Size points for the demo segments' past days that have none (see HISTORY_DAYS)."""
    segments = list(Segment.objects.filter(name__in=names))
    notify(f"Working out {HISTORY_DAYS} days of segment size history …")
    return sum(
        segment_size_backfill(segment=segment, days=HISTORY_DAYS, every=every)
        for segment in segments
    )


def _scores_ensure(
    *, data_changed: bool, notify: Callable[[str], None]
) -> tuple[RFMRun | None, dict[str, int] | None]:
    """RFM layers and influence (KOC), computed as beat's nightly passes do, so that their pages
    show the demo data at once instead of waiting for the night or a click on "recompute"."""
    run = influence = None
    if data_changed or rfm_last_run() is None:
        notify("Computing RFM layers …")
        run = rfm_recompute_run()
    if data_changed or influence_last_computed_at() is None:
        notify("Computing influence and KOCs …")
        influence = influence_compute()
    return run, influence


@dataclass
class LeadScoringResult:
    rules_created: int = 0
    threshold_created: bool = False
    # Contacts with a lead score above 0, and of them those at or above the threshold, after
    # this run worked the scores out; None when it did not: kept from an earlier run (nothing
    # changed), or left to the worker (`deferred`).
    scored: int | None = None
    above_threshold: int | None = None
    deferred: bool = False


def _lead_score_specs(tags: dict[str, int]) -> list[dict]:
    """The demo's lead-scoring rules: buying counts most, a cart less, browsing least, and caps
    keep a busy day of browsing (or a bulk order) from outweighing steady interest."""
    return [
        {
            "name": "购买商品",
            "kind": ScoreRuleKind.EVENT,
            "event_name": "purchase",
            "points": 20,
            "cap_period": "week",
            "cap_points": 40,
        },
        {
            "name": "加入购物车",
            "kind": ScoreRuleKind.EVENT,
            "event_name": "add_to_cart",
            "points": 5,
            "cap_period": "day",
            "cap_points": 15,
        },
        {
            "name": "浏览商品",
            "kind": ScoreRuleKind.EVENT,
            "event_name": "view_product",
            "points": 1,
            "cap_period": "day",
            "cap_points": 5,
        },
        {
            "name": "一线城市护肤兴趣客户",
            "kind": ScoreRuleKind.ATTRIBUTE,
            "points": 10,
            "condition": {
                "op": "and",
                "conditions": [
                    {
                        "type": "attribute",
                        "field": "city",
                        "operator": "in",
                        "value": ["上海", "北京", "广州", "深圳"],
                    },
                    {"type": "tag", "match": "any", "tags": [tags["护肤"]]},
                ],
            },
        },
    ]


def _lead_scoring_ensure(
    *, tags: dict[str, int], data_changed: bool, notify: Callable[[str], None]
) -> LeadScoringResult:
    """The demo's lead-scoring rules and 意向 threshold, and the scores they give the demo data,
    worked out as the rules' background tasks would, so that the 线索评分 page and the contacts'
    scores show them at once. A rule or threshold already there by name or stage (an operator's
    change, or an earlier run's) is kept."""
    result = LeadScoringResult()
    created: list[int] = []
    with transaction.atomic():
        for spec in _lead_score_specs(tags):
            if not LeadScoreRule.objects.filter(name=spec["name"]).exists():
                created.append(score_rule_create(data=spec).pk)
        result.rules_created = len(created)
        stage_there = Stage.objects.filter(key=LEAD_SCORE_STAGE, is_active=True).exists()
        threshold_there = LeadStageThreshold.objects.filter(stage__key=LEAD_SCORE_STAGE).exists()
        if stage_there and not threshold_there:
            threshold_set(stage_key=LEAD_SCORE_STAGE, min_score=LEAD_SCORE_THRESHOLD)
            result.threshold_created = True
    if not (data_changed or result.rules_created or result.threshold_created):
        return result
    if _live_contacts() > LEAD_SCORES_INLINE_UP_TO:
        # New rules queued their back-fill and profile fit when they were created; rules kept
        # from before are queued here for the contacts just loaded.
        if data_changed:
            _lead_scores_queue(exclude=created)
        result.deferred = True
        return result
    notify("Computing lead scores …")
    now = timezone.now()
    # Every event rule for contacts just loaded, else only the rules created now.
    event_rules = LeadScoreRule.objects.filter(kind=ScoreRuleKind.EVENT, is_active=True)
    if not data_changed:
        event_rules = event_rules.filter(pk__in=created)
    for rule_id in event_rules.values_list("pk", flat=True):
        score_rule_backfill(rule_id=rule_id, now=now)
    lead_scores_fit(now=now)
    # The back-fill and the fit moved the contacts they scored; this also moves those scored
    # before a threshold was set.
    for threshold_id in LeadStageThreshold.objects.values_list("pk", flat=True):
        threshold_apply(threshold_id=threshold_id)
    live = Contact.objects.filter(merged_into__isnull=True)
    result.scored = live.filter(lead_score__gt=0).count()
    result.above_threshold = live.filter(lead_score__gte=LEAD_SCORE_THRESHOLD).count()
    return result


def _lead_scores_queue(*, exclude: list[int]) -> None:
    """Queue the back-fill of the active event rules (but `exclude`) and a profile-fit pass."""
    from segments import tasks  # the worker's entry points for the scoring services

    rule_ids = list(
        LeadScoreRule.objects.filter(kind=ScoreRuleKind.EVENT, is_active=True)
        .exclude(pk__in=exclude)
        .values_list("pk", flat=True)
    )

    def enqueue() -> None:
        for rule_id in rule_ids:
            tasks.lead_score_rule_backfill.delay(rule_id)
        tasks.lead_scores_fit.delay()

    transaction.on_commit(enqueue)


def _tiers_ensure() -> list[tuple[int, int]]:
    # An installation with tiers of its own keeps them; the demo members then use those.
    if not Tier.objects.exists():
        Tier.objects.bulk_create(
            Tier(name=name, code=code, rank=rank, min_growth=floor, color=color)
            for name, code, rank, floor, color in catalog.TIERS
        )
    return list(Tier.objects.values_list("min_growth", "pk"))


def _tags_ensure() -> dict[str, int]:
    ids: dict[str, int] = {}
    for position, (group_name, tags) in enumerate(catalog.TAG_GROUPS, start=1):
        group, _ = TagGroup.objects.get_or_create(
            name=group_name, defaults={"position": position * 10}
        )
        for name, color in tags:
            tag, _ = Tag.objects.get_or_create(group=group, name=name, defaults={"color": color})
            ids[name] = tag.pk
    return ids


def _console_channel_ensure() -> Channel:
    channel = Channel.objects.filter(name=CONSOLE_CHANNEL).first()
    return channel or channel_create(name=CONSOLE_CHANNEL, kind=ChannelKind.CONSOLE, config={})


def _demo_user_ensure() -> bool:
    users = get_user_model().objects
    if users.filter(username=DEMO_USERNAME).exists():
        return False
    users.create_superuser(username=DEMO_USERNAME, email="", password=DEMO_PASSWORD)
    return True


def _role_users_ensure() -> list[tuple[str, str, str, bool]]:
    """A store-staff user in a demo store that owns some demo contacts, and an analyst."""
    roles.roles_sync()
    store, _ = Store.objects.get_or_create(code=DEMO_STORE["code"], defaults=DEMO_STORE)
    users = []
    for (username, password), role in (
        (DEMO_STORE_STAFF_LOGIN, roles.STORE_STAFF),
        (DEMO_ANALYST_LOGIN, roles.ANALYST),
    ):
        user, created = get_user_model().objects.get_or_create(username=username)
        if created:
            user.set_password(password)
            user.save(update_fields=["password"])
            user.groups.add(Group.objects.get(name=role))
        users.append((user, password, role, created))
    staff = users[0][0]
    StaffProfile.objects.get_or_create(user=staff, defaults={"store": store})
    # Only once: contacts an operator has since reassigned keep their new store and owner.
    if not Contact.objects.filter(store=store).exists():
        ids = list(
            Contact.objects.filter(city=DEMO_STORE["city"], merged_into__isnull=True)
            .order_by("pk")
            .values_list("pk", flat=True)[:DEMO_STORE_CONTACTS]
        )
        # Raw updates like the bulk load itself: demo data is loaded, not edited by someone.
        Contact.objects.filter(pk__in=ids).update(store=store)
        Contact.objects.filter(pk__in=ids[:DEMO_OWNED_CONTACTS]).update(owner=staff)
    return [(user.username, password, role, created) for user, password, role, created in users]


def _bulk_load(
    *,
    contacts: int,
    events_per_contact: int,
    seed: int,
    tiers: list[tuple[int, int]],
    tags: dict[str, int],
    progress: ProgressCallback | None,
    notify: Callable[[str], None],
    chunk_contacts: int,
    defer_indexes: bool,
) -> DemoSeedResult:
    started = time.monotonic()
    writer = BulkWriter()
    result = DemoSeedResult(bulk_skipped=False)
    # One transaction: a run that fails half-way leaves nothing, so the next run starts clean.
    with transaction.atomic():
        next_ids = writer.prepare(Contact, Event, Member)
        generator = DemoGenerator(
            seed=seed,
            now=timezone.now(),
            events_per_contact=events_per_contact,
            tag_ids=tags,
            tiers=tiers,
            points_for_amount=points_for_amount,
            next_ids={
                "contact": next_ids[Contact],
                "event": next_ids[Event],
                "member": next_ids[Member],
            },
        )
        loaded = (Contact, Identity, Event, ContactTag, Member, PointsEntry)
        with writer.indexes_deferred(*loaded) if defer_indexes else contextlib.nullcontext():
            if progress:
                progress(0, contacts, 0)
            for chunk in _chunks_in_background(generator, contacts, chunk_contacts):
                # Parents before children: foreign keys are checked at the end of each statement.
                writer.write(Contact, CONTACT_FIELDS, chunk.contacts)
                writer.write(Identity, IDENTITY_FIELDS, chunk.identities)
                writer.write(Event, EVENT_FIELDS, chunk.events)
                writer.write(ContactTag, CONTACT_TAG_FIELDS, chunk.contact_tags)
                writer.write(Member, MEMBER_FIELDS, chunk.members)
                writer.write(PointsEntry, POINTS_FIELDS, chunk.points)
                result.contacts += len(chunk.contacts)
                result.events += len(chunk.events)
                result.members += len(chunk.members)
                result.rows += chunk.rows
                if progress:
                    progress(result.contacts, contacts, result.rows)
            if defer_indexes:
                notify("Rebuilding indexes and foreign keys …")
        writer.finish(Contact, Event, Member)
    if defer_indexes:
        notify("Updating planner statistics …")
        writer.vacuum_analyze(*loaded)
    result.bulk_seconds = time.monotonic() - started
    return result


def _chunks_in_background(
    generator: DemoGenerator, contacts: int, chunk_contacts: int
) -> Iterator[Chunk]:
    """Yield the generator's chunks, generating the next one while the database ingests this one.

    Generation is pure Python and the writes mostly wait on the database (the GIL is released
    while waiting), so a producer thread roughly halves the wall time of a big load.
    """
    ready: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    done = object()

    def offer(item: object) -> bool:
        # Never block for good: the consumer may have stopped (it failed or was interrupted).
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for start in range(0, contacts, chunk_contacts):
                count = min(chunk_contacts, contacts - start)
                if not offer(generator.chunk(start_index=start, count=count)):
                    return
            offer(done)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            offer(exc)

    thread = threading.Thread(target=produce, name="seed-demo-generator", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _segment_specs(tags: dict[str, int]) -> list[tuple[str, str, dict]]:
    def has_tag(name: str) -> dict:
        return {"type": "tag", "match": "any", "tags": [tags[name]]}

    return [
        (
            "上海护肤兴趣客户",
            "城市为上海且带「护肤」兴趣标签的客户。",
            {
                "op": "and",
                "conditions": [
                    {"type": "attribute", "field": "city", "operator": "eq", "value": "上海"},
                    has_tag("护肤"),
                ],
            },
        ),
        (
            "高价值客户",
            "带「高价值」标签的客户。",
            {"op": "and", "conditions": [has_tag("高价值")]},
        ),
        (
            NEW_CONTACTS_SEGMENT,
            "最近 7 天新加入的客户。",
            {
                "op": "and",
                "conditions": [
                    {
                        "type": "attribute",
                        "field": "created_at",
                        "operator": "within_days",
                        "value": 7,
                    }
                ],
            },
        ),
        (
            VIP_SEGMENT,
            f"「{VIP_JOURNEY}」的触发人群：被打上「高价值」标签的客户进入此分群。",
            {"op": "and", "conditions": [has_tag("高价值")]},
        ),
    ]


def _segments_ensure(
    *, tags: dict[str, int], notify: Callable[[str], None]
) -> list[tuple[str, int, bool]]:
    rows: list[tuple[Segment, bool]] = []
    for name, description, rule in _segment_specs(tags):
        segment = Segment.objects.filter(name=name).first()
        created = segment is None
        if created:
            segment = segment_create(name=name, rule=rule, description=description, build=False)
        rows.append((segment, created))
    new = [segment for segment, created in rows if created]
    if new:
        notify(f"Materialising {len(new)} segments …")
        segments_materialise(segments=new)
    summary = []
    for segment, created in rows:
        segment.refresh_from_db(fields=["member_count"])
        summary.append((segment.name, segment.member_count, created))
    return summary


@transaction.atomic
def _vip_journey_ensure(*, segment: Segment, channel: Channel) -> Journey:
    journey = Journey.objects.filter(name=VIP_JOURNEY).first()
    if journey:
        return journey
    journey = Journey.objects.create(
        name=VIP_JOURNEY,
        description="客户被打上「高价值」标签后，等待 1 分钟，通过控制台渠道发送专属关怀消息。",
        trigger_segment=segment,
    )
    JourneyStep.objects.create(journey=journey, position=0, kind=StepKind.WAIT, wait_seconds=60)
    JourneyStep.objects.create(
        journey=journey,
        position=1,
        kind=StepKind.SEND,
        channel=channel,
        title="专属关怀",
        body="亲爱的会员，感谢您的支持，本周到店可领取专属礼遇。",
    )
    return journey_activate(journey=journey)


@transaction.atomic
def _welcome_journey_ensure(*, segment: Segment, channel: Channel) -> Journey:
    # Left as a draft: it shows the editor a second journey without messaging every new contact.
    journey, created = Journey.objects.get_or_create(
        name=WELCOME_JOURNEY,
        defaults={
            "description": "新客进入「新客（近7天）」后立即发送欢迎消息（草稿，未上线）。",
            "trigger_segment": segment,
            "status": JourneyStatus.DRAFT,
        },
    )
    if created:
        JourneyStep.objects.create(
            journey=journey,
            position=0,
            kind=StepKind.SEND,
            channel=channel,
            title="欢迎加入",
            body="欢迎成为我们的会员！新人礼包已放入您的账户，进入小程序「会员中心」即可领取。",
        )
    return journey
