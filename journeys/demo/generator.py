"""Deterministic generation of demo rows, chunk by chunk, without touching the database.

Each chunk is a set of row tuples ready for `bulk.BulkWriter`, with explicit primary keys for the
tables that others point at (contacts, events, members), so a whole chunk can be written without
reading anything back. Every contact is generated from its behaviour first (events, purchases),
and its profile (lifecycle stage, tags, tier, points) is derived from that behaviour, so the
numbers agree with each other the way they would in a real system.
"""

import base64
import bisect
import datetime as dt
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import accumulate

from contacts.models import Gender, IdentityKind, LifecycleStage, TagSource
from journeys.demo import catalog
from membership.models import PointsEntry

DAY = 86400.0
HISTORY_DAYS = 90
# Contact growth is exponential with this time constant (days): more sign-ups recently.
GROWTH_DAYS = 40.0
BEIJING_OFFSET = 8 * 3600
# A bijection over phone numbers: index * A + B mod (prefixes × 10^8) never repeats, since A
# (a prime) is coprime with the modulus; B comes from the seed.
PHONE_SPACE = len(catalog.MOBILE_PREFIXES) * 10**8
PHONE_MULTIPLIER = 2_654_435_761
CONTACT_STREAMS = 2**32
EMAIL_WORDS = ["lily", "amy", "sunny", "coco", "momo", "kevin", "jason", "tina", "grace", "leo"]
HIGH_VALUE_SPEND = Decimal("1500")
# Events reach the server a few seconds after they happen; never after "now" (events stop 30 s
# before it).
RECEIVE_DELAYS = [dt.timedelta(seconds=n) for n in range(6)]

# Every AMBASSADOR_EVERY-th contact brings friends in: about INVITED_SHARE of the contacts that
# joined in the last INVITED_WITHIN_DAYS carry a `referral_accepted` event naming one of them in
# properties.referrer_contact_id, so that the KOC ranking has referrers and not only sharers.
# Ambassadors are made at least AMBASSADOR_MIN_AGE_DAYS old: every invitation comes after they
# joined (the busy-hour shift moves a sign-up by less than a day).
AMBASSADOR_EVERY = 50
AMBASSADOR_MIN_AGE_DAYS = 60.0
INVITED_WITHIN_DAYS = 58.0
INVITED_SHARE = 0.12
REFERRAL_EVENT = "referral_accepted"

# name, relative weight of event names per engagement class (browsers never buy).
EVENT_NAMES = [
    "page_view",
    "view_product",
    "add_to_cart",
    "purchase",
    "sign_in",
    "share",
    "qr_scanned",
    "form_submitted",
]
# class: (share of contacts, event-count multiplier, weights in EVENT_NAMES order)
CLASSES = {
    "browser": (0.50, 0.6, (40, 26, 6, 0, 14, 4, 2, 2)),
    "occasional": (0.33, 1.1, (38, 25, 8, 3.5, 12, 5, 2, 2)),
    "regular": (0.13, 2.0, (34, 24, 9, 10, 12, 6, 1.5, 1.5)),
    "vip": (0.04, 3.0, (30, 22, 10, 14, 12, 7, 1.5, 1.5)),
}
MEAN_MULTIPLIER = sum(share * mult for share, mult, _ in CLASSES.values())
SOURCE_EVENT_ORIGIN = {
    "mp": "miniprogram",
    "oa": "wechat_oa",
    "wecom": "wecom",
    "store": "pos",
    "douyin": "douyin",
    "tmall": "tmall",
    "event": "offline",
}


def _cum(weights) -> list[float]:
    return list(accumulate(weights))


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def _with_properties(event: tuple, extra: dict) -> tuple:
    """An event row (EVENT_FIELDS order) with `extra` added to its properties."""
    properties = {**json.loads(event[6]), **extra}
    return (*event[:6], _json(properties), *event[7:])


@dataclass
class Chunk:
    contacts: list[tuple] = field(default_factory=list)
    identities: list[tuple] = field(default_factory=list)
    contact_tags: list[tuple] = field(default_factory=list)
    events: list[tuple] = field(default_factory=list)
    members: list[tuple] = field(default_factory=list)
    points: list[tuple] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(len(rows) for rows in vars(self).values())


# Column order of the tuples in a Chunk; the writer inserts exactly these fields.
CONTACT_FIELDS = [
    "id", "created_at", "updated_at", "name", "nickname", "gender", "birthday", "phone", "email",
    "province", "city", "source", "channel_code", "lifecycle_stage_id", "attributes",
    "first_seen_at", "last_seen_at", "last_active_at",
]  # fmt: skip
IDENTITY_FIELDS = ["contact_id", "kind", "app_id", "value", "created_at"]
CONTACT_TAG_FIELDS = ["contact_id", "tag_id", "source", "created_at"]
EVENT_FIELDS = [
    "id", "event_id", "contact_id", "name", "occurred_at", "received_at", "properties", "value",
    "source",
]  # fmt: skip
MEMBER_FIELDS = ["id", "contact_id", "tier_id", "points_balance", "growth_value", "joined_at"]
POINTS_FIELDS = [
    "member_id", "delta", "balance_after", "reason", "idempotency_key", "source_event_id", "note",
    "created_at",
]  # fmt: skip


class DemoGenerator:
    """Turns (seed, counts, ids of reference rows) into chunks of rows, always the same ones."""

    def __init__(
        self,
        *,
        seed: int,
        now: dt.datetime,
        events_per_contact: int,
        tag_ids: dict[str, int],
        tiers: list[tuple[int, int]],
        points_for_amount: Callable[[Decimal], int],
        next_ids: dict[str, int],
    ):
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = now
        self.now_ts = now.timestamp()
        self.events_per_contact = events_per_contact
        self.tag_ids = tag_ids
        # (min_growth, tier_id) sorted by min_growth, for a bisect per member.
        self.tier_floors = [floor for floor, _ in sorted(tiers)]
        self.tier_ids = [tier_id for _, tier_id in sorted(tiers)]
        self.points_for_amount = points_for_amount
        self.first_contact_id = self.next_contact_id = next_ids["contact"]
        self.next_event_id = next_ids["event"]
        self.next_member_id = next_ids["member"]
        self.phone_offset = self.rng.randrange(PHONE_SPACE)
        self._prepare_tables()

    def _prepare_tables(self) -> None:
        c = catalog
        self.surnames = [s for s, _ in c.SURNAMES]
        self.surname_cum = _cum(w for _, w in c.SURNAMES)
        self.cities = [
            (
                province,
                city,
                code,
                tuple(tuple(d.split()) for d in c.STORE_DISTRICTS[code].split(", ")),
            )
            for province, city, code, _ in c.CITIES
        ]
        self.city_cum = _cum(weight for *_, weight in c.CITIES)
        self.sources = c.SOURCES
        self.source_cum = _cum(w for _, w, _ in c.SOURCES)
        self.hour_cum = _cum(c.HOUR_WEIGHTS)
        self.class_names = list(CLASSES)
        self.class_cum = _cum(share for share, _, _ in CLASSES.values())
        self.event_cum = {name: _cum(spec[2]) for name, spec in CLASSES.items()}
        self.products = [
            (sku, name, category, Decimal(price), _json(name))
            for sku, name, category, price in c.PRODUCTS
        ]
        self.products_by_category: dict[str, list[int]] = {}
        for index, (_, _, category, _, _) in enumerate(self.products):
            self.products_by_category.setdefault(category, []).append(index)
        self.premium_products = [i for i, p in enumerate(self.products) if p[3] >= Decimal("1000")]
        self.page_json = [_json({"page": path, "title": title}) for path, title in c.PAGES]
        self.view_json = [
            _json({"sku": sku, "product": name, "category": cat, "price": float(price)})
            for sku, name, cat, price, _ in self.products
        ]
        self.cart_json = [
            _json({"sku": sku, "product": name, "price": float(price), "quantity": 1})
            for sku, name, _, price, _ in self.products
        ]
        self.share_json = [
            [_json({"sku": sku, "product": name, "to": to}) for to in c.SHARE_TARGETS]
            for sku, name, _, _, _ in self.products
        ]
        self.form_json = [_json({"form": form}) for form in c.FORMS]
        self.signin_json = [_json({"streak": n}) for n in range(1, 8)]
        self.interest_names = list(c.INTERESTS)
        self.interest_weights = {
            Gender.FEMALE: [w[0] for w in c.INTERESTS.values()],
            Gender.MALE: [w[1] for w in c.INTERESTS.values()],
            Gender.UNKNOWN: [w[2] for w in c.INTERESTS.values()],
        }

    # --- small helpers ---------------------------------------------------------------------

    def _pick(self, items, cum):
        return items[bisect.bisect(cum, self.rng.random() * cum[-1])]

    def _openid(self, prefix: str) -> str:
        """28 characters like a real openid: an app-specific prefix, then url-safe base64."""
        raw = self.rng.getrandbits(144).to_bytes(18, "big")
        return prefix + base64.urlsafe_b64encode(raw).decode()[: 28 - len(prefix)]

    def _at_busy_hour(self, ts: float, low: float, high: float) -> float:
        """Move a timestamp to a plausible Beijing hour of the same day, if that stays in range."""
        local_day = (ts + BEIJING_OFFSET) // DAY
        hour = bisect.bisect(self.hour_cum, self.rng.random() * self.hour_cum[-1])
        moved = local_day * DAY + hour * 3600 + self.rng.random() * 3600 - BEIJING_OFFSET
        return moved if low <= moved <= high else ts

    def _when(self, ts: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(int(ts), tz=dt.UTC)

    # --- one chunk -------------------------------------------------------------------------

    def chunk(self, *, start_index: int, count: int) -> Chunk:
        chunk = Chunk()
        for index in range(start_index, start_index + count):
            self._contact(index, chunk)
        return chunk

    def _contact(self, index: int, out: Chunk) -> None:
        # One stream per contact: a contact's data depends only on (seed, index), never on
        # how many draws an earlier contact made (which can vary with the current time).
        rng = self.rng = random.Random(self.seed * CONTACT_STREAMS + index)
        contact_id = self.next_contact_id
        self.next_contact_id += 1

        roll = rng.random()
        gender = Gender.FEMALE if roll < 0.70 else Gender.MALE if roll < 0.92 else Gender.UNKNOWN
        name = self._name(gender) if rng.random() < 0.86 else ""
        nickname = self._nickname(gender) if (not name or rng.random() < 0.4) else ""
        birthday = self._birthday() if rng.random() < 0.7 else None
        province, city, city_code, districts = self._pick(self.cities, self.city_cum)
        source, _, style = self._pick(self.sources, self.source_cum)
        channel_code = self._channel_code(style, city_code, districts)

        age_days = -GROWTH_DAYS * math.log(1 - rng.random() * (1 - math.exp(-89.5 / GROWTH_DAYS)))
        if index % AMBASSADOR_EVERY == 0:
            age_days = max(age_days, AMBASSADOR_MIN_AGE_DAYS)
        created_ts = self._at_busy_hour(
            self.now_ts - age_days * DAY, self.now_ts - HISTORY_DAYS * DAY + 60, self.now_ts - 120
        )
        created_ts = min(created_ts, self.now_ts - 120)
        klass = self._pick(self.class_names, self.class_cum)
        interests = self._interests(gender)

        behaviour = self._events(
            contact_id=contact_id,
            created_ts=created_ts,
            age_days=age_days,
            klass=klass,
            style=style,
            interests=interests,
            channel_code=channel_code,
            out=out,
        )
        last_seen_ts = behaviour.last_ts
        stage = self._stage(behaviour, last_seen_ts)

        phone_share = {"oa": 0.6, "douyin": 0.75, "mp": 0.85}.get(style, 0.95)
        phone_number = (index * PHONE_MULTIPLIER + self.phone_offset) % PHONE_SPACE
        phone = self._phone(phone_number) if rng.random() < phone_share else ""
        email = self._email(phone_number, phone) if rng.random() < 0.22 else ""
        attributes = {}
        if rng.random() < 0.55:
            attributes["skin_type"] = rng.choice(catalog.SKIN_TYPES)
        if style == "store" or rng.random() < 0.1:
            attributes["preferred_store"] = f"{city}{rng.choice(districts)[1]}店"
        created_at = self._when(created_ts)
        last_seen_at = self._when(last_seen_ts)
        out.contacts.append(
            (
                contact_id,
                created_at,
                last_seen_at,
                name,
                nickname,
                gender,
                birthday,
                phone,
                email,
                province,
                city,
                source,
                channel_code,
                stage,
                _json(attributes),
                created_at,  # first seen when the customer arrived through their source
                last_seen_at,
                last_seen_at,  # every generated event is the customer's own activity
            )
        )
        self._identities(contact_id, index, style, phone, email, created_at, out)
        self._membership(contact_id, created_ts, behaviour, out)
        # Late, because which tags apply depends on the clock (a customer idle for 30 days).
        self._tags(contact_id, created_ts, style, interests, stage, behaviour, out)
        # Last: its draws come after every other, so they change nothing else about a contact.
        self._referral(contact_id, index, created_ts, age_days, out)

    def _name(self, gender: str) -> str:
        rng = self.rng
        surname = self._pick(self.surnames, self.surname_cum)
        pool = {
            Gender.FEMALE: catalog.FEMALE_GIVEN,
            Gender.MALE: catalog.MALE_GIVEN,
        }.get(gender, catalog.NEUTRAL_GIVEN + catalog.FEMALE_GIVEN + catalog.MALE_GIVEN)
        given = rng.choice(pool)
        if rng.random() < 0.65:
            given += rng.choice(pool if rng.random() < 0.8 else catalog.NEUTRAL_GIVEN)
        return surname + given

    def _nickname(self, gender: str) -> str:
        pool = catalog.MALE_GIVEN if gender == Gender.MALE else catalog.FEMALE_GIVEN
        return self.rng.choice(catalog.NICKNAMES).replace("{g}", self.rng.choice(pool))

    def _birthday(self) -> dt.date:
        age = min(60.0, max(18.0, self.rng.gauss(31, 8)))
        return self.now.date() - dt.timedelta(days=int(age * 365.25))

    def _channel_code(
        self, style: str, city_code: str, districts: tuple[tuple[str, str], ...]
    ) -> str:
        rng = self.rng
        if style == "store":
            return f"QR-{city_code}-{rng.choice(districts)[0]}-{rng.randint(1, 2):02d}"
        if style == "wecom":
            return f"WECOM-{city_code}-STAFF-{rng.randint(1, 40):03d}"
        if style == "event":
            return f"{rng.choice(catalog.EVENT_CODES)}-{city_code}"
        return rng.choice(
            {
                "mp": catalog.MINIPROGRAM_CODES,
                "oa": catalog.OFFICIAL_ACCOUNT_CODES,
                "douyin": catalog.DOUYIN_CODES,
                "tmall": catalog.TMALL_CODES,
            }[style]
        )

    def _interests(self, gender: str) -> list[str]:
        weights = list(self.interest_weights[gender])
        chosen: list[str] = []
        for _ in range(self.rng.choices((1, 2, 3), (0.45, 0.38, 0.17))[0]):
            pick = self.rng.choices(range(len(weights)), weights)[0]
            chosen.append(self.interest_names[pick])
            weights[pick] = 0.0
            if not any(weights):
                break
        return chosen

    def _phone(self, number: int) -> str:
        prefix = catalog.MOBILE_PREFIXES[number // 10**8]
        return f"+86{prefix}{number % 10**8:08d}"

    def _email(self, number: int, phone: str) -> str:
        roll = self.rng.random()
        if roll < 0.3 and phone:
            return f"{phone[3:]}@{self.rng.choice(('163.com', '139.com'))}"
        if roll < 0.85:
            return f"{number + 100000}@qq.com"
        return f"{self.rng.choice(EMAIL_WORDS)}_{number}@foxmail.com"

    # --- behaviour -------------------------------------------------------------------------

    def _events(
        self,
        *,
        contact_id: int,
        created_ts: float,
        age_days: float,
        klass: str,
        style: str,
        interests: list[str],
        channel_code: str,
        out: Chunk,
    ) -> "Behaviour":
        rng = self.rng
        _, multiplier, _ = CLASSES[klass]
        mean = self.events_per_contact * multiplier / MEAN_MULTIPLIER
        count = min(int(mean * 12) + 1, max(1, round(rng.expovariate(1 / mean))))
        end_ts = self.now_ts - 30
        if age_days > 30 and rng.random() < 0.3:
            # Went quiet: activity stops somewhere in the first part of their history.
            end_ts = created_ts + (end_ts - created_ts) * rng.uniform(0.1, 0.6)
        # The hot loop of the whole command: locals instead of attribute look-ups on purpose.
        rand = rng.random
        hour_cum, bisect_right = self.hour_cum, bisect.bisect_right
        hour_total = hour_cum[-1]
        span = end_ts - created_ts
        times = [int(created_ts)]
        for _ in range(count - 1):
            ts = created_ts + rand() * span
            # Same local day, at a plausible hour, when that stays inside the window.
            hour = bisect_right(hour_cum, rand() * hour_total)
            moved = ((ts + BEIJING_OFFSET) // DAY) * DAY + hour * 3600 + rand() * 3600
            moved -= BEIJING_OFFSET
            times.append(int(moved if created_ts <= moved <= end_ts else ts))
        times.sort()

        cum = self.event_cum[klass]
        names = rng.choices(EVENT_NAMES, cum_weights=cum, k=count)
        names[0] = {
            "store": "qr_scanned",
            "wecom": "qr_scanned",
            "event": "form_submitted",
        }.get(style, "page_view")
        favourites = [p for cat in interests for p in self.products_by_category[cat]]
        origin = SOURCE_EVENT_ORIGIN[style]
        behaviour = Behaviour(last_ts=times[-1])
        events = out.events
        page_json, view_json, cart_json = self.page_json, self.view_json, self.cart_json
        from_ts, utc, delays = dt.datetime.fromtimestamp, dt.UTC, RECEIVE_DELAYS
        event_pk = self.next_event_id
        self.next_event_id += count
        for name, ts in zip(names, times, strict=True):
            value = None
            source = "miniprogram"
            if name == "page_view":
                properties = page_json[int(rand() * len(page_json))]
                if style == "oa" and rand() < 0.5:
                    source = "wechat_oa"
            elif name in ("view_product", "add_to_cart", "share"):
                product = self._product(favourites)
                if name == "view_product":
                    properties = view_json[product]
                    behaviour.views += 1
                elif name == "add_to_cart":
                    properties = cart_json[product]
                    behaviour.carts += 1
                else:
                    properties = self.share_json[product][int(rand() * 3)]
                    behaviour.shares += 1
            elif name == "purchase":
                product = self._product(favourites, premium=klass == "vip")
                properties, value = self._purchase(event_pk, ts, product, klass, behaviour)
                source = origin if origin in ("pos", "tmall") and rand() < 0.6 else source
            elif name == "sign_in":
                properties = self.signin_json[int(rand() * 7)]
                behaviour.sign_ins += 1
            elif name == "qr_scanned":
                code = channel_code if channel_code.startswith(("QR-", "WECOM-")) else "QR-POSTER"
                properties = _json({"channel_code": code})
                source = "wecom" if code.startswith("WECOM-") else "wechat_oa"
                behaviour.scans += 1
            else:
                properties = self.form_json[int(rand() * len(self.form_json))]
            occurred_at = from_ts(ts, utc)
            events.append(
                (
                    event_pk,
                    f"demo-{event_pk}",
                    contact_id,
                    name,
                    occurred_at,
                    occurred_at + delays[int(rand() * 6)],
                    properties,
                    value,
                    source,
                )
            )
            event_pk += 1
        return behaviour

    def _product(self, favourites: list[int], *, premium: bool = False) -> int:
        rng = self.rng
        if premium and rng.random() < 0.12:
            return rng.choice(self.premium_products)
        if favourites and rng.random() < 0.75:
            return favourites[int(rng.random() * len(favourites))]
        return int(rng.random() * len(self.products))

    def _purchase(
        self, event_pk: int, ts: float, product: int, klass: str, behaviour: "Behaviour"
    ) -> tuple[str, Decimal]:
        rng = self.rng
        sku, _, _, price, name_json = self.products[product]
        weights = (0.7, 0.24, 0.06) if klass == "vip" else (0.85, 0.12, 0.03)
        quantity = rng.choices((1, 2, 3), weights)[0]
        amount = price * quantity
        roll = rng.random()
        discounted = True
        if roll < 0.25:
            amount = (amount * Decimal("0.9")).quantize(Decimal("0.01"))
        elif roll < 0.4 and amount >= 299:
            amount -= 30
        else:
            discounted = False
        local_day = dt.datetime.fromtimestamp(ts + BEIJING_OFFSET, tz=dt.UTC).strftime("%Y%m%d")
        order_id = f"DM{local_day}{event_pk:09d}"
        properties = (
            f'{{"order_id": "{order_id}", "amount": {amount:.2f}, "sku": "{sku}", '
            f'"product": {name_json}, "quantity": {quantity}, "pay_channel": "wechat_pay"}}'
        )
        behaviour.purchases.append((event_pk, ts, amount, order_id))
        behaviour.spend += amount
        behaviour.discounted += discounted
        return properties, amount

    def _referral(
        self, contact_id: int, index: int, created_ts: float, age_days: float, out: Chunk
    ) -> None:
        """Maybe record that the contact joined on an earlier ambassador's invitation."""
        if index % AMBASSADOR_EVERY == 0 or age_days >= INVITED_WITHIN_DAYS:
            return
        rng = self.rng
        if rng.random() >= INVITED_SHARE:
            return
        ambassadors = (index - 1) // AMBASSADOR_EVERY + 1  # those with a lower index
        # Squaring skews the pick to the first ambassadors: a few bring many, most bring a few.
        referrer = self.first_contact_id + AMBASSADOR_EVERY * int(ambassadors * rng.random() ** 2)
        event_pk = self.next_event_id
        self.next_event_id += 1
        occurred_at = self._when(created_ts)
        out.events.append(
            (
                event_pk,
                f"demo-{event_pk}",
                contact_id,
                REFERRAL_EVENT,
                occurred_at,
                occurred_at + RECEIVE_DELAYS[int(rng.random() * 6)],
                _json({"referrer_contact_id": referrer, "invite_code": f"INV{referrer:06d}"}),
                None,
                "miniprogram",
            )
        )
        self._credit_referrer(contact_id, referrer, out)

    @staticmethod
    def _credit_referrer(contact_id: int, referrer: int, out: Chunk) -> None:
        """Let the invitee's arrival and first purchase name the ambassador, as a mini-program
        passes the invitation along: the KOC page's reach and referred orders then have
        something to count. No random draws, so nothing else about any contact changes."""
        events = out.events
        first = len(events) - 1  # this contact's events are the last ones of the chunk
        while first > 0 and events[first - 1][2] == contact_id:
            first -= 1
        mine = [i for i in range(first, len(events)) if events[i][3] != REFERRAL_EVENT]
        if not mine:
            return
        arrival = min(mine, key=lambda i: events[i][4])
        if events[arrival][3] in ("page_view", "qr_scanned"):
            extra = {"from_contact_id": referrer, "share_id": f"INV{referrer:06d}"}
            events[arrival] = _with_properties(events[arrival], extra)
        purchases = [i for i in mine if events[i][3] == "purchase"]
        if purchases:
            bought = min(purchases, key=lambda i: events[i][4])
            events[bought] = _with_properties(events[bought], {"referrer_contact_id": referrer})

    def _stage(self, b: "Behaviour", last_seen_ts: float) -> str:
        idle_days = (self.now_ts - last_seen_ts) / DAY
        bought = len(b.purchases)
        if not bought:
            if idle_days > 45:
                return LifecycleStage.CHURNED if idle_days > 70 else LifecycleStage.DORMANT
            return LifecycleStage.INTERESTED if (b.views or b.carts) else LifecycleStage.NEW
        if idle_days > 60:
            return LifecycleStage.CHURNED
        if idle_days > 30:
            return LifecycleStage.DORMANT
        if bought == 1:
            return LifecycleStage.FIRST_PURCHASE
        return LifecycleStage.REPEAT if bought <= 3 else LifecycleStage.LOYAL

    # --- identities, tags, membership -----------------------------------------------------

    def _identities(
        self,
        contact_id: int,
        index: int,
        style: str,
        phone: str,
        email: str,
        created_at: dt.datetime,
        out: Chunk,
    ) -> None:
        rng = self.rng
        rows = out.identities
        has_mp = style == "mp" or index == 0 or rng.random() < 0.62
        if rng.random() < 0.85:
            rows.append(
                (contact_id, IdentityKind.WECHAT_UNIONID, "", self._openid("oTmHY"), created_at)
            )
        if has_mp:
            rows.append(
                (
                    contact_id,
                    IdentityKind.MINIPROGRAM_OPENID,
                    catalog.DEMO_MINIPROGRAM_APP_ID,
                    self._openid("oXa3Z"),
                    created_at,
                )
            )
        if style == "oa" or rng.random() < 0.3:
            rows.append(
                (
                    contact_id,
                    IdentityKind.WECHAT_OPENID,
                    catalog.DEMO_OFFICIAL_ACCOUNT_APP_ID,
                    self._openid("o9Jk2"),
                    created_at,
                )
            )
        if style == "wecom" or rng.random() < 0.08:
            rows.append(
                (
                    contact_id,
                    IdentityKind.WECOM_EXTERNAL_USERID,
                    catalog.DEMO_WECOM_CORP_ID,
                    f"wm{self.rng.getrandbits(120):030x}",
                    created_at,
                )
            )
        if phone:
            rows.append((contact_id, IdentityKind.PHONE, "", phone, created_at))
        if email:
            rows.append((contact_id, IdentityKind.EMAIL, "", email, created_at))

    def _tags(
        self,
        contact_id: int,
        created_ts: float,
        style: str,
        interests: list[str],
        stage: str,
        b: "Behaviour",
        out: Chunk,
    ) -> None:
        rng = self.rng
        names: list[tuple[str, str]] = [
            (interest, TagSource.API if rng.random() < 0.6 else TagSource.MANUAL)
            for interest in interests
            if rng.random() < 0.8
        ]
        # Value and lifecycle tags were set by the brand's earlier tool and came over in the
        # first import: source "rule" would point at auto-tag rules the demo does not have.
        bought = len(b.purchases)
        if b.spend >= HIGH_VALUE_SPEND:
            names.append(("高价值", TagSource.IMPORT))
        elif b.carts >= 2 and bought <= 1:
            names.append(("潜力客户", TagSource.IMPORT))
        if bought and b.discounted * 2 >= bought and rng.random() < 0.7:
            names.append(("价格敏感", TagSource.IMPORT))
        if style == "store" or (b.scans and rng.random() < 0.5):
            names.append(("门店到访", TagSource.WECOM))
        if (style == "douyin" and rng.random() < 0.9) or rng.random() < 0.05:
            names.append(("直播间", TagSource.IMPORT))
        if b.shares >= 2:
            names.append(("社群活跃", TagSource.IMPORT))
        lifecycle = {
            LifecycleStage.FIRST_PURCHASE: "首购",
            LifecycleStage.REPEAT: "复购",
            LifecycleStage.LOYAL: "复购",
            LifecycleStage.DORMANT: "沉睡",
            LifecycleStage.CHURNED: "沉睡",
        }.get(stage)
        if lifecycle is None and self.now_ts - created_ts < 30 * DAY:
            lifecycle = "新客"
        if lifecycle:
            names.append((lifecycle, TagSource.IMPORT))
        for tag_name, source in names:
            tagged_ts = created_ts + rng.random() * (b.last_ts - created_ts)
            out.contact_tags.append(
                (contact_id, self.tag_ids[tag_name], source, self._when(tagged_ts))
            )

    def _membership(self, contact_id: int, created_ts: float, b: "Behaviour", out: Chunk) -> None:
        rng = self.rng
        if not b.purchases and not (b.sign_ins and rng.random() < 0.25):
            return
        member_id = self.next_member_id
        self.next_member_id += 1
        joined_ts = b.purchases[0][1] if b.purchases and rng.random() < 0.7 else created_ts
        balance = growth = redeemed = 0
        purchases = b.purchases
        for n, (event_pk, ts, amount, order_id) in enumerate(purchases):
            points = self.points_for_amount(amount)
            if points <= 0:
                continue
            balance += points
            growth += points
            out.points.append(
                (
                    member_id,
                    points,
                    balance,
                    PointsEntry.Reason.PURCHASE,
                    # The key purchase_reward uses, so replaying a demo event never pays twice.
                    f"event:demo-{event_pk}",
                    event_pk,
                    order_id,
                    self._when(ts),
                )
            )
            gift, cost = rng.choice(catalog.REDEMPTION_GIFTS)
            if balance >= cost and rng.random() < 0.2:
                next_ts = purchases[n + 1][1] if n + 1 < len(purchases) else self.now_ts - 30
                balance -= cost
                redeemed += 1
                out.points.append(
                    (
                        member_id,
                        -cost,
                        balance,
                        PointsEntry.Reason.REDEMPTION,
                        f"demo:redeem:{member_id}:{redeemed}",
                        None,
                        f"兑换：{gift}",
                        self._when((ts + next_ts) / 2),
                    )
                )
        # Below the lowest floor (only with custom tiers lacking a 0 floor) the lowest tier.
        tier_id = self.tier_ids[max(0, bisect.bisect(self.tier_floors, growth) - 1)]
        out.members.append((member_id, contact_id, tier_id, balance, growth, self._when(joined_ts)))


@dataclass
class Behaviour:
    """What a contact did, summarised for the profile fields that depend on it."""

    last_ts: float
    purchases: list[tuple[int, float, Decimal, str]] = field(default_factory=list)
    spend: Decimal = Decimal(0)
    discounted: int = 0
    views: int = 0
    carts: int = 0
    shares: int = 0
    sign_ins: int = 0
    scans: int = 0
