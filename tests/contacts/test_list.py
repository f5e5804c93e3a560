import re

import pytest
from django.http import QueryDict
from django.urls import reverse
from django.utils import translation

from contacts import labels, roles
from contacts.filters import ContactFilter
from contacts.models import ContactTag, LifecycleStage, Stage
from contacts.selectors import contact_list, contact_list_page, contact_sources
from tests.factories import (
    ContactFactory,
    StoreFactory,
    TagFactory,
    UserFactory,
    user_with_role,
)

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


def _page(user, after=None, size=50, **params):
    query = QueryDict(mutable=True)
    for key, value in params.items():
        query.setlist(key, value if isinstance(value, list) else [value])
    filters = ContactFilter(query, queryset=contact_list(user=user))
    return contact_list_page(qs=filters.qs, after=after, size=size)


# --- The list selector -----------------------------------------------------------------------


def test_a_row_carries_what_the_list_shows_with_the_phone_masked():
    clerk, store = UserFactory(username="clerk"), StoreFactory(name="静安店")
    Stage.objects.filter(key=LifecycleStage.LOYAL).update(name="铁粉")
    contact = ContactFactory(
        name="林小雨",
        nickname="小雨",
        phone="+8613800138000",
        city="杭州",
        source="wecom",
        lifecycle_stage_id=LifecycleStage.LOYAL,
        owner=clerk,
        store=store,
    )

    [row] = _page(UserFactory()).items

    assert row.pk == contact.pk
    assert (row.name, row.nickname, row.display_name) == ("林小雨", "小雨", "林小雨")
    assert row.phone == "+86138****8000"
    assert (row.city, row.source) == ("杭州", "wecom")
    assert (row.stage_key, row.stage_name) == ("loyal", "铁粉")
    assert (row.owner, row.store) == ("clerk", "静安店")
    assert row.created_at == contact.created_at
    assert row.tags == []


def test_a_row_without_name_is_shown_by_nickname_then_masked_phone_then_id():
    by_phone = ContactFactory(name="", nickname="", phone="+8613800138000")
    by_id = ContactFactory(name="", nickname="", phone="")
    by_nickname = ContactFactory(name="", nickname="小雨")

    shown = {row.pk: row.display_name for row in _page(UserFactory()).items}

    assert shown == {
        by_phone.pk: "+86138****8000",
        by_id.pk: f"#{by_id.pk}",
        by_nickname.pk: "小雨",
    }


def test_tags_come_sorted_by_name_with_their_colours():
    contact, untagged = ContactFactory(), ContactFactory()
    for name, color in (("b-护肤", "#10b981"), ("a-高价值", "#dc2626")):
        ContactTag.objects.create(contact=contact, tag=TagFactory(name=name, color=color))

    rows = {row.pk: row for row in _page(UserFactory()).items}

    assert rows[contact.pk].tags == [("a-高价值", "#dc2626"), ("b-护肤", "#10b981")]
    assert rows[untagged.pk].tags == []


def test_a_page_is_two_queries_however_many_rows_and_tags(django_assert_num_queries):
    tags = TagFactory.create_batch(3)
    for contact in ContactFactory.create_batch(30):
        for tag in tags:
            ContactTag.objects.create(contact=contact, tag=tag)
    user = UserFactory()

    with django_assert_num_queries(2):
        page = _page(user)

    assert len(page.items) == 30 and all(len(row.tags) == 3 for row in page.items)


def test_an_empty_page_skips_the_tag_query(django_assert_num_queries):
    user = UserFactory()

    with django_assert_num_queries(1):
        page = _page(user)

    assert page.items == [] and not page.has_next


def test_pages_follow_each_other_newest_first_without_overlap():
    contacts = ContactFactory.create_batch(5)
    user = UserFactory()

    first = _page(user, size=2)
    second = _page(user, after=first.next_after, size=2)
    last = _page(user, after=second.next_after, size=2)

    assert [r.pk for r in first.items] == [contacts[4].pk, contacts[3].pk]
    assert [r.pk for r in second.items] == [contacts[2].pk, contacts[1].pk]
    assert [r.pk for r in last.items] == [contacts[0].pk]
    assert first.next_after == contacts[3].pk and not last.has_next
    # A tampered cursor falls back to the first page rather than failing.
    assert [r.pk for r in _page(user, after="x' OR 1=1", size=2).items] == [
        r.pk for r in first.items
    ]


def test_store_staff_rows_stay_within_their_store_under_filters_and_paging():
    roles.roles_sync()
    store = StoreFactory()
    clerk = user_with_role("store_staff", store=store)
    own = ContactFactory(name="张三", owner=clerk)
    store_contacts = ContactFactory.create_batch(3, name="张姓门店客户", store=store)
    ContactFactory.create_batch(3, name="张姓他店客户")

    assert {r.pk for r in _page(clerk, q="张").items} == {own.pk} | {c.pk for c in store_contacts}
    first = _page(clerk, size=2)
    rest = _page(clerk, after=first.next_after, size=2)
    assert [r.pk for r in first.items + rest.items] == [
        c.pk for c in reversed([own, *store_contacts])
    ]


def test_merged_away_contacts_never_appear_as_rows():
    survivor, duplicate = ContactFactory(), ContactFactory()
    duplicate.merged_into = survivor
    duplicate.save()

    assert [r.pk for r in _page(UserFactory()).items] == [survivor.pk]


# --- The list page ---------------------------------------------------------------------------


def test_the_page_shows_stage_owner_store_and_coloured_tags(operator_client):
    clerk, store = UserFactory(username="clerk"), StoreFactory(name="静安店")
    contact = ContactFactory(name="林小雨", nickname="小雨", owner=clerk, store=store)
    ContactTag.objects.create(contact=contact, tag=TagFactory(name="高价值", color="#dc2626"))
    stage = Stage.objects.get(key=contact.lifecycle_stage_id)

    page = operator_client.get(reverse("contacts:list"), **HX).content.decode()

    assert "林小雨" in page and "(小雨)" in page
    assert f'badge-stage-{stage.key}">{stage.name}<' in page
    assert "clerk" in page and "静安店" in page
    assert '<span class="tag" style="--tag-color: #dc2626">高价值</span>' in page


def test_personal_data_holders_still_see_masked_phones_on_the_list(client):
    roles.roles_sync()
    operator = user_with_role("operator")
    assert operator.has_perm("contacts.view_personal_data")
    client.force_login(operator)
    ContactFactory(name="", nickname="", phone="+8613800138000")

    page = client.get(reverse("contacts:list")).content.decode()

    assert "+86138****8000" in page and "13800138000" not in page


def test_rows_offer_bulk_selection_only_to_users_who_may_tag(client):
    roles.roles_sync()
    contact = ContactFactory(name="林小雨")
    checkbox = f'name="ids" value="{contact.pk}" form="bulk-form"'

    client.force_login(user_with_role("operator"))
    assert checkbox in client.get(reverse("contacts:list")).content.decode()

    client.force_login(user_with_role("analyst"))
    assert checkbox not in client.get(reverse("contacts:list")).content.decode()


def test_the_next_page_link_carries_the_filters(operator_client):
    contacts = ContactFactory.create_batch(51, city="上海")
    ContactFactory(city="北京")

    page = operator_client.get(reverse("contacts:list"), {"city": "上海"}, **HX).content.decode()

    assert f"city=%E4%B8%8A%E6%B5%B7&amp;after={contacts[1].pk}" in page


def test_a_next_page_fragment_runs_a_fixed_handful_of_queries(
    operator_client, django_assert_num_queries
):
    tags = TagFactory.create_batch(3)
    owner, store = UserFactory(username="clerk"), StoreFactory()
    contacts = ContactFactory.create_batch(60, owner=owner, store=store)
    for contact in contacts:
        for tag in tags:
            ContactTag.objects.create(contact=contact, tag=tag)
    first = operator_client.get(reverse("contacts:list"), **HX).content.decode()
    assert first.count('class="tag"') == 50 * 3

    # session, user, the user's roles, the page's rows, its tags and names, the bulk-tag picker:
    # no filter form is built when no filter is set.
    with django_assert_num_queries(6):
        response = operator_client.get(reverse("contacts:list"), {"after": contacts[10].pk}, **HX)

    assert response.content.decode().count('class="tag"') == 10 * 3


# --- The source filter -----------------------------------------------------------------------


def test_the_source_filter_finds_a_source_typed_as_the_list_shows_it():
    admin = UserFactory(is_superuser=True)
    by_api = ContactFactory(source="api")
    in_store = ContactFactory(source="门店")
    ContactFactory(source="抖音")

    # "api" is shown as its label; the label, the code and a stored word all find their rows.
    label = str(labels.source_label("api"))
    assert label != "api"
    assert [row.pk for row in _page(admin, source=label).items] == [by_api.pk]
    assert [row.pk for row in _page(admin, source="api").items] == [by_api.pk]
    assert [row.pk for row in _page(admin, source=" 门店 ").items] == [in_store.pk]
    assert _page(admin, source="微博").items == []


def test_the_source_filter_takes_a_label_of_any_language():
    # A filter saved in English is run again by a worker in the default language.
    admin = UserFactory(is_superuser=True)
    imported = ContactFactory(source="import")
    with translation.override("en"):
        english = str(labels.source_label("import"))
    with translation.override("zh-hans"):
        assert [row.pk for row in _page(admin, source=english).items] == [imported.pk]


def test_the_source_filter_suggests_the_sources_contacts_hold(operator_client):
    admin = UserFactory(is_superuser=True)
    for source in ("门店", "抖音", "门店", "api", ""):
        ContactFactory(source=source)

    assert contact_sources(user=admin) == sorted(["门店", "抖音", "api"])
    assert contact_sources(user=admin, limit=2) == sorted(["门店", "抖音", "api"])[:2]
    page = operator_client.get(reverse("contacts:list")).content.decode()
    datalist = page.split('<datalist id="contact-sources">')[1].split("</datalist>")[0]
    options = sorted(re.findall(r'<option value="([^"]*)">', datalist))
    assert options == sorted(["门店", "抖音", str(labels.source_label("api"))])
    assert 'list="contact-sources"' in page


def test_store_staff_are_suggested_only_the_sources_of_contacts_they_may_see():
    roles.roles_sync()
    store, other = StoreFactory(), StoreFactory()
    clerk = user_with_role(roles.STORE_STAFF, store=store)
    ContactFactory(source="门店", store=store)
    ContactFactory(source="抖音", store=other)
    ContactFactory(source="天猫", owner=clerk, store=other)

    assert contact_sources(user=clerk) == sorted(["门店", "天猫"])
