import datetime as dt
import uuid

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from channels.models import Channel, ChannelKind
from contacts.models import Contact, Event, Identity, IdentityKind, Tag, TagGroup
from journeys.models import Journey, JourneyStep, StepKind
from membership.models import Tier
from segments.models import Segment


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"operator{n}")
    password = factory.django.Password("pass-1234-word")
    is_staff = True
    is_superuser = True


class ContactFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Contact

    name = factory.Sequence(lambda n: f"客户{n}")
    phone = factory.Sequence(lambda n: f"+86138{n:08d}")
    city = "上海"
    province = "上海"


class IdentityFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Identity

    contact = factory.SubFactory(ContactFactory)
    kind = IdentityKind.EXTERNAL_ID
    value = factory.Sequence(lambda n: f"ext-{n}")


class TagGroupFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TagGroup
        django_get_or_create = ("name",)

    name = "兴趣"


class TagFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tag

    group = factory.SubFactory(TagGroupFactory)
    name = factory.Sequence(lambda n: f"标签{n}")


class EventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Event

    event_id = factory.LazyFunction(lambda: uuid.uuid4().hex)
    contact = factory.SubFactory(ContactFactory)
    name = "page_view"
    occurred_at = factory.LazyFunction(lambda: timezone.now() - dt.timedelta(minutes=1))


class TierFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tier

    name = factory.Sequence(lambda n: f"Tier {n}")
    code = factory.Sequence(lambda n: f"tier{n}")
    rank = factory.Sequence(lambda n: n + 1)
    min_growth = 0


class SegmentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Segment

    name = factory.Sequence(lambda n: f"Segment {n}")
    rule = factory.LazyFunction(lambda: {"op": "and", "conditions": []})


class ChannelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Channel

    name = factory.Sequence(lambda n: f"Channel {n}")
    kind = ChannelKind.CONSOLE
    config = factory.LazyFunction(dict)


class JourneyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Journey

    name = factory.Sequence(lambda n: f"Journey {n}")
    trigger_segment = factory.SubFactory(SegmentFactory)


class JourneyStepFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = JourneyStep

    journey = factory.SubFactory(JourneyFactory)
    position = factory.Sequence(lambda n: n)
    kind = StepKind.WAIT


class StoreFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "contacts.Store"

    code = factory.Sequence(lambda n: f"store-{n}")
    name = factory.Sequence(lambda n: f"门店{n}")
    city = "上海"


def user_with_role(role: str, *, username: str | None = None, store=None):
    """A non-superuser in one of the role groups (run contacts.roles.roles_sync first)."""
    from django.contrib.auth.models import Group

    from contacts.models import StaffProfile

    user = UserFactory(
        username=username or f"{role}-{uuid.uuid4().hex[:6]}", is_staff=False, is_superuser=False
    )
    user.groups.add(Group.objects.get(name=role))
    if store is not None:
        StaffProfile.objects.create(user=user, store=store)
    return user


def user_with_perms(*perms: str):
    """A non-superuser holding exactly these permissions ("app.codename")."""
    from django.contrib.auth.models import Permission

    user = UserFactory(is_superuser=False, is_staff=False)
    for perm in perms:
        app, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app, codename=codename)
        )
    return user
